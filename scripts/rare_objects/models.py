"""The one place where models are loaded: YOLO detectors and open_clip models.

Everything loads from local files through each library's own loading code;
:func:`rare_objects.offline.configure` must run first so nothing is fetched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DEMO_CLIP_NAME = "RareTiny-ViT"

# The original's EMBEDDER switch (clip_l14 / base32) as presets: (model, pretrained).
CLIP_PRESETS = {
    "clip_l14": ("ViT-L-14", "openai"),
    "base32": ("ViT-B-32", "openai"),
    "demo": (DEMO_CLIP_NAME, None),  # checkpoint path comes from demo.models_dir
}


def resolve_device(requested: str = "auto") -> str:
    """Map the config's device to a torch device string.

    ``cuda`` means the first GPU visible to this process: Slurm's --gres and a
    scheduler's CUDA_VISIBLE_DEVICES decide which physical GPU that is.
    """
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {requested!r} requested but CUDA is not available on {os.uname().nodename}")
        index = int(requested.split(":")[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {requested!r}: only {torch.cuda.device_count()} GPU(s) visible")
    return requested


def torch_dtype(precision: str, device: str):
    import torch

    if precision == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_detector(weights: str | os.PathLike):
    """An ultralytics YOLO model from local ``.pt`` weights."""
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"detector.weights {str(path)!r} does not exist. Download yolov8x.pt once on a connected machine "
            "(see README, 'Real weights, offline') and point detector.weights at it."
        )
    from ultralytics import YOLO

    return YOLO(str(path), task="detect")


def clip_spec(embedder: dict, demo_models_dir: str | os.PathLike) -> tuple[str, str | None]:
    """(model name, pretrained tag or checkpoint path) for the ``embedder`` config section."""
    model, pretrained = CLIP_PRESETS.get(embedder["preset"], (None, None))
    if embedder["preset"] == "demo":
        pretrained = str(Path(demo_models_dir) / "clip-tiny.pt")
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

    def encode_images_tensor(self, batch) -> np.ndarray:
        """Like :meth:`encode_images` for an already preprocessed (N, 3, H, W) tensor."""
        import torch

        with torch.inference_mode():
            features = self.model.encode_image(batch.to(self.device, self.dtype), normalize=True)
        return features.float().cpu().numpy()

    def pixels(self, image) -> np.ndarray:
        """open_clip's own resize and crop of a PIL image, as uint8 (H, W, 3).

        The float conversion and normalisation then run batched on the model's
        device (:meth:`encode_pixels`): done per crop on the CPU they cost more
        than a GPU forward pass of ViT-L/14.
        """
        return np.asarray(self._pixel_stage(image), dtype=np.uint8)

    def encode_pixels(self, pixels) -> np.ndarray:
        """Embeddings of a uint8 (N, H, W, 3) tensor from :meth:`pixels`; equals :meth:`encode_images`."""
        import torch

        with torch.inference_mode():
            batch = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
            batch = (batch - self._mean.to(self.device)) / self._std.to(self.device)
            features = self.model.encode_image(batch.to(self.dtype), normalize=True)
        return features.float().cpu().numpy()

    def __post_init__(self):
        import torch
        from torchvision import transforms

        steps = list(getattr(self.preprocess, "transforms", []))
        normalize = next((t for t in steps if isinstance(t, transforms.Normalize)), None)
        pil_steps = [t for t in steps if not isinstance(t, (transforms.ToTensor, transforms.Normalize))]
        self._pixel_stage = transforms.Compose(pil_steps)
        mean = normalize.mean if normalize else (0.0, 0.0, 0.0)
        std = normalize.std if normalize else (1.0, 1.0, 1.0)
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised float32 text embeddings (the text-encoder protocol of concepts)."""
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            features = self.model.encode_text(tokens, normalize=True)
        return features.float().cpu().numpy()


def load_clip(model_name: str, pretrained: str | None, device: str = "auto", precision: str = "auto") -> ClipModel:
    """An open_clip model with its preprocessing and tokenizer, in eval mode."""
    import open_clip

    if MODEL_CONFIG_DIR.is_dir():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(f"embedder checkpoint {pretrained!r} does not exist (see README, 'Real weights, offline')")
    device = resolve_device(device)
    dtype = torch_dtype(precision, device)
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=pretrained, device=device, precision={
            "torch.float16": "fp16", "torch.bfloat16": "bf16"}.get(str(dtype), "fp32")
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    dim = int(model.visual.output_dim)
    tag = Path(pretrained).name if pretrained and os.sep in pretrained else pretrained
    return ClipModel(model, preprocess, tokenizer, device, dtype, f"open_clip:{model_name}:{tag}", dim)
