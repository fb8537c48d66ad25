"""Streaming gather of the embedding shards = the in-memory reference; error rows skipped."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rare_objects.io import schemas
from rare_objects.io.embeddings import EMBEDDING, ERROR, _as_paths, read_embedding_matrix


def read_embedding_matrix_in_memory(
    paths,
    columns=("object_id",),
) -> tuple[pd.DataFrame, np.ndarray]:
    """The reference the streaming reader is compared with: whole tables, ``np.stack``."""
    paths = _as_paths(paths)
    columns = list(columns)
    frames, blocks = [], []
    for path in paths:
        table = pq.read_table(path)
        embedding = table.column(EMBEDDING).to_pylist()
        error = (
            table.column(ERROR).to_pylist()
            if ERROR in table.schema.names
            else [None] * len(embedding)
        )
        keep = [e is not None and err is None for e, err in zip(embedding, error)]
        frames.append(table.select(columns).to_pandas()[keep])
        vectors = [np.asarray(e, dtype=np.float32) for e, k in zip(embedding, keep) if k]
        if vectors:
            blocks.append(np.stack(vectors))
    dim = None
    if paths:
        dim = pq.read_schema(paths[0]).field(EMBEDDING).type.list_size
    X = np.concatenate(blocks) if blocks else np.empty((0, dim or 0), dtype=np.float32)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return frame.reset_index(drop=True), np.ascontiguousarray(X, dtype=np.float32)


DIM = 12


def write_shard(path, ids, vectors, errors, row_group_size=None):
    """vectors[i] is None where errors[i] is set."""
    emb = pa.array(
        [None if v is None else v.tolist() for v in vectors], type=pa.list_(pa.float32(), DIM)
    )
    table = pa.table(
        {"object_id": ids, "embedding": emb, "error": pa.array(errors, type=pa.string())}
    )
    if row_group_size is None:
        schemas.write_table(table, schemas.embeddings_schema(DIM), path)
    else:
        pq.write_table(
            table.cast(schemas.embeddings_schema(DIM)), path, row_group_size=row_group_size
        )


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    paths, expected_ids = [], []
    sizes = [37, 0, 100, 5]
    for s, n in enumerate(sizes):
        ids = [f"s{s}-{i}" for i in range(n)]
        vectors = list(rng.standard_normal((n, DIM)).astype(np.float32))
        errors = [None] * n
        for i in range(n):
            if (i + s) % 9 == 4:
                vectors[i], errors[i] = None, "image changed since detection"
            else:
                expected_ids.append(ids[i])
        path = tmp_path / f"shard{s}.parquet"
        write_shard(path, ids, vectors, errors, row_group_size=16 if s == 2 else None)
        paths.append(path)
    return paths, expected_ids


@pytest.mark.parametrize("batch_size", [7, 65536])
def test_streaming_equals_in_memory(shards, batch_size):
    paths, expected_ids = shards
    frame, X = read_embedding_matrix(paths, batch_size=batch_size)
    ref_frame, ref_X = read_embedding_matrix_in_memory(paths)
    assert X.dtype == np.float32 and X.flags.c_contiguous and X.shape == (len(expected_ids), DIM)
    np.testing.assert_array_equal(X, ref_X)
    assert frame["object_id"].tolist() == ref_frame["object_id"].tolist() == expected_ids
    assert list(frame.index) == list(range(len(frame)))


def test_rows_match_their_vectors(shards):
    paths, _ = shards
    frame, X = read_embedding_matrix(paths, batch_size=10)
    tables = {}
    for p in paths:
        t = pq.read_table(p).to_pandas()
        tables.update(dict(zip(t["object_id"], t["embedding"])))
    for oid, row in zip(frame["object_id"], X):
        np.testing.assert_array_equal(row, np.asarray(tables[oid], dtype=np.float32))


def test_extra_columns_and_no_columns(shards):
    paths, expected_ids = shards
    frame, X = read_embedding_matrix(paths, columns=("object_id", "error"))
    assert list(frame.columns) == ["object_id", "error"] and frame["error"].isna().all()
    frame, X2 = read_embedding_matrix(paths, columns=())
    assert len(frame) == len(expected_ids) and frame.shape[1] == 0
    np.testing.assert_array_equal(X, X2)


def test_single_path_empty_and_all_errors(tmp_path):
    frame, X = read_embedding_matrix([], dim=DIM)
    assert X.shape == (0, DIM) and list(frame.columns) == ["object_id"]
    path = tmp_path / "errors.parquet"
    write_shard(path, ["a", "b"], [None, None], ["x", "y"])
    frame, X = read_embedding_matrix(str(path))
    assert X.shape == (0, DIM) and frame["object_id"].tolist() == []


def test_dimension_mismatch_raises(tmp_path):
    a = tmp_path / "a.parquet"
    write_shard(a, ["a"], [np.ones(DIM, np.float32)], [None])
    b = tmp_path / "b.parquet"
    table = pa.table(
        {
            "object_id": ["b"],
            "embedding": pa.array([[1.0] * 4], type=pa.list_(pa.float32(), 4)),
            "error": pa.array([None], pa.string()),
        }
    )
    pq.write_table(table, b)
    with pytest.raises(ValueError, match="dimension"):
        read_embedding_matrix([a, b])


def test_contract_breaking_row_is_skipped(tmp_path):
    """An embedding that is null without an error, or an error with an embedding: both skipped."""
    path = tmp_path / "odd.parquet"
    vectors = [
        np.full(DIM, 1, np.float32),
        None,
        np.full(DIM, 3, np.float32),
        np.full(DIM, 4, np.float32),
    ]
    write_shard(path, ["a", "b", "c", "d"], vectors, [None, None, "bad", None])
    frame, X = read_embedding_matrix(path)
    assert frame["object_id"].tolist() == ["a", "d"]
    np.testing.assert_array_equal(X[:, 0], [1, 4])
    ref_frame, ref_X = read_embedding_matrix_in_memory(path)
    np.testing.assert_array_equal(X, ref_X)
    assert ref_frame["object_id"].tolist() == ["a", "d"]
