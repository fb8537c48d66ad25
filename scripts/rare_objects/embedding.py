"""open_clip image embeddings of every detected object (the original's CLIPFeatureExtractor).

Each image is decoded once; its crops are cut and preprocessed in loader
threads while the model encodes the previous batch.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from . import images
from .logs import Progress
from .schemas import embeddings_schema

log = logging.getLogger("rare_objects.embed")


def embed_objects(
    detections: pd.DataFrame,
    clip,
    batch_size: int = 64,
    open_image=images.open_rgb,
    loader_workers: int = 2,
) -> pa.Table:
    """Embeddings of every row of ``detections`` as a table of ``embeddings_schema(clip.dim)``.

    An object whose image can no longer be read gets a null embedding and the
    reason in ``error``; every detection keeps its row.
    """
    import torch

    by_image = list(detections.groupby("image_path", sort=False))
    progress = Progress(log, "embed objects", len(detections))

    def load(path):
        image = open_image(path)
        objects = by_image_rows[path]
        boxes = objects[["x1", "y1", "x2", "y2"]].itertuples(index=False)
        return torch.from_numpy(np.stack([clip.pixels(images.crop(image, box)) for box in boxes]))

    by_image_rows = {path: rows for path, rows in by_image}
    ids: list[str] = []
    vectors: list[np.ndarray] = []
    errors: list[str | None] = []
    batch_ids: list[str] = []
    batch_tensors: list = []
    batch_rows = 0

    def flush():
        nonlocal batch_rows
        if not batch_tensors:
            return
        encoded = clip.encode_pixels(torch.cat(batch_tensors))
        ids.extend(batch_ids)
        vectors.extend(encoded)
        errors.extend([None] * len(batch_ids))
        progress.update(len(batch_ids))
        batch_ids.clear()
        batch_tensors.clear()
        batch_rows = 0

    for _, path, loaded in images.iter_images_prefetched([p for p, _ in by_image], load, workers=loader_workers):
        rows = by_image_rows[path]
        if isinstance(loaded, Exception):
            log.warning("cannot embed the %d objects of %s", len(rows), loaded)
            flush()  # keep output order = input order
            ids.extend(rows["object_id"])
            vectors.extend([None] * len(rows))
            errors.extend([f"{getattr(loaded, 'reason', type(loaded).__name__)}: {loaded}"] * len(rows))
            progress.update(len(rows))
            continue
        batch_ids.extend(rows["object_id"])
        batch_tensors.append(loaded)
        batch_rows += len(rows)
        if batch_rows >= batch_size:
            flush()
    flush()
    schema = embeddings_schema(clip.dim)
    embedding = pa.array(
        [None if v is None else np.asarray(v, dtype=np.float32) for v in vectors], type=schema.field("embedding").type
    ) if vectors else pa.array([], type=schema.field("embedding").type)
    return pa.table({"object_id": pa.array(ids, pa.string()), "embedding": embedding, "error": pa.array(errors, pa.string())})
