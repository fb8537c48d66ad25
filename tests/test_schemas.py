"""Reading back tables written in parts (shards, caption partitions)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rare_objects.io import schemas


def _captions(ids, kind="vlm") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "object_id": ids,
            "caption_kind": kind,
            "description": [f"caption of {i}" for i in ids],
            "error": None,
            "backend": "none",
            "model": None,
        }
    )


def test_read_parts_is_the_parts_in_order_as_one_table(tmp_path):
    paths = []
    for part, ids in enumerate([["a", "b"], [], ["c"]]):
        paths.append(tmp_path / f"part_{part}.parquet")
        schemas.write_table(_captions(ids), schemas.CAPTIONS, paths[-1])
    table = schemas.read_parts(paths, ["object_id", "description"])
    assert list(table.columns) == ["object_id", "description"]
    assert table["object_id"].tolist() == ["a", "b", "c"]
    assert table.index.tolist() == [0, 1, 2]
    whole = schemas.read_parts([str(p) for p in paths])
    assert list(whole.columns) == schemas.CAPTIONS.names and len(whole) == 3
    one = schemas.read_parts(paths[0], ["object_id"])  # one path, not in a list
    assert one["object_id"].tolist() == ["a", "b"]
    # the same parts as one Arrow table, equal to the DataFrame
    arrow = schemas.read_parts_table(paths, ["object_id", "description"])
    assert arrow.column_names == ["object_id", "description"]
    pd.testing.assert_frame_equal(arrow.to_pandas(), table)
    assert schemas.read_parts_table(paths[0], ["object_id"])["object_id"].to_pylist() == ["a", "b"]


def test_the_outlier_stage_reads_each_embedded_objects_class(tmp_path):
    from rare_objects.stages.outliers import read_objects

    dim = 4
    embeddings = pd.DataFrame(
        {
            "object_id": ["o2", "o1", "bad", "o9"],
            "embedding": [np.full(dim, v, np.float32) for v in (0.5, 1.0, 0.0, 2.0)],
            "error": [None, None, "changed", None],
        }
    )
    embeddings.loc[2, "embedding"] = None
    schemas.write_table(embeddings, schemas.embeddings_schema(dim), tmp_path / "e.parquet")
    for shard, rows in {"s0": [("o1", "car")], "s1": [("o2", "bus"), ("o3", "cow")]}.items():
        pd.DataFrame(rows, columns=["object_id", "class_name"]).to_parquet(
            tmp_path / f"{shard}.parquet"
        )
    ids, X, classes = read_objects(
        [tmp_path / "e.parquet"], [tmp_path / "s0.parquet", tmp_path / "s1.parquet"]
    )
    assert ids.tolist() == ["o2", "o1", "o9"]  # the valid embeddings, in their order
    assert X.shape == (3, dim) and X.dtype == np.float32 and X[1, 0] == 1.0
    assert classes[:2].tolist() == ["bus", "car"] and pd.isna(classes[2])


def test_the_outlier_stage_holds_ids_as_arrow_strings_and_writes_the_same_table(tmp_path):
    import pyarrow as pa

    from rare_objects.stages.outliers import class_aware_outliers, read_objects

    dim, n = 8, 60
    rng = np.random.default_rng(3)
    ids = [f"obj-{i:03d}" for i in rng.permutation(n)]
    embeddings = pd.DataFrame(
        {
            "object_id": ids,
            "embedding": list(rng.normal(size=(n, dim)).astype(np.float32)),
            "error": None,
        }
    )
    schemas.write_table(embeddings, schemas.embeddings_schema(dim), tmp_path / "e.parquet")
    detections = tmp_path / "d.parquet"
    pd.DataFrame({"object_id": ids[::-1], "class_name": ["car", "bus"] * (n // 2)}).to_parquet(
        detections
    )
    object_ids, X, classes = read_objects([tmp_path / "e.parquet"], [detections])
    assert (
        isinstance(object_ids.dtype, pd.ArrowDtype)
        and object_ids.dtype.pyarrow_dtype == pa.string()
    )
    assert object_ids.tolist() == ids
    settings = {"detectors": ["lof"], "min_samples": 10, "lof": {}}
    from rare_objects.runtime import config

    settings = config.validate({"outliers": settings})["outliers"]
    result = class_aware_outliers(X, classes, settings, seed=0)
    schema = schemas.outliers_schema(["lof"])
    written = {}
    for kind, column in {"arrow": object_ids, "objects": np.asarray(ids, dtype=object)}.items():
        frame = result.copy()
        frame.insert(0, "object_id", column)
        schemas.write_table(frame, schema, tmp_path / f"{kind}.parquet")
        written[kind] = (tmp_path / f"{kind}.parquet").read_bytes()
    assert written["arrow"] == written["objects"]  # byte for byte: the ids' type leaves no trace
