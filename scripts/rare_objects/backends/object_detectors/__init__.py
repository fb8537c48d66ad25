"""Object detectors behind a registry: ``detector.backend`` names one module of this package.

Each detector family is one module here that calls :func:`register` with a
:class:`Backend` when imported:

- ``ultralytics_yolo.py`` registers ``ultralytics``: YOLO ``.pt`` weights
  (``detector.weights``), the class names stored in them as the vocabulary;
- ``transformers_zero_shot.py`` registers ``transformers_zero_shot``: a local
  OWLv2, OWL-ViT, Grounding DINO or OmDet-Turbo folder
  (``detector.transformers_zero_shot.model``) through transformers'
  ``AutoModelForZeroShotObjectDetection``, with ``detector.prompts`` as the vocabulary.

The workflow asks the registry and never compares backend names: the detect
and detector_classes rules take their model inputs from
:meth:`Backend.model_paths` (checked when the workflow starts), their params
from :attr:`Backend.own_keys` and :attr:`Backend.vocabulary_keys`, and the
targets are checked against :attr:`Backend.vocabulary` at start
(:func:`target_problems`). Adding a detector is one module here plus its keys
(its section and its name in the ``backend`` enum) under ``detector`` in
schemas/config.schema.yaml; tests/test_object_detectors.py checks that the
enum and :func:`names` agree.

A loaded detector (:meth:`Backend.load`) is what :func:`rare_objects.stages.
detection.detect_images` runs; the stage owns everything the families share
(decoding, rejects, the ``max_side`` resize, the top ``max_objects`` by
score, boxes mapped back to original pixels, the rows)::

    detector.names             # {class id: class name}, the vocabulary
    detector.prepare(image)    # in the loader threads: the resized PIL image -> an item
    detector.detect(items)     # one (N, 6) array or tensor per item, in order: x1, y1,
                               # x2, y2 in the resized image's pixels, score, class id;
                               # at most max_det rows, after conf and the IoU rule
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rare_objects.backends.registry import Registry

# The stage's settings (rare_objects.stages.detection.DetectSettings): not imported here,
# so that reading the registry (the workflow at start, the config checks) imports no torch.
DetectSettings = Any


class LoadedDetector(Protocol):
    names: dict[int, str]

    def prepare(self, image: Any) -> Any: ...

    def detect(self, batch: Sequence[Any]) -> list: ...


def _on_the_configured_device(device: str) -> bool:
    return device != "cpu"


@dataclass(frozen=True)
class Backend:
    """What the workflow needs to know about one detector family.

    ``settings`` is always the whole, validated ``detector`` section (the schema has
    filled its defaults); a backend reads its own keys (:attr:`own_keys`) and the
    shared ones (``max_side``, ``conf``, ``iou``, ``max_det``, ``max_objects``,
    ``batch_size``, through :class:`~rare_objects.stages.detection.DetectSettings`).
    """

    name: str
    load: Callable[[dict, DetectSettings], LoadedDetector]
    """(settings, the stage's DetectSettings with the torch device) -> the detector."""
    classes: Callable[[dict], dict[int, str]]
    """The whole vocabulary, class id -> name, as the detections name classes
    (the detector_classes rule; it may load the model)."""
    vocabulary: Callable[[dict], list[str] | None]
    """The class names, read cheaply when the workflow starts (for the targets
    check); None where they cannot be known yet (weights a rule still builds)."""
    model_keys: dict[str, str]
    """Keys of the ``detector`` section (dotted below it) that name a local model file
    or folder it loads, each with its kind (``file`` or ``folder``): the inputs of
    the detect and detector_classes rules, checked when the workflow starts."""
    own_keys: tuple[str, ...]
    """Keys of the ``detector`` section that only this family reads: the other
    families' are left out of the detect rule's params, so changing them reruns nothing."""
    vocabulary_keys: tuple[str, ...] = ()
    """Keys of the ``detector`` section that change its vocabulary: the params of the
    detector_classes rule (its model files are its inputs)."""
    needs_gpu: Callable[[str], bool] = _on_the_configured_device
    """Given the configured ``device`` (auto, cpu, cuda, cuda:N): does a detect job need a GPU?"""

    def model_paths(self, settings: dict) -> dict[str, str | None]:
        """The local files or folders it loads, by their configuration key (``detector.weights``)."""
        paths = {}
        for key in self.model_keys:
            value: Any = settings
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            paths[f"detector.{key}"] = value
        return paths

    def model_kinds(self) -> dict[str, str]:
        """The kind (``file``, ``folder``) of each of :meth:`model_paths`, by the same keys."""
        return {f"detector.{key}": kind for key, kind in self.model_keys.items()}

    def rule_settings(self, settings: dict, registered: Sequence[Backend]) -> dict:
        """``settings`` without ``backend`` and the keys that only other families read:
        the detect rule's param. Switching family changes it all the same (the
        families' own keys differ), and a setting of another family reruns nothing."""
        others = {key for backend in registered if backend is not self for key in backend.own_keys}
        dropped = (others - set(self.own_keys)) | {"backend"}
        return {key: value for key, value in settings.items() if key not in dropped}

    def vocabulary_settings(self, settings: dict) -> dict:
        """The settings that change its vocabulary (the detector_classes rule's params)."""
        return {key: settings[key] for key in self.vocabulary_keys}


REGISTRY: Registry[Backend] = Registry("object detector", __name__, __path__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get


def backends() -> list[Backend]:
    """Every registered family."""
    return [get(name) for name in names()]


def load(settings: dict, detect_settings: DetectSettings) -> LoadedDetector:
    """The detector of ``settings['backend']`` from the config's ``detector`` section."""
    return get(settings["backend"]).load(settings, detect_settings)


def target_problems(
    targets: dict[str, list[str]], vocabulary: Sequence[str]
) -> tuple[list[str], list[str]]:
    """(targets that match nothing, targets with some classes the detector cannot name).

    An object matches a target when its class is the target's name or one of its near
    classes (:func:`rare_objects.stages.targets.target_matches`), so a target none of
    whose classes is in ``vocabulary`` can match nothing; one line per target, naming
    its classes. The caller lists the vocabulary once.
    """
    known = set(vocabulary)
    nothing, some = [], []
    for target, near in targets.items():
        classes = list(dict.fromkeys([target, *near]))
        unknown = [name for name in classes if name not in known]
        if len(unknown) == len(classes):
            nothing.append(f"{target}: none of its classes {classes} is a detector class")
        elif [name for name in unknown if name != target]:
            missing = [name for name in unknown if name != target]
            some.append(f"{target}: near classes {missing} are no detector class")
    return nothing, some
