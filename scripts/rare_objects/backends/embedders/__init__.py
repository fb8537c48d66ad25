"""Image embedders behind a registry: ``embedder.backend`` names one module of this package.

Each family is one module here (``open_clip.py``: open_clip's presets and any
open_clip architecture with a local checkpoint; ``transformers.py``: an image
encoder from a local folder through the Auto classes, DINOv2, SigLIP/SigLIP2
or CLIP) that calls :func:`register` with an :class:`Embedder`: its name, the
keys of the ``embedder`` section it reads, the local files or folders it
loads, whether it runs on the GPU, whether it has a text tower and how it is
loaded. The workflow (the embed rule's inputs, params and ``gpu`` resource,
``scripts/embed.py``, the concepts' text encoder ``embedder``) asks the
registry and never compares family names. Adding an embedder is one new
module here plus its section (and its name in the ``backend`` enum) under
``embedder`` in schemas/config.schema.yaml.

Every loaded model has the same interface (:class:`EmbeddingModel`): its
``dim``, ``identity`` (recorded in the embeddings table) and torch ``device``;
``crop_batch(image, boxes)`` cuts and preprocesses every box of one decoded
image (it runs in the stage's loader threads) and ``encode_batch(batch)``
embeds one batch of them (several images' ``crop_batch`` results joined by
:func:`join_batches`), L2-normalised float32 rows; a model with a text tower
also has ``encode(texts)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rare_objects.backends.registry import Registry
from rare_objects.runtime.models import ModelPath


class EmbeddingModel(Protocol):
    dim: int
    identity: str
    device: str

    def crop_batch(self, image: np.ndarray, boxes) -> Any:
        """The model's input for every box of one decoded uint8 (H, W, 3) image."""
        ...

    def encode_batch(self, batch) -> np.ndarray:
        """One L2-normalised float32 row per crop of ``batch``."""
        ...


def _runs_a_model(device: str) -> bool:
    return device != "cpu"


def _no_problems(settings: dict) -> list[str]:
    return []


@dataclass(frozen=True)
class Embedder:
    """What the workflow needs to know about one embedder family.

    ``settings`` is always the family's resolved settings (:func:`settings`):
    the whole, validated ``embedder`` section (the schema has filled its
    defaults), plus ``demo_models_dir`` (where ``demo.models_dir`` puts the
    demo's models). A family reads its own keys (:attr:`keys`) and the shared
    ones (``precision``, ``batch_size``).
    """

    name: str
    load: Callable[[dict, str, str], EmbeddingModel]
    """(settings, device as configured: auto, cpu, cuda, cuda:N; precision: auto, fp32,
    fp16 or bf16) -> the loaded model, in eval mode."""
    spec: Callable[[dict], tuple[str, str | None]]
    """(model, weights) that it loads: open_clip's architecture and pretrained tag or
    checkpoint, a transformers folder and None. Rule params: a change reruns."""
    model_paths: Callable[[dict], list[ModelPath]]
    """The local files or folders it loads, with the keys that name them: the embed
    rule's inputs (a folder with every file in it), checked when the workflow starts."""
    has_text_tower: Callable[[dict], bool]
    """Whether the loaded model has ``encode(texts)`` (the concepts' text encoder ``embedder``)."""
    keys: tuple[str, ...] = ()
    """The keys of the ``embedder`` section that are its own (the other families'
    keys are left out of the embed rule's params: changing them reruns nothing)."""
    needs_gpu: Callable[[str], bool] = _runs_a_model
    """Given the configured ``device`` (auto, cpu, cuda, cuda:N): does an embed job need a GPU?"""
    problems: Callable[[dict], list[str]] = _no_problems
    """Configuration errors the schema cannot express, one line per key."""


REGISTRY: Registry[Embedder] = Registry("embedder", __name__, __path__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get

# Keys of the ``embedder`` section that every family reads (storage: the embed stage's).
SHARED_KEYS = ("batch_size", "precision", "storage")


def settings(config: dict) -> dict:
    """The chosen family's settings from a validated configuration (see :class:`Embedder`)."""
    return {**copy.deepcopy(config["embedder"]), "demo_models_dir": config["demo"]["models_dir"]}


def complete_settings(section: dict | None = None, demo_models_dir: str | None = None) -> dict:
    """:func:`settings` of a partial ``embedder`` section (a test's, a benchmark's): the
    schema's defaults filled in and checked, as the workflow's validated config holds them."""
    from rare_objects.runtime import config

    # minilm: the check that the text encoder has a tower is the workflow's, not the embedder's
    full = config.validate(
        {"embedder": copy.deepcopy(dict(section or {})), "concepts": {"text_encoder": "minilm"}}
    )
    if demo_models_dir is not None:
        full["demo"]["models_dir"] = str(demo_models_dir)
    return settings(full)


def load(section: dict | None = None, device: str = "cpu", demo_models_dir=None, precision=None):
    """The model of a (partial) ``embedder`` section, loaded through its family's module;
    ``precision`` None takes the section's."""
    resolved = complete_settings(section, demo_models_dir)
    family = get(resolved["backend"])
    return family.load(resolved, device, precision or resolved["precision"])


def tracked(section: dict, family: Embedder) -> dict:
    """The embed rule's ``embedder`` param: ``section`` (the tracked keys of the
    ``embedder`` section) without the other families' keys, and without ``backend``:
    the families' keys differ, so the param tells them apart, and a configuration
    written before there was a choice keeps its params (a finished run reruns nothing).
    ``storage`` is in it only when it is not the default float32, for the same reason:
    float16 reruns embed and what follows, float32 is the param it always was."""
    others = {key for name in names() for key in get(name).keys} - set(family.keys)
    left_out = others | {"backend"}
    if section.get("storage", "float32") == "float32":
        left_out.add("storage")
    return {key: value for key, value in section.items() if key not in left_out}


def problems(config: dict) -> list[str]:
    """The chosen family's configuration errors (:attr:`Embedder.problems`)."""
    return get(config["embedder"]["backend"]).problems(settings(config))


def join_batches(parts: Sequence[Any]):
    """One batch of several :meth:`EmbeddingModel.crop_batch` results: tensors
    concatenated, or mappings of tensors (an image processor's output) key by key."""
    import torch

    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    return {key: torch.cat([part[key] for part in parts]) for key in first}


def normalised(features) -> np.ndarray:
    """L2-normalised float32 rows of a torch tensor of features, as numpy."""
    import torch

    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


__all__ = [
    "SHARED_KEYS",
    "Embedder",
    "EmbeddingModel",
    "complete_settings",
    "get",
    "join_batches",
    "load",
    "names",
    "normalised",
    "problems",
    "register",
    "settings",
    "tracked",
]
