"""Caption backends behind a registry: ``captions.backend`` names one module of this package.

Each backend is one module here (``transformers.py``: a local Qwen2-VL;
``openai.py``: an OpenAI-compatible server; ``none.py``: no VLM, simple captions
only) that calls :func:`register` with a :class:`Backend`: its name, whether it
needs a GPU, which local files it loads, how many crops it takes at once and
how it is built. The modules are found by importing every module of this
package, so the workflow (the caption rule's ``gpu`` resource and model input,
``scripts/caption.py``) asks the registry and never compares backend names.
Adding a backend is one new module here plus its section (and its name in the
``backend`` enum) under ``captions`` in schemas/config.schema.yaml.

Every captioner has the same interface::

    captioner.caption(images: list[PIL.Image]) -> list[str | Exception]
    captioner.backend      # the backend's name
    captioner.model_name   # recorded in the captions table

``caption`` never raises for a single bad item: the answer for each input image,
in input order, is either its caption or the exception that stopped it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rare_objects.backends.registry import Registry


class Captioner(Protocol):
    backend: str
    model_name: str

    def caption(self, images: Sequence[Any]) -> list[str | Exception]: ...


# A captioner may also have ``caption_stream(items) -> iterator of (key, answer)`` over
# ``(key, image)`` pairs, answers in any order: one rolling feed for a whole job
# (:func:`caption_stream` uses it where it is there). One with ``takes_crop_sources = True``
# also takes ``rare_objects.io.images.CropSource`` items in place of images and cuts the
# crops itself (the openai backend, in its encoder processes).


class CaptionError(RuntimeError):
    """A caption that could not be produced (the message never holds a secret)."""


def _no_gpu(device: str) -> bool:
    return False


def _no_device(requested: str) -> str | None:
    return None


@dataclass(frozen=True)
class Backend:
    """What the workflow needs to know about one caption backend.

    ``settings`` is always the whole, validated ``captions`` section (the schema
    has filled its defaults); a backend reads its own keys from
    ``settings[name]`` and the shared ones (``prompt``, ``max_new_tokens``) from
    the top.
    """

    name: str
    make: Callable[[dict, str | None], Captioner | None]
    """(settings, device from :attr:`device`) -> the captioner, or None for simple captions only."""
    batch_size: Callable[[dict], int]
    """Crops handed to one ``caption`` call (at most that many are held in memory)."""
    needs_gpu: Callable[[str], bool] = _no_gpu
    """Given the configured ``device`` (auto, cpu, cuda, cuda:N): does a caption job need a GPU?"""
    model_keys: tuple[str, ...] = ()
    """The keys of its own section (``captions.<name>.<key>``) that name a local model
    file or folder it loads: the caption rule's inputs, checked when the workflow starts."""
    device: Callable[[str], str | None] = _no_device
    """The torch device it runs on for the configured one; None when it runs no local model."""

    def model_paths(self, settings: dict) -> dict[str, str]:
        """The local files or folders it loads, by their configuration key."""
        own = settings.get(self.name, {})
        return {f"captions.{self.name}.{key}": own[key] for key in self.model_keys}

    def model_files(self, settings: dict) -> list[str]:
        """The local files or folders it loads (the caption rule's inputs)."""
        return list(self.model_paths(settings).values())


REGISTRY: Registry[Backend] = Registry("caption backend", __name__, __path__)
register = REGISTRY.register
names = REGISTRY.names
get_backend = REGISTRY.get


def complete_settings(settings: dict | None) -> dict:
    """A ``captions`` section with the schema's defaults filled in and checked.

    The schema is the one source of defaults: a partial section (a test's, a
    benchmark's) gets exactly what the workflow's validated config would hold.
    """
    from rare_objects.runtime import config

    full = config.validate({"captions": copy.deepcopy(dict(settings or {}))})
    return full["captions"]


def schema_defaults() -> dict:
    """The schema's default ``captions`` section."""
    return copy.deepcopy(_schema_defaults())


@functools.cache
def _schema_defaults() -> dict:
    return complete_settings({})


def fill_defaults(backend: str, **given) -> dict:
    """``given`` with each None replaced by the schema's default of that key.

    The key is looked up under ``captions.<backend>``, then under ``captions``
    (the shared ``prompt``, ``max_new_tokens``): a captioner built directly,
    without :func:`make_captioner`, gets the same defaults as the workflow.
    The schema is read only when a value is missing: a caption job passes every
    value from its validated section, and validating the defaults (jsonschema
    imported, the section checked) would add tens of milliseconds to its start.
    """
    if all(value is not None for value in given.values()):
        return dict(given)
    defaults = _schema_defaults()
    merged = {**defaults, **defaults.get(backend, {})}
    return {
        key: copy.deepcopy(merged[key]) if value is None else value for key, value in given.items()
    }


def make_captioner(name: str, settings: dict | None = None, device: str | None = None):
    """The captioner of backend ``name`` from the workflow's ``captions`` settings.

    ``settings`` holds the shared keys (``prompt``, ``max_new_tokens``) and each
    backend's own section under its name, e.g. ``{"prompt": ...,
    "transformers": {"model": ..., "batch_size": 4}}``; missing keys get the
    schema's defaults. ``device`` is the torch device of a backend that runs a
    local model (:attr:`Backend.device` gives it). The ``none`` backend gives
    None (simple captions only).
    """
    backend = get_backend(name)
    return backend.make(complete_settings(settings), device)


def caption_stream(captioner: Captioner, items: Iterable[tuple[Any, Any]], batch_size: int):
    """``(key, caption or exception)`` for every ``(key, image)`` of ``items``: the
    captioner's own rolling feed where it has one (``caption_stream``: the openai backend
    keeps its requests in flight from the first crop to the last), else ``caption`` on
    groups of ``batch_size`` crops, at most that many held at once. A call that fails as
    a whole gives its exception to every crop of the group, and a captioner that answers
    a group with the wrong number of captions fails that group."""
    own = getattr(captioner, "caption_stream", None)
    if own is not None:
        yield from own(items)
        return
    batch: list[tuple[Any, Any]] = []

    def answer(group):
        try:
            results = list(captioner.caption([image for _, image in group]))
            if len(results) != len(group):
                raise RuntimeError(
                    f"captioner returned {len(results)} answers for {len(group)} crops"
                )
        except Exception as exc:  # noqa: BLE001 - the whole call failed: every crop gets it
            results = [exc] * len(group)
        return zip([key for key, _ in group], results)

    for item in items:
        batch.append(item)
        if len(batch) >= max(1, int(batch_size)):
            yield from answer(batch)
            batch = []
    if batch:
        yield from answer(batch)


def short_error(exc: BaseException, limit: int = 300) -> str:
    """``"Type: message"`` of an exception, cut to ``limit`` characters, for a log or an error row."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


def __getattr__(name: str):
    # The instruction the demo's tiny VLM is trained with: the schema's default prompt.
    if name == "DEFAULT_PROMPT":
        return schema_defaults()["prompt"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
