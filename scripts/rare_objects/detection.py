"""Detect objects with YOLO and describe each as a row (the original's DetectorYOLO).

Crops are not written as files: a crop is its box in original pixels, and
later stages cut it from the original image in memory (``images.crop``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import images
from .logs import Progress
from .schemas import DETECTIONS, IMAGES, REJECTS

DETECTION_COLUMNS = DETECTIONS.names
IMAGE_COLUMNS = IMAGES.names
REJECT_COLUMNS = REJECTS.names

log = logging.getLogger("rare_objects.detect")


@dataclass(frozen=True)
class DetectSettings:
    max_side: int = 1280
    imgsz: int = 640
    conf: float = 0.25
    iou: float = 0.5
    max_det: int = 100
    max_objects: int = 50
    batch_size: int = 8
    device: str = "cpu"
    half: bool = False


def top_objects(scores: np.ndarray, max_objects: int) -> np.ndarray:
    """Indices of the ``max_objects`` best boxes by score; ties keep the model's order."""
    return np.argsort(-scores, kind="stable")[:max_objects]


def _object_rows(record, result, image_size, scale, names, max_objects) -> list[dict]:
    width, height = image_size
    boxes = result.boxes.xyxy.cpu().numpy().astype(np.float64) / scale
    scores = result.boxes.conf.cpu().numpy()
    classes = result.boxes.cls.cpu().numpy().astype(int)
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
                "x1": x1, "y1": y1, "x2": x2, "y2": y2,
                "image_width": width,
                "image_height": height,
                "crop_width": right - left,
                "crop_height": bottom - top,
            }
        )
    return rows


def detect_images(
    manifest: pd.DataFrame,
    model,
    settings: DetectSettings,
    open_image=images.open_rgb,
    loader_workers: int = 2,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Run the detector over the manifest's images.

    Returns (detections, images, rejects) as DataFrames with the columns of
    schemas.DETECTIONS, schemas.IMAGES and schemas.REJECTS.
    """
    names = model.names
    records = list(manifest.itertuples(index=False))
    progress = Progress(log, "detect images", len(records))
    detections, image_rows, rejects = [], [], []

    def load(path):
        image = open_image(path)
        resized, scale = images.resize_longest(image, settings.max_side)
        return image.size, resized, scale

    pending: list[tuple] = []

    def flush():
        if not pending:
            return
        results = model.predict(
            [item[2] for item in pending],
            imgsz=settings.imgsz,
            conf=settings.conf,
            iou=settings.iou,
            max_det=settings.max_det,
            device=settings.device,
            half=settings.half,
            verbose=False,
        )
        for (record, size, _, scale), result in zip(pending, results):
            rows = _object_rows(record, result, size, scale, names, settings.max_objects)
            detections.extend(rows)
            image_rows.append(_image_row(record, size, len(rows), "ok"))
        progress.update(len(pending))
        pending.clear()

    for index, path, loaded in images.iter_images_prefetched(
        [r.image_path for r in records], load, workers=loader_workers
    ):
        record = records[index]
        if isinstance(loaded, Exception):
            log.warning("rejected %s", loaded)
            rejects.append(_reject_row(record, "detect", loaded))
            image_rows.append(_image_row(record, (None, None), 0, "rejected"))
            progress.update()
            continue
        size, resized, scale = loaded
        pending.append((record, size, resized, scale))
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


