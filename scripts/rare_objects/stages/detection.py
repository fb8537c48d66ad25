"""Detect objects with YOLO and describe each as a row (the original's DetectorYOLO).

Crops are not written as files: a crop is its box in original pixels, and
later stages cut it from the original image in memory (``images.crop``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rare_objects.io import images
from rare_objects.io.schemas import DETECTIONS, IMAGES, REJECTS
from rare_objects.runtime.logs import Progress

DETECTION_COLUMNS = DETECTIONS.names
IMAGE_COLUMNS = IMAGES.names
REJECT_COLUMNS = REJECTS.names

log = logging.getLogger("rare_objects.detect")


@dataclass(frozen=True)
class DetectSettings:
    """The ``detector`` section of the validated config, and the device it runs on.

    No defaults here: schemas/config.schema.yaml owns them (build one with
    :meth:`from_config`; tests start from ``runtime.config.defaults()``).
    """

    max_side: int
    imgsz: int
    conf: float
    iou: float
    max_det: int
    max_objects: int
    batch_size: int
    device: str
    half: bool

    @classmethod
    def from_config(cls, detector: dict, device: str) -> DetectSettings:
        """Settings from the config's ``detector`` section; half precision where the one
        precision rule (``runtime.models.resolve_dtype``) gives fp16 (on a GPU)."""
        import torch

        from rare_objects.runtime.models import resolve_dtype

        return cls(
            max_side=detector["max_side"],
            imgsz=detector["imgsz"],
            conf=detector["conf"],
            iou=detector["iou"],
            max_det=detector["max_det"],
            max_objects=detector["max_objects"],
            batch_size=detector["batch_size"],
            device=device,
            half=resolve_dtype("auto", device, gpu_auto="fp16") == torch.float16,
        )

    def predict_options(self) -> dict:
        """The keyword arguments of ultralytics' ``predict`` for these settings."""
        return {
            "imgsz": self.imgsz,
            "conf": self.conf,
            "iou": self.iou,
            "max_det": self.max_det,
            "device": self.device,
            "half": self.half,
            "verbose": False,
        }


def top_objects(scores: np.ndarray, max_objects: int) -> np.ndarray:
    """Indices of the ``max_objects`` best boxes by score; ties keep the model's order."""
    return np.argsort(-scores, kind="stable")[:max_objects]


def _object_rows(record, found, image_size, scale, names, max_objects) -> list[dict]:
    """Rows of one image's detections; ``found`` is (N, 6) xyxy, score, class in resized pixels."""
    width, height = image_size
    found = found.cpu().numpy() if hasattr(found, "cpu") else np.asarray(found)
    boxes = found[:, :4].astype(np.float64) / scale
    scores = found[:, 4]
    classes = found[:, 5].astype(int)
    rows = []
    for rank, i in enumerate(top_objects(scores, max_objects)):
        x1, y1, x2, y2 = np.clip(boxes[i], 0, [width, height, width, height])
        left, top, right, bottom = images.crop_box((x1, y1, x2, y2), width, height)
        rows.append(
            {
                "object_id": f"{record.image_id}-{rank:02d}",
                "image_id": record.image_id,
                "shard": record.shard,
                "image_path": record.image_path,
                "sample_token": record.sample_token,
                "camera": record.camera,
                "rank": rank,
                "class_id": int(classes[i]),
                "class_name": names[int(classes[i])],
                "confidence": float(scores[i]),
                "x1": x1,
                "y1": y1,
                "x2": x2,
                "y2": y2,
                "image_width": width,
                "image_height": height,
                "crop_width": right - left,
                "crop_height": bottom - top,
            }
        )
    return rows


class _Letterboxed:
    """One image letterboxed for the detector: ``pixels`` (h, w, 3) uint8 RGB and the resized image's shape."""

    __slots__ = ("pixels", "source_shape")

    def __init__(self, pixels: np.ndarray, source_shape: tuple[int, int]):
        self.pixels, self.source_shape = pixels, source_shape


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

    def __init__(self, model, settings: DetectSettings):
        from ultralytics.data.augment import LetterBox

        self.settings = settings
        # The predictor (ultralytics' AutoBackend: device, fusing, half precision) is set
        # up by one predict call.
        model.predict(np.zeros((32, 32, 3), dtype=np.uint8), **settings.predict_options())
        self.backend = model.predictor.model
        self.device = model.predictor.device
        self.imgsz = model.predictor.imgsz
        self._letterbox = LetterBox(self.imgsz, auto=True, stride=self.backend.stride)

    @classmethod
    def for_model(cls, model, settings: DetectSettings) -> BatchedDetector | None:
        """The batched path for a PyTorch detection model; None (use ``predict``) for exported formats."""
        if getattr(model, "task", None) != "detect" or not hasattr(model, "predictor"):
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


def predict_by_shape(model, batch: list, settings: DetectSettings) -> list:
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
        results = model.predict([batch[i] for i in members], **settings.predict_options())
        for i, result in zip(members, results):
            found[i] = result.boxes.data
    return found


def detect_images(
    manifest: pd.DataFrame,
    model,
    settings: DetectSettings,
    *,
    loader_workers: int,
    open_image=images.open_rgb,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run the detector over the manifest's images.

    Returns (detections, images, rejects) as DataFrames with the columns of
    schemas.DETECTIONS, schemas.IMAGES and schemas.REJECTS.
    """
    names = model.names
    records = list(manifest.itertuples(index=False))
    progress = Progress(log, "detect images", len(records))
    detections, rejects = [], []
    # one row per image, in the manifest's order whatever the batch size (a rejected
    # image's row is known at once, the others' when their batch has run)
    image_rows: list[dict | None] = [None] * len(records)
    batched = BatchedDetector.for_model(model, settings)

    def load(path):
        image = open_image(path)
        resized, scale = images.resize_longest(image, settings.max_side)
        if batched is not None:  # letterboxed here, in the loader threads
            return image.size, batched.letterbox(resized), scale
        return image.size, resized, scale

    pending: list[tuple] = []

    def flush():
        if not pending:
            return
        if batched is not None:
            found = batched.detect([item[3] for item in pending])
        else:
            found = predict_by_shape(model, [item[3] for item in pending], settings)
        for (index, record, size, _, scale), boxes in zip(pending, found):
            rows = _object_rows(record, boxes, size, scale, names, settings.max_objects)
            detections.extend(rows)
            image_rows[index] = _image_row(record, size, len(rows), "ok")
        progress.update(len(pending))
        pending.clear()

    for index, _path, loaded in images.iter_images_prefetched(
        [r.image_path for r in records], load, workers=loader_workers
    ):
        record = records[index]
        if isinstance(loaded, Exception):
            log.warning("rejected %s", loaded)
            rejects.append(_reject_row(record, "detect", loaded))
            image_rows[index] = _image_row(record, (None, None), 0, "rejected")
            progress.update()
            continue
        size, resized, scale = loaded
        pending.append((index, record, size, resized, scale))
        if len(pending) >= settings.batch_size:
            flush()
    flush()
    return (
        pd.DataFrame(detections, columns=DETECTION_COLUMNS),
        pd.DataFrame(image_rows, columns=IMAGE_COLUMNS),
        pd.DataFrame(rejects, columns=REJECT_COLUMNS),
    )


def _image_row(record, size, n_objects, status) -> dict:
    return {
        "image_id": record.image_id,
        "shard": record.shard,
        "image_path": record.image_path,
        "sample_token": record.sample_token,
        "camera": record.camera,
        "image_width": size[0],
        "image_height": size[1],
        "n_objects": n_objects,
        "status": status,
    }


def _reject_row(record, stage, error) -> dict:
    reason = getattr(error, "reason", type(error).__name__)
    detail = getattr(error, "detail", None) or str(error)
    return {
        "image_path": record.image_path,
        "sample_token": record.sample_token,
        "shard": record.shard,
        "stage": stage,
        "reason": f"{reason}: {detail}" if detail and detail != reason else reason,
    }
