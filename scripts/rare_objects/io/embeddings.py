"""Read the per-shard embedding tables into one float32 matrix, streaming.

At nuScenes scale the embeddings are tens of millions of rows; building a
Python list of vectors (or a pyarrow table and then ``np.stack``) holds two or
three copies of them at once. :func:`read_embedding_matrix` counts the valid
rows first (a pass over the small ``error`` column only), allocates the
matrix once, and fills it from record batches, so the peak is the matrix plus
one batch.

A row is valid when its ``embedding`` is not null and its ``error`` is null
(the contract of :func:`rare_objects.io.schemas.embeddings_schema`); other rows
are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

EMBEDDING = "embedding"
ERROR = "error"


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def _embedding_dim(schema: pa.Schema, path: str) -> int:
    field = schema.field(EMBEDDING)
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(
            f"{path}: column 'embedding' is {field.type}, expected fixed_size_list<float32>"
        )
    return field.type.list_size


def _valid_mask(batch: pa.RecordBatch) -> np.ndarray:
    """Rows with an embedding and no error, as a numpy bool array."""
    valid = pc.is_valid(batch.column(EMBEDDING))
    if ERROR in batch.schema.names:
        valid = pc.and_(valid, pc.is_null(batch.column(ERROR)))
    return valid.to_numpy(zero_copy_only=False)


def _count_valid(dataset: ds.Dataset) -> int:
    """Upper bound on the valid rows: rows whose error is null (reads only that column)."""
    if ERROR not in dataset.schema.names:
        return dataset.count_rows()
    return dataset.count_rows(filter=ds.field(ERROR).is_null())


def _batch_vectors(column: pa.Array, dim: int) -> np.ndarray:
    """(len, dim) float32 view of a fixed-size-list column (null rows hold filler)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.values.slice(column.offset * dim, len(column) * dim)
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    return values.to_numpy(zero_copy_only=False).reshape(len(column), dim)


def read_embedding_matrix(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    columns: Sequence[str] = ("object_id",),
    batch_size: int = 65536,
    dim: int | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Gather the valid embeddings of ``paths`` (in order) into one matrix.

    Returns ``(frame, X)``: ``frame`` holds ``columns`` for the valid rows
    (index 0..n-1) and ``X`` is a C-contiguous float32 array of shape
    ``(n, dim)``; row ``i`` of both is the same object. Files are read in the
    given order and rows in file order. ``dim`` is taken from the files'
    schema; pass it to get a ``(0, dim)`` matrix when ``paths`` is empty.
    """
    paths = _as_paths(paths)
    columns = list(columns)
    if not paths:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
        return frame, np.empty((0, dim or 0), dtype=np.float32)

    datasets = [ds.dataset(path, format="parquet") for path in paths]
    for path, dataset in zip(paths, datasets):
        file_dim = _embedding_dim(dataset.schema, path)
        if dim is None:
            dim = file_dim
        elif file_dim != dim:
            raise ValueError(f"{path}: embeddings have dimension {file_dim}, expected {dim}")
        missing = [c for c in columns if c not in dataset.schema.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")

    capacity = sum(_count_valid(dataset) for dataset in datasets)
    X = np.empty((capacity, dim), dtype=np.float32)
    read_columns = list(
        dict.fromkeys([*columns, EMBEDDING, *([ERROR] if ERROR not in columns else [])])
    )
    pieces: list[pa.Table] = []
    filled = 0
    for path, dataset in zip(paths, datasets):
        names = [c for c in read_columns if c in dataset.schema.names]
        # One file at a time, batches in file order (ordered, bounded memory).
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=names):
            if batch.num_rows == 0:
                continue
            mask = _valid_mask(batch)
            m = int(mask.sum())
            if m == 0:
                continue
            if filled + m > capacity:
                raise ValueError(
                    f"{path}: more valid embeddings than counted ({filled + m} > {capacity})"
                )
            vectors = _batch_vectors(batch.column(EMBEDDING), dim)
            if m == batch.num_rows:
                X[filled : filled + m] = vectors
            else:
                np.compress(mask, vectors, axis=0, out=X[filled : filled + m])
            if columns:
                kept = batch.select(columns)
                if m != batch.num_rows:
                    kept = kept.filter(pa.array(mask))
                pieces.append(pa.Table.from_batches([kept]))
            filled += m
    if filled < capacity:
        # Only when a row has an embedding that is null while error is null
        # too (a writer breaking the contract): drop the unused tail.
        X = X[:filled].copy()
    if columns:
        if pieces:
            table = pa.concat_tables(pieces)
        else:
            table = pa.schema([datasets[0].schema.field(c) for c in columns]).empty_table()
        frame = table.to_pandas()
    else:
        frame = pd.DataFrame(index=pd.RangeIndex(filled))
    return frame.reset_index(drop=True), X


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
