"""The training-selection list: budget, mined samples, seeded fill, class counts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rare_objects.io import schemas
from rare_objects.stages import training_selection as ts

TARGETS = {"trailer": ["truck"]}
CLASSES = ["car", "truck", "person", "bicycle"]
SETTINGS = {"mined": ["final_outliers"], "budget_fraction": 0.25, "budget_count": None}


def write_tables(root, n_scenes=4, samples_per_scene=10, cameras=3, seed=0):
    """Image and detection shards (one per scene) shaped like nuScenes: each
    sample token has ``cameras`` images. Some images have no objects, one
    sample's images are all rejected; outliers and final outliers planted on a
    few objects. Returns (image paths, detection paths, outliers, concepts, truth)."""
    rng = np.random.default_rng(seed)
    image_paths, detection_paths, objects = [], [], []
    for scene in range(n_scenes):
        images, detections = [], []
        for s in range(samples_per_scene):
            token = f"sample-{scene}-{s:02d}"
            for c in range(cameras):
                image_id = f"{scene}{s:02d}{c}"
                path = f"/data/scene-{scene}/CAM{c}/{token}.jpg"
                rejected = scene == 0 and s == 0
                n = 0 if rejected else int(rng.integers(0, 4))
                images.append(
                    {
                        "image_id": image_id,
                        "shard": f"scene-{scene}",
                        "image_path": path,
                        "sample_token": token,
                        "camera": f"CAM{c}",
                        "image_width": None if rejected else 1600,
                        "image_height": None if rejected else 900,
                        "n_objects": n,
                        "status": "rejected" if rejected else "ok",
                    }
                )
                for rank in range(n):
                    class_id = int(rng.integers(0, len(CLASSES)))
                    detections.append(
                        {
                            "object_id": f"{image_id}-{rank:02d}",
                            "image_id": image_id,
                            "shard": f"scene-{scene}",
                            "image_path": path,
                            "sample_token": token,
                            "camera": f"CAM{c}",
                            "rank": rank,
                            "class_id": class_id,
                            "class_name": CLASSES[class_id],
                            "confidence": 0.5,
                            "x1": 0.0,
                            "y1": 0.0,
                            "x2": 10.0,
                            "y2": 10.0,
                            "image_width": 1600,
                            "image_height": 900,
                            "crop_width": 10,
                            "crop_height": 10,
                        }
                    )
        for rows, schema, kind, paths in (
            (images, schemas.IMAGES, "images", image_paths),
            (detections, schemas.DETECTIONS, "detections", detection_paths),
        ):
            path = root / kind / f"scene-{scene}.parquet"
            table = pa.Table.from_pandas(
                pd.DataFrame(rows, columns=schema.names), preserve_index=False
            )
            schemas.write_table(table if rows else schema.empty_table(), schema, path)
            paths.append(path)
        objects.extend(detections)
    objects = pd.DataFrame(objects)
    is_outlier = rng.random(len(objects)) < 0.15
    outliers = pd.DataFrame({"object_id": objects["object_id"], "is_outlier": is_outlier})
    outliers.to_parquet(root / "outliers.parquet")
    captioned = objects["object_id"][is_outlier]
    final = np.zeros(len(captioned), dtype=bool)
    final[:4] = True
    pd.DataFrame({"object_id": captioned, "is_final_outlier": final}).to_parquet(
        root / "concepts.parquet"
    )
    truth = objects.assign(
        is_outlier=is_outlier, is_final_outlier=objects["object_id"].isin(set(captioned[final]))
    )
    return image_paths, detection_paths, root / "outliers.parquet", root / "concepts.parquet", truth


@pytest.fixture
def tables(tmp_path):
    return write_tables(tmp_path / "tables")


def select(tables, settings=SETTINGS, seed=7, kind="nuscenes"):
    images, detections, outliers, concepts, _ = tables
    return ts.training_selection(
        images, detections, outliers, concepts, kind, settings, TARGETS, seed
    )


def test_budget_is_honoured_and_every_mined_sample_is_in(tables):
    truth = tables[-1]
    pool = 4 * 10 - 1  # the sample whose images were all rejected is not in the pool
    for settings, budget in [(SETTINGS, pool // 4), ({**SETTINGS, "budget_count": 17}, 17)]:
        table, summary = select(tables, settings)
        mined = set(truth.loc[truth["is_final_outlier"], "sample_token"])
        assert 0 < len(mined) < budget
        assert len(table) == summary["selected_samples"] == budget == summary["budget"]
        assert summary["total_samples"] == pool and not summary["over_budget"]
        assert set(table.loc[table["reason"] == "mined", "sample"]) == mined
        assert mined <= set(table["sample"])
        assert table["sample"].is_unique
        fill = table[table["reason"] == "random_fill"]
        assert len(fill) == budget - len(mined) == summary["random_samples"]
        assert fill["mined_by"].isna().all() and (fill["mined_objects"] == 0).all()
        assert "sample-0-00" not in set(table["sample"])


def test_mined_kinds_outliers_and_targets(tables):
    truth = tables[-1]
    settings = {"mined": ["outliers", "targets"], "budget_fraction": 1.0, "budget_count": None}
    table, summary = select(tables, settings)
    by_sample = table.set_index("sample")
    outlier_samples = set(truth.loc[truth["is_outlier"], "sample_token"])
    target_samples = set(truth.loc[truth["class_name"] == "truck", "sample_token"])
    assert set(by_sample.index[by_sample["reason"] == "mined"]) == outlier_samples | target_samples
    for sample in outlier_samples & target_samples:
        assert by_sample.loc[sample, "mined_by"] == "outliers,targets"
    mined_objects = (
        truth[truth["is_outlier"] | (truth["class_name"] == "truck")].groupby("sample_token").size()
    )
    assert by_sample.loc[mined_objects.index, "mined_objects"].tolist() == mined_objects.tolist()
    assert len(table) == summary["total_samples"]  # a budget of 100 % takes the whole pool


def test_mined_samples_over_the_budget_are_all_kept_and_flagged(tables, caplog):
    truth = tables[-1]
    mined = set(truth.loc[truth["is_outlier"], "sample_token"])
    with caplog.at_level("WARNING"):
        table, summary = select(
            tables, {"mined": ["outliers"], "budget_fraction": 0.1, "budget_count": None}
        )
    assert summary["over_budget"] and summary["budget"] < len(mined)
    assert set(table["sample"]) == mined and (table["reason"] == "mined").all()
    assert summary["random_samples"] == 0
    assert "exceed the budget" in caplog.text


def test_the_same_seed_gives_byte_identical_files_and_another_seed_another_fill(tables, tmp_path):
    files = []
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        table, summary = select(tables, seed=seed)
        paths = [tmp_path / run / name for name in ("list.parquet", "list.csv", "summary.json")]
        ts.write_outputs(table, summary, *paths)
        files.append([p.read_bytes() for p in paths])
    assert files[0] == files[1]
    assert files[0][0] != files[2][0]
    again = pd.read_parquet(tmp_path / "a" / "list.parquet")
    assert (
        pq.read_schema(tmp_path / "a" / "list.parquet")
        .remove_metadata()
        .equals(schemas.TRAINING_SELECTION)
    )
    csv = pd.read_csv(tmp_path / "a" / "list.csv")
    assert csv["sample"].tolist() == again["sample"].tolist()


def test_class_counts_in_the_selection_against_the_whole_set(tables):
    truth = tables[-1]
    table, summary = select(tables)
    chosen = truth[truth["sample_token"].isin(set(table["sample"]))]
    expected = {
        name: {
            "selection": int((chosen["class_name"] == name).sum()),
            "all": int((truth["class_name"] == name).sum()),
        }
        for name in sorted(set(truth["class_name"]))
    }
    assert summary["class_counts"] == expected
    assert all(0 < c["selection"] < c["all"] for c in expected.values())
    json.dumps(summary)  # plain JSON types only


def test_a_folder_input_selects_image_paths(tables):
    truth = tables[-1]
    table, summary = select(tables, {**SETTINGS, "budget_count": 5}, kind="folder")
    assert summary["sample"] == "image_path"
    assert set(table.loc[table["reason"] == "mined", "sample"]) == set(
        truth.loc[truth["is_final_outlier"], "image_path"]
    )
    assert table["sample"].str.endswith(".jpg").all() and (table["n_images"] == 1).all()


def test_unknown_mined_kind_is_refused(tables):
    with pytest.raises(ValueError, match="not understood"):
        select(tables, {**SETTINGS, "mined": ["rare"]})
