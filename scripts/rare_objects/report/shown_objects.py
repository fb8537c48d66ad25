"""What the report's galleries, the map and the explorer share: the rows of a few chosen
objects, their crops cut from the originals, and each object's flag.

They show a capped number of objects of a run that may hold tens of millions:
:func:`object_rows` streams the detection shards and keeps only the chosen
rows; :func:`iter_crops` decodes each original image once for all of its
chosen objects (crops are rows until something shows them). :func:`first_flag`
is the one precedence of an object's flags (final outlier, then outlier, then
target match), :func:`final_outlier_mask` the final-outlier flag of given objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

log = logging.getLogger("rare_objects.report.shown_objects")


def first_flag(is_final_outlier, is_outlier, is_target, labels) -> np.ndarray:
    """Each object's label for its most important flag: ``labels[0]`` for a final outlier,
    else ``labels[1]`` for an outlier, else ``labels[2]`` for a target match, else
    ``labels[3]`` (the map's reasons to show an object, the explorer's flags)."""
    flags = [np.asarray(f, dtype=bool) for f in (is_final_outlier, is_outlier, is_target)]
    return np.select(flags, list(labels[:3]), default=labels[3])


def final_outlier_mask(concepts: pd.DataFrame | None, object_ids) -> np.ndarray:
    """Whether each of ``object_ids`` is a final outlier of the concept table ``concepts``
    (False when it has no row there, a null flag or no concept table at all)."""
    object_ids = np.asarray(object_ids, dtype=object)
    if concepts is None or not len(concepts):
        return np.zeros(len(object_ids), dtype=bool)
    flags = concepts.set_index("object_id")["is_final_outlier"].fillna(False).astype(bool)
    return flags.reindex(object_ids).fillna(False).astype(bool).to_numpy()


def object_rows(
    paths: Iterable, object_ids: Iterable[str], columns: list[str] | None = None
) -> pd.DataFrame:
    """The rows of ``object_ids`` in parquet tables keyed by ``object_id`` (detection shards,
    the outlier table), read one file at a time and, within a file, one record batch
    at a time: memory is the kept rows plus one batch."""
    paths = list(paths)
    wanted = pd.Index(pd.unique(np.asarray(list(object_ids), dtype=object)))
    pieces = []
    for path in paths:
        parquet = pq.ParquetFile(path)
        names = columns or parquet.schema_arrow.names
        for batch in parquet.iter_batches(batch_size=262_144, columns=names):
            ids = batch.column(names.index("object_id")).to_numpy(zero_copy_only=False)
            keep = wanted.get_indexer(ids) >= 0
            if keep.any():
                pieces.append(batch.to_pandas()[keep])
    if not pieces:
        names = columns or (pq.read_schema(paths[0]).names if paths else ["object_id"])
        return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    return pd.concat(pieces, ignore_index=True)


def iter_crops(
    frame: pd.DataFrame, open_image: Callable, max_side: int, workers: int = 2
) -> Iterator[tuple[object, object]]:
    """Yield ``(index label, crop or exception)`` for every row of ``frame``, the crop
    shrunk to at most ``max_side`` pixels on its longer side.

    Rows are grouped by ``image_path`` and each original is decoded once, in
    loader threads ahead of the consumer. An image that cannot be opened
    yields its exception for each of its rows (the caller logs it and goes on).
    """
    from rare_objects.io import images

    shown = frame[frame["image_path"].notna()]
    catch = (images.ImageRejected, OSError, ValueError)
    for _path, image, rows in images.iter_image_rows(
        shown["image_path"], open_image, workers=workers, catch=catch, sort=True
    ):
        for label in shown.index[rows]:
            if isinstance(image, BaseException):
                yield label, image
                continue
            row = frame.loc[label]
            crop = images.crop(image, (row["x1"], row["y1"], row["x2"], row["y2"]))
            crop.thumbnail((max_side, max_side))
            yield label, crop
