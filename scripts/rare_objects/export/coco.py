"""The mined objects as a COCO detection file, written as the export streams.

:class:`CocoWriter` is an export writer (``rare_objects.export``): it gets each
shard's assembled frame and detection_results records and writes, as it goes,

- ``images``: one entry per original image holding an exported object (once,
  however many of its objects are exported), ``file_name`` relative to a data
  root or absolute, with the original's width and height;
- ``annotations``: the box as ``[x, y, w, h]`` in original pixels, ``area``,
  ``iscrowd: 0``, ``category_id``, ``score`` (the detector's confidence), and
  the mining results as extra fields (:data:`EXTRA_FIELDS`);
- ``categories``: the detector's classes, id = the detector's class index + 1
  (COCO ids start at 1): its whole vocabulary when given (the workflow reads it
  from the weights), else every class that occurs in the run's detections.

Images go to the file as they come; annotations go to an unnamed scratch file
beside it that is appended when the pass ends, so neither is held in memory. The
file appears (:func:`rare_objects.io.atomic.atomic_path`) only when the pass ends
without error.
What grows with the run is one dict entry per exported image (its COCO id).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from rare_objects.io import atomic

OBJECT_SETS = ("selected", "outliers", "final_outliers", "targets", "all")

# Annotation field -> detection_results.json field, in the order written.
EXTRA_FIELDS = {
    "object_id": "object_id",
    "is_outlier": "is_outlier",
    "outlier_code": "outlier_code",
    "global_score": "global_score",
    "class_score": "class_score",
    "selected": "selected",
    "selection_reason": "selection_reason",
    "caption": "description",
    "caption_error": "caption_error",
    "top_concept": "top_concept",
    "is_final_outlier": "is_final_outlier",
    "target_matches": "target_matches",
}


def wanted(record: dict, objects) -> bool:
    """Whether an object (its detection_results record) is in any of the sets ``objects``."""
    return (
        "all" in objects
        or ("selected" in objects and record.get("selected") is True)
        or ("outliers" in objects and record["is_outlier"])
        or ("final_outliers" in objects and record.get("is_final_outlier") is True)
        or ("targets" in objects and bool(record["target_matches"]))
    )


def image_file_name(image_path: str, data_root: str | os.PathLike | None) -> str:
    """``image_path`` relative to ``data_root`` (POSIX separators), or absolute when it is None."""
    absolute = os.path.abspath(image_path)
    if data_root is None:
        return absolute
    relative = os.path.relpath(absolute, os.path.abspath(data_root))
    if relative == ".." or relative.startswith(".." + os.sep) or os.path.isabs(relative):
        raise ValueError(
            f"image {image_path!r} is not below the COCO data root {str(data_root)!r}; "
            "set export.coco.data_root to a folder that holds every input image, or export.coco.absolute_paths: true"
        )
    return Path(relative).as_posix()


def coco_box(bbox) -> tuple[list[float], float]:
    """``[x, y, w, h]`` and the area of an ``[x1, y1, x2, y2]`` box."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    width, height = round(x2 - x1, 2), round(y2 - y1, 2)
    return [x1, y1, width, height], round(width * height, 2)


class CocoWriter:
    """An export writer for a COCO detection JSON of the objects in ``objects``
    (a subset of :data:`OBJECT_SETS`, their union). ``data_root``: the folder
    that image ``file_name``s are relative to; None writes absolute paths.
    The file appears at ``path`` only when the export ends without error."""

    def __init__(
        self,
        path: str | os.PathLike,
        objects=("selected",),
        data_root=None,
        info: dict | None = None,
        categories: dict[int, str] | None = None,
    ):
        unknown = sorted(set(objects) - set(OBJECT_SETS))
        if unknown or not objects:
            raise ValueError(
                f"COCO objects {unknown or list(objects)} not understood; use some of {', '.join(OBJECT_SETS)}"
            )
        self.path = Path(path)
        self.objects = tuple(objects)
        self.data_root = data_root
        self.info = {
            "description": "rare-object-mining: mined objects",
            "objects": list(self.objects),
            **(info or {}),
        }
        self._stack = contextlib.ExitStack()
        self._main = self._annotations = None
        self._image_ids: dict[str, int] = {}
        # The detector's whole vocabulary (index -> name) when known, so that the
        # categories do not depend on which classes this run happened to find.
        self._categories: dict[int, str] = {
            int(i) + 1: name for i, name in (categories or {}).items()
        }
        self.n_annotations = 0

    @property
    def n_images(self) -> int:
        return len(self._image_ids)

    def __enter__(self):
        tmp = self._stack.enter_context(atomic.atomic_path(self.path))
        self._main = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        # Scratch space for the annotations, unnamed: it goes when closed, whatever happens.
        self._annotations = self._stack.enter_context(
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=self.path.parent)
        )
        self._main.write(
            '{"info": '
            + json.dumps(self.info, ensure_ascii=False)
            + ',\n"licenses": [],\n"images": ['
        )
        return self

    def _add_categories(self, frame: pd.DataFrame) -> None:
        for class_id, name in (
            frame[["class_id", "class_name"]].drop_duplicates().itertuples(index=False)
        ):
            category = int(class_id) + 1
            known = self._categories.setdefault(category, name)
            if known != name:
                raise ValueError(
                    f"detector class {int(class_id)} is named both {known!r} and {name!r} in the detections"
                )

    def write_shard(self, shard) -> None:
        frame = shard.frame
        self._add_categories(frame)
        columns = zip(
            shard.records,
            frame["image_id"],
            frame["class_id"],
            frame["image_width"],
            frame["image_height"],
        )
        for record, image_key, class_id, width, height in columns:
            if not wanted(record, self.objects):
                continue
            image_id = self._image_ids.get(image_key)
            if image_id is None:
                image_id = self._image_ids[image_key] = len(self._image_ids) + 1
                image = {
                    "id": image_id,
                    "file_name": image_file_name(record["original_path"], self.data_root),
                    "width": int(width),
                    "height": int(height),
                    "sample_token": record["sample_token"],
                    "camera": record.get("camera"),
                }
                self._main.write(",\n  " if image_id > 1 else "\n  ")
                self._main.write(json.dumps(image, ensure_ascii=False))
            box, area = coco_box(record["bbox"])
            self.n_annotations += 1
            annotation = {
                "id": self.n_annotations,
                "image_id": image_id,
                "category_id": int(class_id) + 1,
                "bbox": box,
                "area": area,
                "iscrowd": 0,
                "score": record["confidence"],
                **{field: record.get(source) for field, source in EXTRA_FIELDS.items()},
            }
            self._annotations.write(",\n  " if self.n_annotations > 1 else "\n  ")
            self._annotations.write(json.dumps(annotation, ensure_ascii=False))

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._main.write("\n],\n" if self._image_ids else "],\n")
            self._main.write('"annotations": [')
            self._annotations.seek(0)
            shutil.copyfileobj(self._annotations, self._main, 1 << 20)
            self._main.write("\n],\n" if self.n_annotations else "],\n")
            categories = [
                {"id": i, "name": self._categories[i], "supercategory": "object"}
                for i in sorted(self._categories)
            ]
            self._main.write(
                '"categories": ' + json.dumps(categories, ensure_ascii=False) + "\n}\n"
            )
        return self._stack.__exit__(exc_type, exc, tb)
