"""Detect objects and describe each as a row (the original's DetectorYOLO).

The detector is any family of :mod:`rare_objects.backends.object_detectors`
(``detector.backend``: ultralytics YOLO, a transformers zero-shot model); this
stage owns what they share: images decoded and resized to ``max_side`` in the
loader threads (where the detector also prepares each one), rejects, batches
of ``batch_size``, the best ``max_objects`` boxes of each image by score, boxes
mapped back to original pixels and clipped, and the rows.

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
    """The ``detector`` section's keys that every family reads (``imgsz`` is
    ultralytics' letterbox size), and the device it runs on.

    No defaults here: schemas/config.schema.yaml owns them (build one with
    :meth:`from_config`; tests start from ``runtime.config.defaults()``).
    """

    max_side: int
    imgsz: int | None
    """ultralytics' letterbox size; None where the chosen family does not read it."""
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
        precision rule (``runtime.devices.resolve_dtype``) gives fp16 (on a GPU)."""
        import torch

        from rare_objects.runtime.devices import resolve_dtype

        return cls(
            max_side=detector["max_side"],
            imgsz=detector.get("imgsz"),
            conf=detector["conf"],
            iou=detector["iou"],
            max_det=detector["max_det"],
            max_objects=detector["max_objects"],
            batch_size=detector["batch_size"],
            device=device,
            half=resolve_dtype("auto", device, gpu_auto="fp16") == torch.float16,
        )


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


def detect_images(
    manifest: pd.DataFrame,
    detector,
    settings: DetectSettings,
    *,
    loader_workers: int,
    open_image=images.open_rgb,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run ``detector`` (a loaded detector of :mod:`rare_objects.backends.object_detectors`:
    ``names``, ``prepare``, ``detect``) over the manifest's images.

    Returns (detections, images, rejects) as DataFrames with the columns of
    schemas.DETECTIONS, schemas.IMAGES and schemas.REJECTS.
    """
    names = detector.names
    records = list(manifest.itertuples(index=False))
    progress = Progress(log, "detect images", len(records))
    detections, rejects = [], []
    # one row per image, in the manifest's order whatever the batch size (a rejected
    # image's row is known at once, the others' when their batch has run)
    image_rows: list[dict | None] = [None] * len(records)

    def load(path):
        image = open_image(path)
        resized, scale = images.resize_longest(image, settings.max_side)
        return image.size, detector.prepare(resized), scale  # prepared in the loader threads

    pending: list[tuple] = []

    def flush():
        if not pending:
            return
        found = detector.detect([item[3] for item in pending])
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
