"""Streaming gather of the embedding shards = the in-memory reference; error rows skipped;
float16 storage (embedder.storage) read back as written; the blocked reader = the whole matrix."""

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


# --- embedder.storage: float16 shards, the float16 matrix, the blocked reader ---


def _blocks(rng, n, dim=DIM):
    """embed_objects' blocks (ids, float32 vectors or None, error) with an unreadable image."""
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    half = n // 2
    return vectors, [
        ([f"o{i}" for i in range(half)], vectors[:half], None),
        (["gone-0", "gone-1"], None, "unreadable: image changed since detection"),
        ([f"o{i}" for i in range(half, n)], vectors[half:], None),
    ]


def _write_stage_shard(path, blocks, storage, dim=DIM):
    """A shard as scripts/embed.py writes it."""
    from rare_objects.stages.embedding import _embedding_table

    schemas.write_embeddings(
        _embedding_table(blocks, dim, storage), path, model="demo-clip", dim=dim, storage=storage
    )


def test_float16_storage_reads_back_what_was_written(tmp_path):
    from rare_objects.io.embeddings import stored_dtype

    vectors, blocks = _blocks(np.random.default_rng(1), 50)
    path = tmp_path / "f16.parquet"
    _write_stage_shard(path, blocks, "float16")
    schema = pq.read_schema(path)
    assert schema.field(EMBEDDING).type == pa.list_(pa.float16(), DIM)
    assert schema.metadata[b"embedding_dtype"] == b"float16"
    assert schema.metadata[b"dim"] == str(DIM).encode()
    assert stored_dtype(path) == np.float16
    # plain values, no dictionary (decoding one made reads about 5 times slower)
    chunks = pq.ParquetFile(path).metadata.row_group(0)
    (column,) = [
        chunks.column(i)
        for i in range(chunks.num_columns)
        if "embedding" in chunks.column(i).path_in_schema
    ]
    assert not any("DICTIONARY" in encoding for encoding in column.encodings)
    stored = vectors.astype(np.float16)  # numpy's rounding to nearest: what the stage stores
    frame, X16 = read_embedding_matrix(path, dtype=np.float16)
    assert frame["object_id"].tolist() == [f"o{i}" for i in range(50)]
    assert X16.dtype == np.float16 and X16.flags.c_contiguous
    assert X16.tobytes() == stored.tobytes()  # bit for bit
    _, X32 = read_embedding_matrix(path)
    assert X32.dtype == np.float32
    np.testing.assert_array_equal(X32, stored.astype(np.float32))  # widening is exact
    # the same values as the float32 shard read as float16
    f32 = tmp_path / "f32.parquet"
    _write_stage_shard(f32, blocks, "float32")
    assert read_embedding_matrix(f32, dtype="float16")[1].tobytes() == stored.tobytes()
    assert stored_dtype(f32) == np.float32


def test_float32_storage_is_the_file_it_always_was(tmp_path):
    """The default writes the bytes the embed stage wrote before there was a choice: the
    table built from a float32 buffer, list<float32>, metadata embedding_model and dim."""
    vectors, blocks = _blocks(np.random.default_rng(2), 40)
    new = tmp_path / "new.parquet"
    _write_stage_shard(new, blocks, "float32")
    ids = [i for block_ids, _, _ in blocks for i in block_ids]
    values = np.zeros((len(ids), DIM), dtype=np.float32)
    valid = np.array([not i.startswith("gone") for i in ids])
    values[valid] = vectors
    errors = [None if v else blocks[1][2] for v in valid]
    legacy = pa.table(
        {
            "object_id": pa.array(ids, pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(values.ravel()), DIM, mask=pa.array(~valid)
            ),
            "error": pa.array(errors, pa.string()),
        },
        schema=pa.schema(
            [
                ("object_id", pa.string()),
                ("embedding", pa.list_(pa.float32(), DIM)),
                ("error", pa.string()),
            ]
        ),
    )
    old = tmp_path / "old.parquet"
    schemas.write_table(legacy, legacy.schema, old, {"embedding_model": "demo-clip", "dim": DIM})
    assert schemas.embeddings_schema(DIM) == legacy.schema
    assert new.read_bytes() == old.read_bytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("block_rows", [1, 7, 16, 65536])
def test_blocked_reader_equals_the_whole_matrix(shards, block_rows, dtype):
    from rare_objects.io.embeddings import iter_embedding_blocks

    paths, expected_ids = shards
    whole_frame, whole = read_embedding_matrix(paths, columns=("object_id", "error"), dtype=dtype)
    frames, blocks = [], []
    for frame, X in iter_embedding_blocks(
        paths, columns=("object_id", "error"), block_rows=block_rows, dtype=dtype
    ):
        assert 0 < len(X) <= block_rows and len(frame) == len(X)
        assert X.dtype == dtype and X.flags.c_contiguous and X.flags.owndata
        assert list(frame.index) == list(range(len(frame)))
        frames.append(frame)
        blocks.append(X)
    assert np.concatenate(blocks).tobytes() == whole.tobytes()
    joined = pd.concat(frames, ignore_index=True)
    pd.testing.assert_frame_equal(joined, whole_frame)
    assert joined["object_id"].tolist() == expected_ids
    # float16 is the float32 matrix rounded to nearest
    if dtype == np.float16:
        _, X32 = read_embedding_matrix(paths)
        assert whole.tobytes() == X32.astype(np.float16).tobytes()


def test_blocked_reader_without_columns_and_without_paths(shards):
    from rare_objects.io.embeddings import iter_embedding_blocks

    paths, expected_ids = shards
    sizes = [len(X) for frame, X in iter_embedding_blocks(paths, columns=(), block_rows=30)]
    assert sum(sizes) == len(expected_ids)
    assert list(iter_embedding_blocks([])) == []
    with pytest.raises(ValueError, match="block_rows"):
        next(iter_embedding_blocks(paths, block_rows=0))


def test_mixed_float16_and_float32_shards_are_read_each_as_stored(tmp_path):
    """Shards of both storages read together: each row is its shard's stored value."""
    from rare_objects.io.embeddings import iter_embedding_blocks, read_embeddings_of

    rng = np.random.default_rng(3)
    paths, expected, rounded = [], [], []
    for s, storage in enumerate(["float16", "float32", "float16"]):
        vectors, blocks = _blocks(rng, 20 + s)
        blocks = [([f"s{s}-{i}" for i in ids], v, e) for ids, v, e in blocks]
        path = tmp_path / f"shard{s}.parquet"
        _write_stage_shard(path, blocks, storage)
        paths.append(path)
        expected.append(vectors.astype(np.dtype(storage)).astype(np.float32))
        rounded.append(vectors.astype(np.float16))
    frame, X = read_embedding_matrix(paths)
    np.testing.assert_array_equal(X, np.concatenate(expected))
    assert read_embedding_matrix(paths, dtype=np.float16)[1].tobytes() == (
        np.concatenate(rounded).tobytes()
    )
    blocked = np.concatenate([b for _, b in iter_embedding_blocks(paths, block_rows=8)])
    np.testing.assert_array_equal(blocked, X)
    # the report's map reads them too, float32
    wanted = frame["object_id"].tolist()[::3]
    ids, Y = read_embeddings_of(paths, wanted, batch_size=5)
    assert ids.tolist() == wanted and Y.dtype == np.float32
    np.testing.assert_array_equal(Y, X[::3])
    # in the order asked, a repeated id once, an unknown id left out; float16 as asked
    asked = wanted[::-1] + [wanted[0], "not-there"]
    ids, Z = read_embeddings_of(paths, asked, batch_size=7, dtype=np.float16)
    assert ids.tolist() == wanted[::-1] and Z.dtype == np.float16
    assert Z.tobytes() == X[::3][::-1].astype(np.float16).tobytes()


def test_the_outliers_stage_reads_float16_shards_as_float16(tmp_path):
    """read_objects keeps float16 storage float16 (half the memory), float32 otherwise."""
    from rare_objects.io.embeddings import stored_dtype_of
    from rare_objects.stages.outliers import read_objects

    rng = np.random.default_rng(4)
    detections = tmp_path / "detections.parquet"
    paths = {}
    for storage in ("float16", "float32"):
        vectors, blocks = _blocks(rng, 10)
        paths[storage] = tmp_path / f"{storage}.parquet"
        _write_stage_shard(paths[storage], blocks, storage)
    ids = [f"o{i}" for i in range(10)]
    pd.DataFrame({"object_id": ids, "class_name": ["car"] * 10}).to_parquet(detections)
    object_ids, X, names = read_objects([paths["float16"]], [detections])
    assert X.dtype == np.float16 and stored_dtype_of([paths["float16"]]) == np.float16
    assert object_ids.tolist() == ids and names.tolist() == ["car"] * 10
    assert X.tobytes() == read_embedding_matrix(paths["float16"], dtype=np.float16)[1].tobytes()
    for mixed in ([paths["float32"]], [paths["float16"], paths["float32"]]):
        assert read_objects(mixed, [detections])[1].dtype == np.float32
        assert stored_dtype_of(mixed) == np.float32


def test_other_embedding_types_and_dtypes_are_refused(tmp_path, shards):
    path = tmp_path / "f64.parquet"
    table = pa.table(
        {
            "object_id": ["a"],
            "embedding": pa.array([[1.0] * DIM], type=pa.list_(pa.float64(), DIM)),
            "error": pa.array([None], pa.string()),
        }
    )
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="expected fixed_size_list<float32> or"):
        read_embedding_matrix(path)
    with pytest.raises(ValueError, match="float32 or float16, not float64"):
        read_embedding_matrix(shards[0], dtype=np.float64)
    with pytest.raises(ValueError, match="embedding storage 'bfloat16'"):
        schemas.embeddings_schema(DIM, "bfloat16")
