"""The ``ultralytics`` object detector: YOLO from local ``.pt`` weights (``detector.weights``).

PyTorch YOLO detection models of the types the batched path is proven equal to
``predict`` on (:class:`BatchedDetector`) run on whole batches with ultralytics'
own parts; every other model ultralytics loads (exported formats, end-to-end
heads, other model classes) goes through its ``predict``, one call per image
size (:func:`predict_by_shape`). The vocabulary is the ``names`` stored in the
weights, read at start without loading the model (:func:`read_names`).

(Named ``ultralytics_yolo`` so that the module never stands for the
``ultralytics`` package; it registers as ``ultralytics``.)
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np

from rare_objects.backends.object_detectors import Backend, register

log = logging.getLogger("rare_objects.backends.object_detectors.ultralytics")

NAME = "ultralytics"


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


def model_classes(model) -> dict[int, str]:
    """A loaded model's class vocabulary, index -> name (ultralytics' ``names``)."""
    return {int(index): str(name) for index, name in model.names.items()}


# --- the vocabulary at start, without ultralytics or torch ---


class _Stub:
    """Stands for every class and function a checkpoint's pickle names: nothing is imported or run."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _NamesUnpickler(pickle.Unpickler):
    _PLAIN = {
        ("collections", "OrderedDict"): dict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
    }

    def find_class(self, module, name):
        return self._PLAIN.get((module, name)) or type(name, (_Stub,), {})

    def persistent_load(self, pid):  # tensor storages: not read
        return None


def _names_of(model) -> dict[int, str] | None:
    state = getattr(model, "state", None)
    if isinstance(state, tuple):  # (state, slot state)
        state = state[0]
    names = state.get("names") if isinstance(state, dict) else None
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        return None
    return {int(index): str(name) for index, name in names.items()}


def read_names(weights: str | os.PathLike) -> dict[int, str] | None:
    """The ``names`` of ultralytics ``.pt`` weights, read from the checkpoint's pickle
    alone: no tensor is read, no class is imported, no code runs (about 10 ms for the
    demo's detector; the file's size does not matter, its pickle holds the layers, not
    the weights). None for a file that is not a torch zip checkpoint holding a model
    with names (exported formats, older files): ultralytics' loading then decides.

    The model is the checkpoint's ``ema`` or else its ``model``, as ultralytics loads it.
    """
    try:
        with zipfile.ZipFile(weights) as archive:
            pickled = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickled) != 1:
                return None
            with archive.open(pickled[0]) as handle:
                checkpoint = _NamesUnpickler(handle).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError):
        return None
    except Exception as exc:  # noqa: BLE001 - an unexpected pickle: the vocabulary is unknown
        log.debug("names of %s not readable: %s", weights, exc)
        return None
    if not isinstance(checkpoint, dict):
        return None
    for key in ("ema", "model"):
        names = _names_of(checkpoint.get(key))
        if names:
            return names
    return None


# --- detection ---


class _Letterboxed:
    """One image letterboxed for the detector: ``pixels`` (h, w, 3) uint8 RGB and the resized image's shape."""

    __slots__ = ("pixels", "source_shape")

    def __init__(self, pixels: np.ndarray, source_shape: tuple[int, int]):
        self.pixels, self.source_shape = pixels, source_shape


def _predict_options(settings) -> dict:
    """The keyword arguments of ultralytics' ``predict`` for these settings."""
    return {
        "imgsz": settings.imgsz,
        "conf": settings.conf,
        "iou": settings.iou,
        "max_det": settings.max_det,
        "device": settings.device,
        "half": settings.half,
        "verbose": False,
    }


# The model classes whose batched path is proven equal to ``predict``
# (tests/test_stages.py: a random YOLOv8n; tests/test_speed_settings.py: the demo's
# trained YOLOv8): plain detection models with NMS. Subclasses (YOLO-World, YOLOE),
# RT-DETR and end-to-end heads post-process otherwise and go through ``predict``.
BATCHED_MODEL_TYPES = ("DetectionModel",)


class BatchedDetector:
    """A PyTorch YOLO detector run on whole batches, with ultralytics' own parts.

    Equal to ``model.predict`` on the same batch (the same boxes, classes and
    scores), without its per-image work in the calling thread: each image is
    letterboxed by ultralytics' ``LetterBox`` in the loader threads (with the
    minimal padding that ``predict`` uses for a batch of one shape), the batch
    goes to the device as one uint8 tensor, through the predictor's model and
    ultralytics' ``non_max_suppression``, and boxes are mapped back with its
    ``scale_boxes``; no ``Results`` objects. A batch with images of different
    shapes runs as one sub-batch per letterboxed shape (``predict`` on the whole
    batch would pad them all to a square; :func:`predict_by_shape`, the path of
    the other models, calls it per size instead), so an image's boxes do not
    depend on the images that share its batch.
    """

    def __init__(self, model, settings):
        from ultralytics.data.augment import LetterBox

        self.settings = settings
        # The predictor (ultralytics' AutoBackend: device, fusing, half precision) is set
        # up by one predict call.
        model.predict(np.zeros((32, 32, 3), dtype=np.uint8), **_predict_options(settings))
        self.backend = model.predictor.model
        self.device = model.predictor.device
        self.imgsz = model.predictor.imgsz
        self._letterbox = LetterBox(self.imgsz, auto=True, stride=self.backend.stride)

    @classmethod
    def for_model(cls, model, settings) -> BatchedDetector | None:
        """The batched path for a PyTorch detection model of a proven type; None (use
        ``predict``) for the others and for exported formats."""
        if getattr(model, "task", None) != "detect" or not hasattr(model, "predictor"):
            return None
        if type(getattr(model, "model", None)).__name__ not in BATCHED_MODEL_TYPES:
            return None
        try:
            detector = cls(model, settings)
        except Exception as exc:  # noqa: BLE001 - whatever this version of ultralytics lacks
            log.info("batched detection unavailable (%s): using predict", exc)
            return None
        if detector.backend.format != "pt" or getattr(detector.backend, "end2end", False):
            return None
        return detector

    def letterbox(self, image) -> _Letterboxed:
        pixels = np.asarray(image)
        return _Letterboxed(self._letterbox(image=pixels), pixels.shape[:2])

    def detect(self, batch: list[_Letterboxed]) -> list:
        """(N, 6) tensors (xyxy in the resized image's pixels, score, class) per image, in order."""
        import torch
        from ultralytics.utils import nms, ops

        found: list = [None] * len(batch)
        groups: dict[tuple, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(item.pixels.shape, []).append(i)
        with torch.inference_mode():
            for members in groups.values():
                pixels = torch.from_numpy(np.stack([batch[i].pixels for i in members])).to(
                    self.device
                )
                x = pixels.permute(0, 3, 1, 2).contiguous()
                x = (x.half() if self.backend.fp16 else x.float()).div_(255)
                preds = self.backend(x)
                kept = nms.non_max_suppression(
                    preds,
                    self.settings.conf,
                    self.settings.iou,
                    None,
                    False,
                    max_det=self.settings.max_det,
                    nc=0,
                )
                for i, det in zip(members, kept):
                    det[:, :4] = ops.scale_boxes(x.shape[2:], det[:, :4], batch[i].source_shape)
                    found[i] = det
        return found


def predict_by_shape(model, batch: list, settings) -> list:
    """ultralytics' ``predict`` on each group of equally sized images of ``batch``:
    (N, 6) tensors per image, in order.

    ``predict`` letterboxes a batch of one size with the minimal padding and a batch
    of mixed sizes to a full square, so one call on a mixed batch would make an
    image's boxes depend on which images share its batch (``detector.batch_size``).
    One call per size gives each image the boxes a batch of its size alone gives.
    """
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(batch):
        groups.setdefault(tuple(image.size), []).append(i)
    found: list = [None] * len(batch)
    for members in groups.values():
        results = model.predict([batch[i] for i in members], **_predict_options(settings))
        for i, result in zip(members, results):
            found[i] = result.boxes.data
    return found


class UltralyticsDetector:
    """A loaded YOLO model as the detection stage runs it: the batched path where it is
    proven equal to ``predict``, else ``predict`` per image size."""

    def __init__(self, model, settings):
        self.model = model
        self.settings = settings
        self.names = model_classes(model)
        self.batched = BatchedDetector.for_model(model, settings)

    def prepare(self, image):
        """In the loader threads: letterboxed for the batched path, else the image itself."""
        return self.batched.letterbox(image) if self.batched is not None else image

    def detect(self, batch: list) -> list:
        if self.batched is not None:
            return self.batched.detect(batch)
        return predict_by_shape(self.model, batch, self.settings)


def _load(settings: dict, detect_settings) -> UltralyticsDetector:
    return UltralyticsDetector(load_detector(settings["weights"]), detect_settings)


def _classes(settings: dict) -> dict[int, str]:
    return model_classes(load_detector(settings["weights"]))


def _vocabulary(settings: dict) -> list[str] | None:
    names = read_names(settings["weights"])
    return None if names is None else list(names.values())


register(
    Backend(
        name=NAME,
        load=_load,
        classes=_classes,
        vocabulary=_vocabulary,
        model_keys={"weights": "file"},
        own_keys=("weights", "imgsz"),
    )
)
