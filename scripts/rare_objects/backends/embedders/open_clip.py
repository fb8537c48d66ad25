"""The ``open_clip`` embedder: open_clip's presets and any open_clip architecture with a
local checkpoint (the original's CLIPFeatureExtractor).

``embedder.preset`` picks (model, pretrained) from :data:`CLIP_PRESETS`;
``embedder.model`` and ``embedder.pretrained`` override them (preset ``custom``:
both given). ``pretrained`` is a tag that open_clip resolves from the local
Hugging Face cache (``openai``) or a checkpoint file, which is then the embed
rule's input and checked when the workflow starts. Every open_clip model has a
text tower (the concepts' default text encoder).

Crops are cut, resized and normalised on the model's device by one
``torchvision.ops.roi_align`` per image (:meth:`ClipModel.crop_batch`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rare_objects.backends.embedders import Embedder, register
from rare_objects.runtime.devices import resolve_device, resolve_dtype
from rare_objects.runtime.models import ModelPath, is_local_path

# Decoded images are read-only numpy views; crop_batch only reads them (on the CPU the float
# conversion copies), so torch's warning about non-writable arrays does not apply.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

NAME = "open_clip"

# open_clip model configs of this workflow's own architectures (the demo's tiny CLIP).
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "open_clip_configs"
DEMO_CLIP_NAME = "RareTiny-ViT"
DEMO_CHECKPOINT = "clip-tiny.pt"

# The original's EMBEDDER switch (clip_l14 / base32) as presets: (model, pretrained).
CLIP_PRESETS = {
    "clip_l14": ("ViT-L-14", "openai"),
    "base32": ("ViT-B-32", "openai"),
    "demo": (DEMO_CLIP_NAME, None),  # checkpoint path comes from demo.models_dir
}


def clip_spec(embedder: dict, demo_models_dir: str | os.PathLike) -> tuple[str, str | None]:
    """(model name, pretrained tag or checkpoint path) for the ``embedder`` config section."""
    model, pretrained = CLIP_PRESETS.get(embedder["preset"], (None, None))
    if embedder["preset"] == "demo":
        pretrained = str(Path(demo_models_dir) / DEMO_CHECKPOINT)
    model = embedder.get("model") or model
    pretrained = embedder.get("pretrained") or pretrained
    return model, pretrained


@dataclass
class ClipModel:
    model: object
    preprocess: object
    tokenizer: object
    device: str
    dtype: object
    identity: str
    dim: int

    def encode_images(self, images) -> np.ndarray:
        """L2-normalised float32 embeddings of PIL images."""
        import torch

        batch = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
        with torch.inference_mode():
            features = self.model.encode_image(batch, normalize=True)
        return features.float().cpu().numpy()

    def crop_batch(self, image: np.ndarray, boxes) -> torch.Tensor:
        """The model's input for every box of one decoded image: (N, 3, S, S) on its device.

        ``image`` is uint8 (H, W, 3); ``boxes`` are float boxes in its pixels,
        cut as :func:`rare_objects.io.images.crop_boxes` defines them. The image is
        copied to the model's device once, and all its crops are cut and resized
        there by one ``torchvision.ops.roi_align``: each crop's region is the
        part of its box that open_clip's Resize (shorter side) and CenterCrop
        keep, and with adaptive sampling (``ceil(region / output)`` bilinear
        samples per output pixel and direction, averaged) a shrunk crop is
        antialiased by a box filter where open_clip uses PIL's bicubic one.
        The result is rounded to 8-bit levels as PIL would, then normalised.
        So the number of device operations per image does not grow with its
        crops (one launch per crop cost more host time than a ViT-L/14 forward
        pass on a GPU). The embeddings agree with open_clip's own
        preprocessing to a mean cosine similarity of 0.995 or more
        (``bench/embed_agreement.py``). Preprocessing pipelines other than
        open_clip's usual ones go through the PIL transforms instead.
        """
        import torch
        from PIL import Image
        from torchvision.ops import roi_align

        from rare_objects.io.images import crop_boxes

        height, width = image.shape[:2]
        rects = crop_boxes(boxes, width, height)
        if self._tensor_steps is None:
            pil = Image.fromarray(image)
            batch = torch.stack([self.preprocess(pil.crop(tuple(rect))) for rect in rects.tolist()])
            return batch.to(self.device, non_blocking=True)
        resize, center = self._tensor_steps
        crop_h, crop_w = _pair(center.size)
        regions = _center_crop_regions(rects, resize.size, crop_h, crop_w)
        on_gpu = str(self.device).startswith("cuda")
        # On a GPU each loader thread works on its own stream: on the default stream
        # its copies and small kernels would queue behind (and hold up) the model's.
        stream = self._loader_stream() if on_gpu else None
        with (
            torch.inference_mode(),
            torch.cuda.stream(stream) if on_gpu else contextlib.nullcontext(),
        ):
            pixels = torch.from_numpy(np.ascontiguousarray(image)).to(
                self.device, non_blocking=True
            )
            pixels = pixels.permute(2, 0, 1).unsqueeze(0).float()
            rois = torch.from_numpy(regions).to(self.device, torch.float32, non_blocking=True)
            out = roi_align(
                pixels,
                [rois],
                output_size=(crop_h, crop_w),
                spatial_scale=1.0,
                sampling_ratio=-1,
                aligned=True,
            )
            out.clamp_(0, 255).round_()
            out.sub_(self._mean_255).div_(self._std_255)
        if on_gpu:
            # The consumer reads it on the default stream: keep its memory until that is done.
            out.record_stream(torch.cuda.default_stream(out.device))
            stream.synchronize()
        return out

    def _loader_stream(self):
        import torch

        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(device=self.device)
        return stream

    def encode_batch(self, batch) -> np.ndarray:
        """L2-normalised float32 embeddings of a batch from :meth:`crop_batch`."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device, self.dtype), normalize=True)
        return features.float().cpu().numpy()

    def __post_init__(self):
        import torch
        from torchvision import transforms

        steps = list(getattr(self.preprocess, "transforms", []))
        normalize = next((t for t in steps if isinstance(t, transforms.Normalize)), None)
        mean = normalize.mean if normalize else (0.0, 0.0, 0.0)
        std = normalize.std if normalize else (1.0, 1.0, 1.0)
        # On the model's device once, not copied there for every image.
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        # The same on 8-bit levels: (x / 255 - mean) / std == (x - 255 mean) / (255 std).
        self._mean_255, self._std_255 = self._mean * 255, self._std * 255
        self._tensor_steps = _tensor_steps(steps)
        self._streams = threading.local()  # one CUDA stream per loader thread

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings (the text-encoder protocol of concepts)."""
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens, normalize=True)
        return features.float().cpu().numpy()


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = list(size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _center_crop_regions(rects: np.ndarray, size, crop_h: int, crop_w: int) -> np.ndarray:
    """Each crop's region (x1, y1, x2, y2, continuous pixel coordinates of the image) that
    torchvision's Resize(``size``) then CenterCrop(crop_h, crop_w) of that crop shows.

    ``rects`` are integer (left, top, right, bottom) rows. Where the resized crop
    is smaller than the center crop, torchvision pads with zeros; the region then
    reaches past the crop and shows image pixels (or zeros outside the image) instead.
    """
    left, top, right, bottom = (rects[:, k].astype(np.float64) for k in range(4))
    h, w = bottom - top, right - left
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else size[0]
        # torchvision: the shorter side becomes ``short``, the other int(short * long / short_side)
        tall = w <= h
        out_h = np.where(tall, np.floor(short * h / w), short)
        out_w = np.where(tall, short, np.floor(short * w / h))
    else:
        out_h, out_w = np.full_like(h, size[0]), np.full_like(w, size[1])
    # CenterCrop's offsets in the resized crop (torchvision rounds them)
    y0 = np.round((out_h - crop_h) / 2.0)
    x0 = np.round((out_w - crop_w) / 2.0)
    sy, sx = h / out_h, w / out_w
    return np.stack(
        [left + x0 * sx, top + y0 * sy, left + (x0 + crop_w) * sx, top + (y0 + crop_h) * sy], axis=1
    )


def _tensor_steps(steps) -> tuple | None:
    """(Resize, CenterCrop) when ``steps`` are open_clip's usual pipeline
    (Resize, CenterCrop, RGB conversion, ToTensor, Normalize), else None."""
    from torchvision import transforms

    resize = center = None
    for step in steps:
        if isinstance(step, transforms.Resize) and resize is None and center is None:
            resize = step
        elif isinstance(step, transforms.CenterCrop) and resize is not None and center is None:
            center = step
        elif isinstance(step, (transforms.ToTensor, transforms.Normalize)):
            continue
        elif getattr(step, "__name__", "") == "_convert_to_rgb":
            continue  # crops are RGB already
        elif type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB":
            continue  # open_clip >= 3's RGB conversion; crops are RGB already
        else:
            return None
    if resize is None or center is None or resize.max_size is not None:
        return None
    if resize.interpolation.value not in ("bicubic", "bilinear"):
        return None
    return resize, center


def load_clip(
    model_name: str, pretrained: str | None, device: str = "auto", precision: str = "auto"
) -> ClipModel:
    """An open_clip model with its preprocessing and tokenizer, in eval mode."""
    import open_clip

    if MODEL_CONFIG_DIR.is_dir():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if is_local_path(pretrained):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"embedder checkpoint {pretrained!r} does not exist (see README, 'Real weights, offline')"
            )
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name,
        pretrained=pretrained,
        device=device,
        precision={"torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32"),
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    dim = int(model.visual.output_dim)
    tag = Path(pretrained).name if pretrained and os.sep in pretrained else pretrained
    return ClipModel(
        model, preprocess, tokenizer, device, dtype, f"open_clip:{model_name}:{tag}", dim
    )


# --- the registry's declarations ---


def _spec(settings: dict) -> tuple[str, str | None]:
    return clip_spec(settings, settings["demo_models_dir"])


def _model_paths(settings: dict) -> list[ModelPath]:
    """The checkpoint file when ``pretrained`` (given or the preset's) is a local path."""
    _, pretrained = _spec(settings)
    if not is_local_path(pretrained):
        return []  # a tag: open_clip resolves it from the local cache
    key = (
        "embedder.pretrained"
        if settings["pretrained"]
        else f"embedder.preset {settings['preset']!r}"
    )
    return [ModelPath(key, pretrained, "file")]


def _load(settings: dict, device: str, precision: str) -> ClipModel:
    model, pretrained = _spec(settings)
    return load_clip(model, pretrained, device, precision)


def _problems(settings: dict) -> list[str]:
    if settings["preset"] == "custom" and not settings.get("model"):
        return ["embedder.model: required when embedder.preset is 'custom'"]
    return []


register(
    Embedder(
        name=NAME,
        load=_load,
        spec=_spec,
        model_paths=_model_paths,
        has_text_tower=lambda settings: True,  # every open_clip model has encode_text
        keys=("preset", "model", "pretrained"),
        problems=_problems,
    )
)
