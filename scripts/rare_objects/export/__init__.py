"""The export: one streaming pass over the detection shards that feeds a list of writers.

Outputs (as the original's detect_improved.py, without the timestamp folder), each a writer:

- the results tree: outliers/ inliers/ final_outliers/ targets/<target>/ with crops,
  ``_desc.txt`` and ``_probs.png`` (:class:`~rare_objects.export.tree.TreeWriter`);
- detection_results.json and ``{target}_results.json``
  (:mod:`rare_objects.export.json_writers`);
- coco_detections.json (:class:`~rare_objects.export.coco.CocoWriter`);
- statistics.json (:class:`~rare_objects.export.statistics.StatisticsWriter`).

A *writer* is a context manager with ``write_shard(shard)``: it is entered before the
pass, gets every :class:`Shard` in export order, and publishes its file(s) only when
the pass ends without error. A new output is a new writer, not a new parameter of the
pass. An object's row and records are built in :mod:`rare_objects.export.rows`.

:func:`export_shards` holds one detection shard at a time plus the few per-object
result columns it looks up by object_id (:func:`rows.read_object_tables`), never every
assembled row of the export.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

from rare_objects.export import rows

log = logging.getLogger("rare_objects.export")


@dataclass
class Shard:
    """One detection shard as the writers see it.

    ``frame``: its assembled rows (:func:`rows.assemble`), indexed by their position
    in the export; ``first_inlier``: how many inliers of the export come before its
    first; ``n_inliers``: the export's inliers in all. ``records`` (its
    detection_results objects) are built on first use, from ``frame`` and the crop
    paths that the tree writer set before.
    """

    frame: pd.DataFrame
    first_inlier: int
    n_inliers: int
    crop_paths: dict[str, str] = field(default_factory=dict)
    _records: list[dict] | None = None

    def set_crop_paths(self, crop_paths: dict[str, str]) -> None:
        if self._records is not None:
            raise RuntimeError(
                "crop paths set after the records were built: the tree writer must come "
                "before the writers that read records"
            )
        self.crop_paths = crop_paths

    @property
    def records(self) -> list[dict]:
        if self._records is None:
            self._records = list(rows.result_records(self.frame, self.crop_paths))
        return self._records


@dataclass(frozen=True)
class Survey:
    """What depends on every object, from a first pass over the shards' id and path columns."""

    n_inliers: int  # which inliers the seeded sample takes depends on their number
    clashing_stems: set[str]  # image file stems shared by more than one image


def survey(detection_paths: Sequence, is_outlier: pd.Series) -> Survey:
    """The :class:`Survey` of the shards (``is_outlier``: the outlier table's flags by object_id)."""
    n_inliers, image_paths = 0, {}
    for path in detection_paths:
        part = pd.read_parquet(path, columns=["object_id", "image_id", "image_path"])
        flags = (
            is_outlier.reindex(part["object_id"].to_numpy()).fillna(False).astype(bool).to_numpy()
        )
        n_inliers += int((~flags).sum())
        image_paths.update(zip(part["image_id"], part["image_path"]))
    return Survey(n_inliers, rows.clashing_stems(image_paths.keys(), image_paths.values()))


def export_shards(
    detection_paths: Iterable,
    tables: dict[str, pd.DataFrame],
    *,
    targets: dict[str, list[str]],
    writers: Sequence,
) -> int:
    """The whole export: each detection shard assembled with the result ``tables``
    (:func:`rows.read_object_tables`) and handed to every writer, in order.

    Writers that read records come after the tree writer (it sets the crop paths).
    Returns the number of objects exported.
    """
    from rare_objects.runtime.logs import Progress

    detection_paths = list(detection_paths)
    plan = survey(detection_paths, tables["outliers"]["is_outlier"])
    progress = Progress(log, "export shards", len(detection_paths))
    offset = inliers_before = 0
    with contextlib.ExitStack() as stack:
        for writer in writers:
            stack.enter_context(writer)
        for path in detection_paths:
            detections = pd.read_parquet(path)
            detections.index = pd.RangeIndex(offset, offset + len(detections))
            frame = rows.assemble(
                detections,
                tables["outliers"],
                targets,
                tables.get("selection"),
                tables.get("captions"),
                tables.get("concepts"),
                clashing_stems=plan.clashing_stems,
            )
            shard = Shard(frame, first_inlier=inliers_before, n_inliers=plan.n_inliers)
            for writer in writers:
                writer.write_shard(shard)
            inliers_before += int((~frame["is_outlier"]).sum())
            offset += len(frame)
            progress.update()
    return offset
