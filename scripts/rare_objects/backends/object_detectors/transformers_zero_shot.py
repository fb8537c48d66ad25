"""The ``transformers_zero_shot`` object detector: an open-vocabulary model from a local folder.

``detector.transformers_zero_shot.model`` is a folder in save_pretrained layout
(``google/owlv2-base-patch16-ensemble``, ``IDEA-Research/grounding-dino-tiny``,
``omlab/omdet-turbo-swin-tiny-hf``, fetched once on a connected machine), loaded
by ``AutoProcessor`` and ``AutoModelForZeroShotObjectDetection`` from local files
only. ``detector.prompts`` are its vocabulary: class id = the prompt's index,
class name = the prompt. Each batch goes through the processor (the model's own
resizing and normalisation; ``detector.imgsz`` is ultralytics' and not read
here), the model, and the family's post-processing with the score threshold
``detector.conf`` (:class:`_Family`); these models run no NMS of their own
(OmDet-Turbo's post-processing does, at the same IoU), so class-wise NMS at
``detector.iou`` (``torchvision.ops.batched_nms``) follows, then the best
``detector.max_det``. The stage keeps the best ``max_objects`` and maps the boxes
(in the resized image's pixels) back to the original's, as for YOLO.

Images of different sizes in one batch run as one forward pass per size where the
processor pads a batch to its largest image (Grounding DINO), so an image's boxes do
not depend on the images that share its batch (``detector.batch_size`` is speed only).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rare_objects.backends.object_detectors import Backend, register

log = logging.getLogger("rare_objects.backends.object_detectors.transformers_zero_shot")

NAME = "transformers_zero_shot"


@dataclass(frozen=True)
class _Family:
    """How one model family takes its prompts and gives its boxes.

    ``detections(detector, outputs, inputs, sizes)`` returns per image (boxes xyxy in
    pixels of ``sizes``' (height, width), scores, prompt indices), the scores above
    ``conf`` only.
    """

    inputs: object
    detections: object
    fixed_size: bool
    """The processor gives every image the same input size (no batch padding)."""


def _owl_inputs(detector, images):
    return detector.processor(
        text=[detector.prompts] * len(images), images=images, return_tensors="pt"
    )


def _owl_detections(detector, outputs, inputs, sizes):
    results = detector.processor.post_process_grounded_object_detection(
        outputs, threshold=detector.settings.conf, target_sizes=sizes
    )
    return [(r["boxes"], r["scores"], r["labels"]) for r in results]


def _omdet_inputs(detector, images):
    return detector.processor(
        images=images, text=[detector.prompts] * len(images), return_tensors="pt"
    )


def _omdet_detections(detector, outputs, inputs, sizes):
    settings = detector.settings
    results = detector.processor.post_process_grounded_object_detection(
        outputs,
        text_labels=[detector.prompts] * len(sizes),
        threshold=settings.conf,
        nms_threshold=settings.iou,
        target_sizes=sizes,
        # at most its queries x prompts (torch's topk refuses more)
        max_num_det=min(settings.max_det, outputs.decoder_class_logits[0].numel()),
    )
    return [(r["boxes"], r["scores"], r["labels"]) for r in results]


def _grounding_inputs(detector, images):
    # a list of labels per image: the processor joins them as "car. traffic cone." (lower case)
    return detector.processor(
        images=images, text=[detector.prompts] * len(images), return_tensors="pt"
    )


def _prompt_token_mask(detector, input_ids):
    """(prompts, tokens) bool: which tokens of the joined prompt text (``input_ids``, the
    model's text input of one image) belong to each prompt."""
    import torch

    key = ("token_mask", tuple(input_ids.tolist()))
    cached = detector.cache.get(key)
    if cached is not None:
        return cached
    length = len(key[1])
    labels = [prompt.strip().lower() for prompt in detector.prompts]
    text = ". ".join(labels) + "."  # as GroundingDinoProcessor joins a list of labels
    encoded = detector.processor.tokenizer(text, return_offsets_mapping=True)
    if list(encoded["input_ids"][:length]) != list(key[1][: len(encoded["input_ids"])]):
        raise ValueError("the prompts' tokens differ from the model's text input")
    mask = torch.zeros(len(labels), length, dtype=torch.bool)
    start = 0
    for index, label in enumerate(labels):
        end = start + len(label)
        for token, (first, last) in enumerate(encoded["offset_mapping"][:length]):
            if last > first and first >= start and last <= end:
                mask[index, token] = True
        start = end + 2  # ". "
    empty = [detector.prompts[i] for i in range(len(labels)) if not mask[i].any()]
    if empty:
        raise ValueError(f"detector.prompts {empty} have no tokens in the model's text input")
    detector.cache[key] = mask
    return mask


def _grounding_detections(detector, outputs, inputs, sizes):
    """As GroundingDinoProcessor.post_process_grounded_object_detection (sigmoid of each
    query's token logits, boxes from centre format to corners, scaled to the image), but
    a box's score is the best token of one prompt and its class that prompt: the
    processor's own labels are decoded token phrases, not prompt indices."""
    import torch
    from transformers.image_transforms import center_to_corners_format

    probs = torch.sigmoid(outputs.logits.float())  # (batch, queries, text tokens)
    mask = _prompt_token_mask(detector, inputs["input_ids"][0].cpu()).to(probs.device)
    mask = torch.nn.functional.pad(mask, (0, probs.shape[-1] - mask.shape[1]))
    # (batch, queries, prompts): each prompt's best token
    per_prompt = probs[:, :, None, :].masked_fill(~mask, 0).amax(dim=-1)
    scores, labels = per_prompt.max(dim=-1)
    boxes = center_to_corners_format(outputs.pred_boxes.float())
    found = []
    for i, (height, width) in enumerate(sizes):
        keep = scores[i] > detector.settings.conf
        scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        found.append((boxes[i][keep] * scale, scores[i][keep], labels[i][keep]))
    return found


FAMILIES = {
    "owlv2": _Family(_owl_inputs, _owl_detections, fixed_size=True),
    "owlvit": _Family(_owl_inputs, _owl_detections, fixed_size=True),
    "grounding-dino": _Family(_grounding_inputs, _grounding_detections, fixed_size=False),
    "mm-grounding-dino": _Family(_grounding_inputs, _grounding_detections, fixed_size=False),
    "omdet-turbo": _Family(_omdet_inputs, _omdet_detections, fixed_size=False),
}


class ZeroShotDetector:
    """A transformers zero-shot detector with ``prompts`` as its classes, as the stage runs it."""

    def __init__(self, folder: str | os.PathLike, prompts, settings):
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"detector.transformers_zero_shot.model {str(folder)!r} is not a folder. Fetch the "
                "model once on a connected machine (see README, 'Choosing a detector') and point "
                "detector.transformers_zero_shot.model at it."
            )
        self.settings = settings
        self.prompts = [str(prompt) for prompt in prompts]
        self.names = dict(enumerate(self.prompts))
        self.dtype = torch.float16 if settings.half else torch.float32
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(
            folder, local_files_only=True, dtype=self.dtype
        )
        self.model = model.to(settings.device).eval()
        model_type = self.model.config.model_type
        if model_type not in FAMILIES:
            raise ValueError(
                f"detector.transformers_zero_shot.model {str(folder)!r} is a {model_type!r} model; "
                f"supported: {', '.join(sorted(FAMILIES))}"
            )
        self.family = FAMILIES[model_type]
        self.cache: dict = {}

    def prepare(self, image):
        """In the loader threads: the resized image itself (the processor runs per batch)."""
        return image

    def detect(self, batch: list) -> list:
        """(N, 6) float tensors (xyxy in each image's pixels, score, prompt index), in order."""
        import torch

        found: list = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, image in enumerate(batch):
            groups.setdefault(() if self.family.fixed_size else tuple(image.size), []).append(i)
        with torch.inference_mode():
            for members in groups.values():
                images = [batch[i] for i in members]
                inputs = self.family.inputs(self, images).to(self.settings.device)
                if "pixel_values" in inputs:
                    inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                outputs = self.model(**inputs)
                sizes = [(image.height, image.width) for image in images]
                for i, (boxes, scores, labels) in zip(
                    members, self.family.detections(self, outputs, inputs, sizes)
                ):
                    found[i] = self._suppress(boxes, scores, labels)
        return found

    def _suppress(self, boxes, scores, labels):
        """Class-wise NMS at ``iou``, then the best ``max_det``: an (N, 6) float32 CPU tensor."""
        import torch
        from torchvision.ops import batched_nms

        boxes, scores, labels = boxes.float(), scores.float(), labels.long()
        keep = batched_nms(boxes, scores, labels, self.settings.iou)[: self.settings.max_det]
        return torch.cat([boxes[keep], scores[keep, None], labels[keep, None].float()], dim=1).cpu()


def _load(settings: dict, detect_settings) -> ZeroShotDetector:
    return ZeroShotDetector(settings[NAME]["model"], settings["prompts"], detect_settings)


def _classes(settings: dict) -> dict[int, str]:
    return dict(enumerate(settings["prompts"]))


def _vocabulary(settings: dict) -> list[str]:
    return list(settings["prompts"])


register(
    Backend(
        name=NAME,
        load=_load,
        classes=_classes,
        vocabulary=_vocabulary,
        model_keys={f"{NAME}.model": "folder"},
        own_keys=("prompts", NAME),
        vocabulary_keys=("prompts",),
    )
)
