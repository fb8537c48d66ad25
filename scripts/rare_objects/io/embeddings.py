"""Read the per-shard embedding tables into one matrix, or block by block, streaming.

At nuScenes scale the embeddings are tens of millions of rows; building a
Python list of vectors (or a pyarrow table and then ``np.stack``) holds two or
three copies of them at once. :func:`read_embedding_matrix` counts the valid
rows first (a pass over the small ``error`` column only), allocates the
matrix once, and fills it from record batches, so the peak is the matrix plus
one batch. A stage that does not need every row at once reads
:func:`iter_embedding_blocks` instead: the same rows in the same order, at most
``block_rows`` at a time.

Shards store float32 or float16 values (``embedder.storage``,
:func:`rare_objects.io.schemas.embeddings_schema`); both readers return the
``dtype`` asked for, float32 by default: a float16 value widens exactly, a
float32 one read as float16 is rounded to nearest, as the embed stage rounds it
when it stores float16. Shards of both kinds may be read together (a run that
changed embedder.storage reruns every embed job, so a mixture is only met
outside the workflow); each row is what its shard stores, in ``dtype``.
At 10,000,000 x 512 the float32 matrix is 20 GB, the float16 one 10 GB.

A row is valid when its ``embedding`` is not null and its ``error`` is null
(the contract of :func:`rare_objects.io.schemas.embeddings_schema`); other rows
are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

EMBEDDING = "embedding"
ERROR = "error"
# The value types a shard may store (embedder.storage) and the dtypes the readers return.
STORED_TYPES = (pa.float32(), pa.float16())
DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        return [os.fspath(paths)]
    return [os.fspath(p) for p in paths]


def _as_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in DTYPES:
        raise ValueError(f"embeddings are read as float32 or float16, not {dtype}")
    return dtype


def _embedding_dim(schema: pa.Schema, path: str) -> int:
    field = schema.field(EMBEDDING)
    if not pa.types.is_fixed_size_list(field.type) or field.type.value_type not in STORED_TYPES:
        raise ValueError(
            f"{path}: column 'embedding' is {field.type},"
            " expected fixed_size_list<float32> or fixed_size_list<float16>"
        )
    return field.type.list_size


def stored_dtype(path: str | os.PathLike) -> np.dtype:
    """The dtype the embeddings of the shard ``path`` are stored in (float32 or float16)."""
    path = os.fspath(path)
    schema = pq.read_schema(path)
    _embedding_dim(schema, path)
    return np.dtype(schema.field(EMBEDDING).type.value_type.to_pandas_dtype())


def stored_dtype_of(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> np.dtype:
    """float16 when every shard of ``paths`` stores float16 (reading them so is exact and
    takes half the memory), else float32."""
    paths = _as_paths(paths)
    if paths and all(stored_dtype(path) == np.float16 for path in paths):
        return np.dtype(np.float16)
    return np.dtype(np.float32)


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


def _batch_vectors(column: pa.Array, dim: int, dtype=np.float32) -> np.ndarray:
    """(len, dim) ``dtype`` array of a fixed-size-list column (null rows hold filler): a view
    of the batch's values when they are stored in ``dtype``, else a converted copy."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.values.slice(column.offset * dim, len(column) * dim)
    if values.type not in STORED_TYPES:
        values = values.cast(pa.float32())
    vectors = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return vectors.reshape(len(column), dim)


def _open(
    paths: list[str], columns: list[str], dim: int | None
) -> tuple[list[ds.Dataset], int | None]:
    """The shards' datasets, their common ``dim`` checked, and ``columns`` present in each."""
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
    return datasets, dim


def _valid_batches(
    paths: list[str], columns: list[str], batch_size: int, dim: int, dtype: np.dtype
) -> Iterator[tuple[pa.RecordBatch | None, np.ndarray]]:
    """``(kept, vectors)`` for each record batch with valid rows, in file and row order:
    ``columns`` of its valid rows (None without columns) and their ``(m, dim)`` vectors
    in ``dtype`` (m <= batch_size; a view into the batch where no conversion was needed)."""
    read_columns = list(
        dict.fromkeys([*columns, EMBEDDING, *([ERROR] if ERROR not in columns else [])])
    )
    for path in paths:
        parquet = pq.ParquetFile(path)
        names = [c for c in read_columns if c in parquet.schema_arrow.names]
        # One file at a time, batches in file order (ordered, bounded memory).
        for batch in parquet.iter_batches(batch_size=batch_size, columns=names):
            if batch.num_rows == 0:
                continue
            mask = _valid_mask(batch)
            m = int(mask.sum())
            if m == 0:
                continue
            vectors = _batch_vectors(batch.column(EMBEDDING), dim, dtype)
            kept = batch.select(columns) if columns else None
            if m != batch.num_rows:
                vectors = vectors[mask]
                if kept is not None:
                    kept = kept.filter(pa.array(mask))
            yield kept, vectors


def _arrow_string_dtype(arrow_type: pa.DataType):
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return None


def _empty_frame(datasets: list[ds.Dataset], columns: list[str]) -> pd.DataFrame:
    return pa.schema([datasets[0].schema.field(c) for c in columns]).empty_table().to_pandas()


def iter_embedding_blocks(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    columns: Sequence[str] = ("object_id",),
    block_rows: int = 65536,
    dtype=np.float32,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """The valid embeddings of ``paths`` block by block: ``(frame, X)`` of at most
    ``block_rows`` rows each, ``frame`` holding ``columns`` (index 0..m-1) and ``X`` a
    C-contiguous ``(m, dim)`` array of ``dtype`` (float32 or float16).

    The blocks, concatenated, are :func:`read_embedding_matrix`'s ``(frame, X)``: the same
    rows in the same order. Memory is one block (plus one record batch of the file).
    """
    if block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    paths = _as_paths(paths)
    columns = list(columns)
    dtype = _as_dtype(dtype)
    if not paths:
        return
    datasets, dim = _open(paths, columns, None)
    for kept, vectors in _valid_batches(paths, columns, block_rows, dim, dtype):
        if kept is not None:
            frame = kept.to_pandas()
        else:
            frame = pd.DataFrame(index=pd.RangeIndex(len(vectors)))
        # the batch's own buffer when no conversion was needed: copy, so a block
        # kept by the caller does not hold the whole record batch
        yield frame, np.array(vectors, dtype=dtype, order="C", copy=True)


def read_embedding_matrix(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    columns: Sequence[str] = ("object_id",),
    batch_size: int = 65536,
    dim: int | None = None,
    dtype=np.float32,
    arrow_strings: bool = False,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Gather the valid embeddings of ``paths`` (in order) into one matrix.

    Returns ``(frame, X)``: ``frame`` holds ``columns`` for the valid rows
    (index 0..n-1) and ``X`` is a C-contiguous array of ``dtype`` (float32, the
    default, or float16: half the memory) of shape ``(n, dim)``; row ``i`` of
    both is the same object. Files are read in the given order and rows in file
    order; shards stored in float32 or float16 alike. ``dim`` is taken from the
    files' schema; pass it to get a ``(0, dim)`` matrix when ``paths`` is empty.
    With ``arrow_strings`` the string columns (the ids) stay Arrow strings
    (``pd.ArrowDtype``): no Python ``str`` object is made for them, less than half the
    memory of one per row for ids of 35 characters.
    """
    paths = _as_paths(paths)
    columns = list(columns)
    dtype = _as_dtype(dtype)
    if not paths:
        frame = pd.DataFrame({name: pd.Series(dtype=object) for name in columns})
        return frame, np.empty((0, dim or 0), dtype=dtype)

    datasets, dim = _open(paths, columns, dim)
    capacity = sum(_count_valid(dataset) for dataset in datasets)
    X = np.empty((capacity, dim), dtype=dtype)
    pieces: list[pa.Table] = []
    filled = 0
    for kept, vectors in _valid_batches(paths, columns, batch_size, dim, dtype):
        m = len(vectors)
        if filled + m > capacity:
            raise ValueError(f"more valid embeddings than counted ({filled + m} > {capacity})")
        X[filled : filled + m] = vectors
        if kept is not None:
            pieces.append(pa.Table.from_batches([kept]))
        filled += m
    if filled < capacity:
        # Only when a row has an embedding that is null while error is null
        # too (a writer breaking the contract): drop the unused tail.
        X = X[:filled].copy()
    if columns:
        mapper = _arrow_string_dtype if arrow_strings else None
        frame = (
            pa.concat_tables(pieces).to_pandas(types_mapper=mapper)
            if pieces
            else _empty_frame(datasets, columns).astype(
                {c: pd.ArrowDtype(pa.string()) for c in columns} if arrow_strings else {}
            )
        )
    else:
        frame = pd.DataFrame(index=pd.RangeIndex(filled))
    return frame.reset_index(drop=True), X


def read_embeddings_of(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    object_ids: Iterable[str],
    batch_size: int = 65536,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, X)``: the valid embeddings of ``object_ids`` found in ``paths``, in the order
    of ``object_ids`` (a repeated id once, an id without a valid embedding left out), as
    ``dtype`` (float32 or float16) whether the shards store float32 or float16.

    Reads the embeddings one block at a time
    (:func:`rare_objects.io.embeddings.iter_embedding_blocks`) and copies the wanted rows
    straight into their place in ``X``, so memory is the wanted vectors plus one block: the
    stages that need a few of the embeddings (the map, the selection's candidates) hold
    those once, never all of them.
    """
    wanted = pd.Index(pd.unique(np.asarray(list(object_ids), dtype=object)))
    X: np.ndarray | None = None
    found = np.zeros(len(wanted), dtype=bool)
    for frame, block in iter_embedding_blocks(paths, block_rows=batch_size, dtype=dtype):
        where = wanted.get_indexer(frame["object_id"].to_numpy(dtype=object))
        keep = where >= 0
        if not keep.any():
            continue
        if X is None:
            X = np.empty((len(wanted), block.shape[1]), dtype=block.dtype)
        X[where[keep]] = block[keep]
        found[where[keep]] = True
    # The blocks' Arrow buffers are freed here, but pyarrow's allocator keeps the pages for
    # reuse (about 0.4 GiB after a read); the caller's next step needs them more.
    frame = block = None
    pa.default_memory_pool().release_unused()
    if X is None:
        return np.empty(0, dtype=object), np.empty((0, 0), dtype=_as_dtype(dtype))
    ids = wanted.to_numpy(dtype=object)
    if found.all():
        return ids, X
    return ids[found], X[found]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, float32 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
