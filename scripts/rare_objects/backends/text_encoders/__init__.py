"""The concepts' text encoders behind a registry: ``concepts.text_encoder`` picks one module here.

Each module (``embedder.py``: the text tower of the configured embedder;
``sentence_transformers.py``: a sentence-transformers model, the bundled
MiniLM or a local folder) calls :func:`register` with a :class:`TextEncoder`:
its name and the other values of ``concepts.text_encoder`` that choose it, the
local files it loads, the configuration errors it finds, and how it is loaded.
A value that no encoder names is a model folder, for the encoder that takes
folders (:func:`choose`). The workflow (the analyse_concepts rule's inputs,
the start-up checks, ``scripts/analyse_concepts.py``) asks the registry.

Every loaded encoder has ``encode(texts) -> np.ndarray``: one L2-normalised
float32 row per text (:class:`rare_objects.stages.concepts.TextEncoder`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rare_objects.backends.registry import Registry
from rare_objects.runtime.models import ModelPath


def _no_problems(value: str, config: dict) -> list[str]:
    return []


@dataclass(frozen=True)
class TextEncoder:
    """What the workflow needs to know about one text encoder.

    Its callables take ``value`` (``concepts.text_encoder`` as configured) and
    ``config`` (the whole validated configuration: the embedder's text tower
    reads the ``embedder`` section).
    """

    name: str
    load: Callable[[str, dict, str], object]
    """(value, config, device as configured) -> the encoder, with ``encode(texts)``."""
    model_paths: Callable[[str, dict], list[ModelPath]]
    """The local files or folders it loads, with the keys that name them: the
    analyse_concepts rule's inputs, checked when the workflow starts."""
    aliases: tuple[str, ...] = ()
    """Other values of ``concepts.text_encoder`` that choose it."""
    takes_folder: bool = False
    """Whether a value that names no encoder is a model folder of this one."""
    problems: Callable[[str, dict], list[str]] = _no_problems
    """Configuration errors the schema cannot express, one line per key."""


REGISTRY: Registry[TextEncoder] = Registry("text encoder", __name__, __path__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get


def choose(value: str) -> TextEncoder:
    """The encoder that ``concepts.text_encoder: value`` chooses: the one named so or
    with that alias, else (a model folder) the one that takes folders."""
    encoders = [get(name) for name in names()]
    for encoder in encoders:
        if value == encoder.name or value in encoder.aliases:
            return encoder
    folder_encoders = [encoder for encoder in encoders if encoder.takes_folder]
    if len(folder_encoders) != 1:
        raise ValueError(f"no single text encoder takes a model folder: {folder_encoders}")
    return folder_encoders[0]


def values() -> list[str]:
    """Every name and alias (for messages and the schema's description)."""
    return sorted({v for name in names() for v in (name, *get(name).aliases)})


def problems(config: dict) -> list[str]:
    """The chosen encoder's configuration errors."""
    value = config["concepts"]["text_encoder"]
    return choose(value).problems(value, config)


def model_paths(config: dict) -> list[ModelPath]:
    """The local files or folders the chosen encoder loads."""
    value = config["concepts"]["text_encoder"]
    return choose(value).model_paths(value, config)


def load(config: dict, device: str):
    """The chosen encoder, loaded on ``device`` (as configured: auto, cpu, cuda, cuda:N)."""
    value = config["concepts"]["text_encoder"]
    return choose(value).load(value, config, device)


__all__ = ["TextEncoder", "choose", "get", "load", "model_paths", "names", "problems", "register"]
