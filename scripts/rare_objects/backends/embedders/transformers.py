"""The ``transformers`` embedder: an image encoder from a local folder through the Auto classes.

``embedder.transformers.model`` is a ``save_pretrained`` folder (fetched once on
a connected machine, e.g. ``huggingface-cli download facebook/dinov2-base
--local-dir dinov2-base``), loaded with ``AutoModel`` and ``AutoImageProcessor``
(and ``AutoTokenizer`` where the model has a text tower), local files only.
The folder and every file in it are the embed rule's inputs.

The image embedding of each family (read from ``config.json``'s ``model_type``):

- CLIP, SigLIP, SigLIP2 (:data:`TEXT_TOWER_TYPES`): ``get_image_features``, the
  vector their text tower is trained against; ``encode(texts)`` embeds texts with
  ``get_text_features`` (the concepts' text encoder ``embedder``);
- DINOv2 and any other image model: the pooled output (DINOv2's is its
  layer-normalised CLS token). No text tower.

Each crop is cut as :func:`rare_objects.io.images.crop_boxes` defines it and
preprocessed by the model's own image processor (in the stage's loader
threads); the embeddings are L2-normalised float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rare_objects.backends.embedders import Embedder, normalised, register
from rare_objects.runtime.devices import resolve_device, resolve_dtype
from rare_objects.runtime.models import ModelPath

NAME = "transformers"

# model_type of the families whose ``get_image_features`` shares a space with a text tower
TEXT_TOWER_TYPES = ("clip", "siglip", "siglip2")
# text towers trained on texts padded to their full length (their pooled token is the last)
PAD_TO_MAX_LENGTH = ("siglip", "siglip2")
# side of the blank image whose embedding gives a loaded model's ``dim``
IMAGE_PROBE = 16


def model_type(folder) -> str | None:
    """``model_type`` of the folder's ``config.json``; None when it cannot be read."""
    try:
        with open(Path(folder) / "config.json", encoding="utf-8") as handle:
            return json.load(handle).get("model_type")
    except (OSError, ValueError):
        return None


def _output(result):
    """The features tensor of a ``get_*_features`` call: a tensor in transformers 4, the
    pooled output of a model output in 5."""
    return result if hasattr(result, "dim") else result.pooler_output


class TransformersEmbedder:
    """A local transformers image encoder (see the module docstring)."""

    def __init__(self, folder, device: str = "auto", precision: str = "auto"):
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        self.folder = Path(folder)
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"embedder.transformers.model {str(self.folder)!r} is not a model folder "
                "(no config.json; see README, 'Choosing an embedder')"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.model = AutoModel.from_pretrained(
            self.folder, local_files_only=True, dtype=self.dtype
        ).to(self.device)
        self.model.eval()
        self.model_type = self.model.config.model_type
        self.processor = AutoImageProcessor.from_pretrained(self.folder, local_files_only=True)
        self.has_text_tower = self.model_type in TEXT_TOWER_TYPES
        self.tokenizer = (
            AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            if self.has_text_tower
            else None
        )
        self.identity = f"transformers:{self.model_type}:{self.folder.name}"
        probe = np.zeros((IMAGE_PROBE, IMAGE_PROBE, 3), dtype=np.uint8)
        self.dim = int(self.encode_batch(self.crop_batch(probe, [[0, 0, 8, 8]])).shape[1])

    def crop_batch(self, image: np.ndarray, boxes) -> dict:
        """The image processor's input for every box of one decoded uint8 (H, W, 3) image:
        its tensors (``pixel_values``, and SigLIP2's mask and patch grid), on the CPU."""
        from PIL import Image

        from rare_objects.io.images import crop_boxes

        height, width = image.shape[:2]
        pil = Image.fromarray(image)
        crops = [pil.crop(tuple(rect)) for rect in crop_boxes(boxes, width, height).tolist()]
        return dict(self.processor(images=crops, return_tensors="pt"))

    def encode_batch(self, batch: dict) -> np.ndarray:
        """L2-normalised float32 embeddings of a batch from :meth:`crop_batch`."""
        import torch

        inputs = {
            key: value.to(self.device, self.dtype if value.is_floating_point() else None)
            for key, value in batch.items()
        }
        with torch.inference_mode():
            if hasattr(self.model, "get_image_features"):
                features = _output(self.model.get_image_features(**inputs))
            else:
                features = self.model(**inputs).pooler_output
        return normalised(features)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings (the text-encoder protocol of concepts)."""
        import torch

        if self.tokenizer is None:
            raise TypeError(f"{self.identity} has no text tower")
        max_length = self.model.config.text_config.max_position_embeddings
        tokens = self.tokenizer(
            list(texts),
            padding="max_length" if self.model_type in PAD_TO_MAX_LENGTH else True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(self.device)
        tokens.pop("token_type_ids", None)
        with torch.inference_mode():
            features = _output(self.model.get_text_features(**tokens))
        return normalised(features)


# --- the registry's declarations ---


def _folder(settings: dict) -> str | None:
    return settings[NAME]["model"]


def _model_paths(settings: dict) -> list[ModelPath]:
    folder = _folder(settings)
    return [ModelPath(f"embedder.{NAME}.model", folder, "folder")] if folder else []


def _has_text_tower(settings: dict) -> bool:
    """From the folder's ``config.json``; a folder that cannot be read counts as having
    one (the start-up check of the model paths reports it)."""
    found = model_type(_folder(settings)) if _folder(settings) else None
    return found is None or found in TEXT_TOWER_TYPES


def _problems(settings: dict) -> list[str]:
    if not _folder(settings):
        return [
            f"embedder.{NAME}.model: required when embedder.backend is {NAME!r} "
            "(a local model folder)"
        ]
    return []


register(
    Embedder(
        name=NAME,
        load=lambda settings, device, precision: TransformersEmbedder(
            _folder(settings), device, precision
        ),
        spec=lambda settings: (_folder(settings), None),
        model_paths=_model_paths,
        has_text_tower=_has_text_tower,
        keys=(NAME,),
        problems=_problems,
    )
)
