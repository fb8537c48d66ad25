"""statistics.json: the run's figures, added up shard by shard as the export streams.

:class:`ObjectCounts` holds the per-object figures (a few counters, never the objects);
:class:`StatisticsWriter` is the export writer that adds each shard to them and writes
statistics.json (the original's fields first, then image accounting and any extra
sections such as the training selection's summary) when the pass ends without error.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pandas as pd

from rare_objects.export.rows import is_true
from rare_objects.io import atomic


class ObjectCounts:
    """The per-object figures of statistics.json, added up one frame at a time."""

    def __init__(self):
        self.total = self.captioned = self.outliers = self.final_outliers = 0
        self.targets: Counter = Counter()
        self.classes: Counter = Counter()
        self.codes: Counter = Counter()

    def add(self, frame: pd.DataFrame) -> None:
        self.total += len(frame)
        if "description" in frame:
            self.captioned += int(frame["description"].notna().sum())
        self.outliers += int(frame["is_outlier"].sum())
        self.final_outliers += int(frame["is_final_outlier"].map(is_true).sum())
        self.targets.update(t for ts in frame["target_matches"] for t in ts)
        self.classes.update(frame["class_name"].value_counts().to_dict())
        self.codes.update(frame["outlier_code"].value_counts().to_dict())

    def statistics(
        self, total_images: int, images_with_objects: int, rejects: pd.DataFrame, targets: dict
    ) -> dict:
        """statistics.json: the original's fields first, then image accounting."""
        return {
            "total_objects": self.total,
            "processed_objects": self.captioned,
            "outlier_count": self.outliers,
            "final_outlier_count": self.final_outliers,
            "target_counts": {t: int(self.targets.get(t, 0)) for t in targets},
            "class_distribution": {k: int(v) for k, v in sorted(self.classes.items())},
            "outlier_code_counts": {str(k): int(v) for k, v in sorted(self.codes.items())},
            "total_images": int(total_images),
            "images_with_objects": int(images_with_objects),
            "rejected_images": int(len(rejects)),
            "rejected_by_reason": {
                k: int(v)
                for k, v in rejects["reason"]
                .map(lambda r: r.split(":")[0])
                .value_counts()
                .sort_index()
                .items()
            },
        }


def image_counts(image_table_paths) -> tuple[int, int]:
    """(images, images with objects) over the per-shard image tables, read one column at a time."""
    total = with_objects = 0
    for path in image_table_paths:
        n_objects = pd.read_parquet(path, columns=["n_objects"])["n_objects"]
        total += len(n_objects)
        with_objects += int((n_objects > 0).sum())
    return total, with_objects


class StatisticsWriter:
    """An export writer for statistics.json.

    ``images``: (images, images with objects), as :func:`image_counts` gives;
    ``rejects``: the rejected-images table (a ``reason`` column); ``extra``:
    sections added after the figures (e.g. ``{"training_selection": {...}}``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        targets: dict,
        images: tuple[int, int],
        rejects: pd.DataFrame,
        extra: dict | None = None,
    ):
        self.path = path
        self.targets = targets
        self.images = images
        self.rejects = rejects
        self.extra = extra or {}
        self.counts = ObjectCounts()

    def __enter__(self):
        return self

    def write_shard(self, shard) -> None:
        self.counts.add(shard.frame)

    def figures(self) -> dict:
        """What statistics.json holds for the shards written so far."""
        stats = self.counts.statistics(*self.images, self.rejects, self.targets)
        return {**stats, **self.extra}

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            atomic.write_text(
                self.path, json.dumps(self.figures(), indent=2, ensure_ascii=False) + "\n"
            )
        return False
