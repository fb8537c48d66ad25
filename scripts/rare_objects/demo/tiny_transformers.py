"""Tiny random-weight image encoders in Hugging Face's ``save_pretrained`` layout, for tests.

Each builder writes a folder that the ``transformers`` embedder
(:mod:`rare_objects.backends.embedders.transformers`) loads through the Auto
classes exactly as it loads a real one fetched once with ``huggingface-cli
download``: ``config.json`` and ``model.safetensors``, the image processor's
``preprocessor_config.json`` and, for the families with a text tower, a
tokenizer. Nothing is downloaded: the configurations and image processors are
constructed in code (hidden size 32, two layers, 32-pixel images in 8-pixel
patches) and the tokenizer is a word-level vocabulary built here with the
``tokenizers`` library. The weights are random, seeded: equal seeds give equal
folders.

:func:`build_tiny_encoder` builds one family by name (``dinov2``, ``clip``,
``siglip``, ``siglip2``); :data:`FAMILIES` lists them with whether they have a
text tower.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

HIDDEN = 32
LAYERS = 2
HEADS = 2
IMAGE = 32
PATCH = 8
TEXT_POSITIONS = 16
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]

# pad, unknown, start and end of text, then the words of the tests' captions and concepts
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = (
    "a photo of the car truck bus pedestrian person bicycle motorcycle traffic light cone "
    "barrier construction vehicle trailer emergency animal debris stroller wheelchair red blue "
    "green small large with on in road street"
).split()

# family -> whether it has a text tower
FAMILIES = {"dinov2": False, "clip": True, "siglip": True, "siglip2": True}


def _tokenizer():
    """A word-level tokenizer over :data:`WORDS` that adds start and end tokens."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*SPECIAL, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=TEXT_POSITIONS,
    )


def _text_ids() -> dict:
    vocab = len(SPECIAL) + len(WORDS)
    return {"vocab_size": vocab, "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 3}


def _layers() -> dict:
    return {
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
    }


def _dinov2():
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        mlp_ratio=2,
        image_size=IMAGE,
        patch_size=PATCH,
    )
    processor = BitImageProcessor(
        size={"shortest_edge": IMAGE + 8},
        crop_size={"height": IMAGE, "width": IMAGE},
        image_mean=MEAN,
        image_std=STD,
    )
    return Dinov2Model(config), processor, None


def _clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={**_layers(), **_text_ids(), "max_position_embeddings": TEXT_POSITIONS},
        vision_config={**_layers(), "image_size": IMAGE, "patch_size": PATCH},
        projection_dim=24,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE},
        crop_size={"height": IMAGE, "width": IMAGE},
        image_mean=MEAN,
        image_std=STD,
    )
    return CLIPModel(config), processor, _tokenizer()


def _siglip():
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    config = SiglipConfig(
        text_config={**_layers(), **_text_ids(), "max_position_embeddings": TEXT_POSITIONS},
        vision_config={**_layers(), "image_size": IMAGE, "patch_size": PATCH},
    )
    processor = SiglipImageProcessor(
        size={"height": IMAGE, "width": IMAGE}, image_mean=MEAN, image_std=STD
    )
    return SiglipModel(config), processor, _tokenizer()


def _siglip2():
    from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model

    patches = (IMAGE // PATCH) ** 2
    config = Siglip2Config(
        text_config={**_layers(), **_text_ids(), "max_position_embeddings": TEXT_POSITIONS},
        vision_config={**_layers(), "num_patches": patches, "patch_size": PATCH},
    )
    processor = Siglip2ImageProcessor(
        patch_size=PATCH, max_num_patches=patches, image_mean=MEAN, image_std=STD
    )
    return Siglip2Model(config), processor, _tokenizer()


_BUILDERS = {"dinov2": _dinov2, "clip": _clip, "siglip": _siglip, "siglip2": _siglip2}


def build_tiny_encoder(family: str, folder: str | os.PathLike, seed: int = 0) -> Path:
    """A tiny random-weight ``family`` model (:data:`FAMILIES`) saved to ``folder``
    (replaced if it exists), seeded; returns the folder."""
    import torch

    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(_BUILDERS)}")
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    torch.manual_seed(seed)
    model, processor, tokenizer = _BUILDERS[family]()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def build_tiny_dinov2(folder: str | os.PathLike, seed: int = 0) -> Path:
    return build_tiny_encoder("dinov2", folder, seed)


def build_tiny_clip(folder: str | os.PathLike, seed: int = 0) -> Path:
    return build_tiny_encoder("clip", folder, seed)


def build_tiny_siglip(folder: str | os.PathLike, seed: int = 0) -> Path:
    return build_tiny_encoder("siglip", folder, seed)


def build_tiny_siglip2(folder: str | os.PathLike, seed: int = 0) -> Path:
    return build_tiny_encoder("siglip2", folder, seed)
