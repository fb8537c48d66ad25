"""Image embeddings of every detected object (the original's CLIPFeatureExtractor).

Each image is decoded once, in loader threads that run ahead of the model;
its crops are cut and preprocessed there by the embedder's ``crop_batch``
(:mod:`rare_objects.backends.embedders`; open_clip's ``ClipModel.crop_batch``
cuts, resizes and normalises them on the model's device).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from rare_objects.backends import embedders
from rare_objects.io import images
from rare_objects.io.schemas import embeddings_schema
from rare_objects.runtime.logs import Progress

log = logging.getLogger("rare_objects.embed")


def embed_objects(
    detections: pd.DataFrame,
    model,
    *,
    batch_size: int,
    loader_workers: int,
    open_image=images.open_rgb,
    storage: str = "float32",
) -> pa.Table:
    """Embeddings of every row of ``detections`` by ``model`` (a loaded embedder,
    :class:`rare_objects.backends.embedders.EmbeddingModel`) as a table of
    ``embeddings_schema(model.dim, storage)``: ``storage`` ``float16``
    (embedder.storage) stores each value rounded to the nearest float16.

    An object whose image can no longer be read gets a null embedding and the
    reason in ``error``; every detection keeps its row.
    """
    by_image = list(detections.groupby("image_path", sort=False))
    progress = Progress(log, "embed objects", len(detections))

    def load(path):
        return model.crop_batch(np.asarray(open_image(path)), boxes_by_image[path])

    by_image_rows = {path: rows for path, rows in by_image}
    boxes_by_image = {path: rows[["x1", "y1", "x2", "y2"]].to_numpy() for path, rows in by_image}
    # Blocks of consecutive rows in output order: (object ids, (n, dim) float32 or None, error).
    blocks: list[tuple[list, np.ndarray | None, str | None]] = []
    batch_ids: list[str] = []
    batch_tensors: list = []

    def flush():
        if not batch_tensors:
            return
        batch = embedders.join_batches(batch_tensors)
        blocks.append((list(batch_ids), model.encode_batch(batch), None))
        progress.update(len(batch_ids))
        batch_ids.clear()
        batch_tensors.clear()

    for _, path, loaded in images.iter_images_prefetched(
        [p for p, _ in by_image], load, workers=loader_workers
    ):
        rows = by_image_rows[path]
        if isinstance(loaded, Exception):
            log.warning("cannot embed the %d objects of %s", len(rows), loaded)
            flush()  # keep output order = input order
            blocks.append(
                (
                    rows["object_id"].tolist(),
                    None,
                    f"{getattr(loaded, 'reason', type(loaded).__name__)}: {loaded}",
                )
            )
            progress.update(len(rows))
            continue
        batch_ids.extend(rows["object_id"])
        batch_tensors.append(loaded)
        if len(batch_ids) >= batch_size:
            flush()
    flush()
    return _embedding_table(blocks, model.dim, storage)


def _embedding_table(blocks, dim: int, storage: str = "float32") -> pa.Table:
    """The embeddings table from :func:`embed_objects`' blocks, built from one flat buffer
    (a list of per-row arrays would make pyarrow convert every float in Python). With
    ``storage`` ``float16`` the buffer is float16: numpy rounds each value to nearest."""
    schema = embeddings_schema(dim, storage)
    ids = [object_id for block_ids, _, _ in blocks for object_id in block_ids]
    values = np.zeros((len(ids), dim), dtype=np.dtype(storage))
    valid = np.zeros(len(ids), dtype=bool)
    errors: list[str | None] = []
    start = 0
    for block_ids, vectors, error in blocks:
        stop = start + len(block_ids)
        if vectors is not None:
            values[start:stop] = vectors
            valid[start:stop] = True
        errors.extend([error] * len(block_ids))
        start = stop
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(values.ravel()), dim, mask=pa.array(~valid)
    )
    return pa.table(
        {
            "object_id": pa.array(ids, pa.string()),
            "embedding": embedding,
            "error": pa.array(errors, pa.string()),
        },
        schema=schema,
    )
