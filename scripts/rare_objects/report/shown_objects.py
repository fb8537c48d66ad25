"""What the report's galleries and the explorer share: the rows of a few chosen objects
and their crops cut from the originals.

Both show a capped number of objects of a run that may hold tens of millions:
:func:`object_rows` streams the detection shards and keeps only the chosen
rows; :func:`iter_crops` decodes each original image once for all of its
chosen objects (crops are rows until something shows them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

log = logging.getLogger("rare_objects.report.shown_objects")


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

    groups = list(frame.groupby("image_path", sort=True).groups.items())
    paths = [path for path, _ in groups]
    catch = (images.ImageRejected, OSError, ValueError)
    for i, _path, image in images.iter_images_prefetched(
        paths, open_image, workers=workers, catch=catch
    ):
        labels = groups[i][1]
        for label in labels:
            if isinstance(image, BaseException):
                yield label, image
                continue
            row = frame.loc[label]
            crop = images.crop(image, (row["x1"], row["y1"], row["x2"], row["y2"]))
            crop.thumbnail((max_side, max_side))
            yield label, crop
