"""The streaming export (one detection shard at a time) against the in-memory one."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from rare_objects import export
from rare_objects.export import report_files
from rare_objects.io import schemas

TARGETS = {"trailer": ["truck"], "construction_vehicle": ["truck", "bus"]}
CLASSES = ["car", "truck", "bus", "person"]
SWITCHES = {
    "save_crops": True,
    "save_descriptions": True,
    "save_probability_plots": False,
    "keep_cropped_objects": False,
}


def write_inputs(root, n_shards=4, images_per_shard=5, seed=0):
    """Detection shards over real small JPEGs, and the gathered per-object tables.

    Three images in different folders (two in the first shard, one in the
    last) share a file name (their crops must get
    distinct names), some objects have no embedding (absent from the outlier
    table), and a few selected objects have captions and concepts.
    """
    rng = np.random.default_rng(seed)
    detection_paths, rows = [], []
    for s in range(n_shards):
        shard_rows = []
        for i in range(images_per_shard):
            folder = root / "images" / f"dir{s}_{i}"
            folder.mkdir(parents=True, exist_ok=True)
            shared_name = (s == 0 and i < 2) or (s == n_shards - 1 and i == images_per_shard - 1)
            name = "same.jpg" if shared_name else f"s{s}_i{i}.jpg"
            path = folder / name
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path)
            image_id = f"{s:02d}{i:02d}abcdef"
            for rank in range(6 if shared_name else int(rng.integers(0, 7))):
                x1, y1 = float(rng.uniform(0, 40)), float(rng.uniform(0, 30))
                class_id = int(rng.integers(0, len(CLASSES)))
                shard_rows.append(
                    {
                        "object_id": f"{image_id}-{rank:02d}",
                        "image_id": image_id,
                        "shard": f"shard{s}",
                        "image_path": str(path),
                        "sample_token": f"tok{s}{i}",
                        "camera": f"cam{s % 2}",
                        "rank": rank,
                        "class_id": class_id,
                        "class_name": CLASSES[class_id],
                        "confidence": float(rng.uniform(0.25, 1)),
                        "x1": x1,
                        "y1": y1,
                        "x2": x1 + 20,
                        "y2": y1 + 15,
                        "image_width": 64,
                        "image_height": 48,
                        "crop_width": 20,
                        "crop_height": 15,
                    }
                )
        table = pd.DataFrame(shard_rows, columns=schemas.DETECTIONS.names)
        path = root / "detections" / f"shard{s}.parquet"
        schemas.write_table(
            schemas.DETECTIONS.empty_table() if table.empty else _arrow(table),
            schemas.DETECTIONS,
            path,
        )
        detection_paths.append(path)
        rows.extend(shard_rows)
    objects = pd.DataFrame(rows)
    embedded = objects[rng.random(len(objects)) > 0.1]
    codes = rng.choice([0, 0, 0, 1, 2, 3], size=len(embedded))
    outliers = pd.DataFrame(
        {
            "object_id": embedded["object_id"],
            "class_name": embedded["class_name"],
            "global_score": rng.normal(-1.2, 0.2, len(embedded)),
            "class_score": rng.normal(-1.2, 0.2, len(embedded)),
            "global_outlier": codes & 1 > 0,
            "class_outlier": codes & 2 > 0,
            "outlier_code": codes,
            "is_outlier": codes > 0,
        }
    )
    picked = outliers[outliers["is_outlier"]].head(6)["object_id"]
    selection = pd.DataFrame(
        {
            "object_id": outliers["object_id"],
            "selected": outliers["object_id"].isin(picked),
            "reason": np.where(outliers["object_id"].isin(picked), "outlier", "not a candidate"),
        }
    )
    captions = pd.DataFrame(
        {
            "object_id": picked,
            "description": [f"a thing number {i}" for i in range(len(picked))],
            "error": None,
        }
    )
    concepts = pd.DataFrame(
        {
            "object_id": picked,
            "top_concept": ["trailer", "car", "crane", "car", "cone", "dog"][: len(picked)],
            "top_concept_is_common": [False, True, False, True, False, False][: len(picked)],
            "is_final_outlier": [True, False, True, False, True, True][: len(picked)],
            "concepts": [["trailer", "car"]] * len(picked),
            "probabilities": [np.array([0.7, 0.3], np.float32)] * len(picked),
        }
    )
    paths = {}
    for name, frame in (
        ("outliers", outliers),
        ("selection", selection),
        ("captions", captions),
        ("concepts", concepts),
    ):
        paths[name] = root / f"{name}.parquet"
        frame.to_parquet(paths[name])
    return detection_paths, paths


def _arrow(frame):
    import pyarrow as pa

    return pa.Table.from_pandas(frame, preserve_index=False)


def tree_options():
    return {
        "write_desc": lambda row, crop, path: path.write_text(
            report_files.format_desc(export.desc_record(row, crop)), encoding="utf-8"
        ),
    }


def in_memory_export(detection_paths, paths, out):
    """The reference: every shard concatenated, assembled and exported as one frame."""
    detections = pd.concat([pd.read_parquet(p) for p in detection_paths], ignore_index=True)
    frame = export.assemble(
        detections,
        pd.read_parquet(paths["outliers"]),
        TARGETS,
        pd.read_parquet(paths["selection"]),
        pd.read_parquet(paths["captions"]),
        pd.read_parquet(paths["concepts"]),
    )
    crop_paths = export.export_tree(
        frame, out, TARGETS, SWITCHES, max_inliers=7, seed=3, **tree_options()
    )
    export.write_json_array(
        export.result_records(frame, crop_paths), out / "detection_results.json"
    )
    for target in TARGETS:
        matching = frame[frame["target_matches"].map(lambda ts, t=target: t in ts)]
        export.write_json_array(
            export.result_records(matching, crop_paths), out / f"{target}_results.json"
        )
    images = pd.DataFrame({"n_objects": detections.groupby("image_id").size()})
    return frame, export.statistics(frame, images, pd.DataFrame({"reason": []}), TARGETS)


def streaming_export(detection_paths, paths, out):
    tables = export.read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    counts = export.export_shards(
        detection_paths,
        tables,
        TARGETS,
        out,
        out / "detection_results.json",
        [out / f"{t}_results.json" for t in TARGETS],
        SWITCHES,
        max_inliers=7,
        seed=3,
        **tree_options(),
    )
    return counts


def tree_contents(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("n_shards", [1, 4])
def test_streaming_export_writes_what_the_in_memory_export_writes(tmp_path, n_shards):
    detection_paths, paths = write_inputs(
        tmp_path / "in", n_shards=n_shards, images_per_shard=20 // n_shards
    )
    frame, expected_stats = in_memory_export(detection_paths, paths, tmp_path / "memory")
    counts = streaming_export(detection_paths, paths, tmp_path / "stream")
    n_images = len(frame["image_id"].unique())
    stats = counts.statistics(n_images, n_images, pd.DataFrame({"reason": []}), TARGETS)

    expected = tree_contents(tmp_path / "memory")
    streamed = tree_contents(tmp_path / "stream")
    assert sorted(streamed) == sorted(expected)
    streamed = {k: v.replace(b"/stream/", b"/memory/") for k, v in streamed.items()}
    assert streamed == expected
    assert stats == expected_stats
    # The comparison covers every kind of output: sampled inliers (fewer than all),
    # outliers, both target files, renamed clashing stems and description files.
    results = json.loads((tmp_path / "stream" / "detection_results.json").read_text())
    assert len(results) == len(frame) > 40
    crop_files = {f"{name}.jpg" for name in frame["crop_name"]}
    assert (
        len([p for p in (tmp_path / "stream" / "inliers").iterdir() if p.name in crop_files]) == 7
    )
    assert (~frame["is_outlier"]).sum() > 7 and frame["is_outlier"].sum() > 0
    assert any("__" in name for name in streamed)
    assert any(name.endswith("_desc.txt") for name in streamed)
    assert all(json.loads(expected[f"{t}_results.json"]) for t in TARGETS)


def test_streaming_export_leaves_no_results_file_when_a_shard_fails(tmp_path):
    detection_paths, paths = write_inputs(tmp_path / "in", n_shards=3)
    detection_paths[-1].write_bytes(b"not parquet")
    with pytest.raises(pa.ArrowInvalid):
        streaming_export(detection_paths, paths, tmp_path / "out")
    assert not (tmp_path / "out" / "detection_results.json").exists()
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_object_tables_keep_only_the_columns_the_export_reads(tmp_path):
    _, paths = write_inputs(tmp_path / "in", n_shards=2)
    tables = export.read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    assert tables["outliers"].index.name == "object_id"
    assert list(tables["outliers"].columns) == export.LOOKUP_COLUMNS["outliers"]
    assert list(tables["selection"].columns) == ["selected", "reason"]
    assert set(tables) == {"outliers", "selection", "captions", "concepts"}


def test_placing_a_link_twice_keeps_the_first_even_when_its_image_is_gone(tmp_path):
    link = tmp_path / "outliers" / "a.jpg"
    export.place_file(tmp_path / "missing.jpg", link, "symlink")
    export.place_file(tmp_path / "missing.jpg", link, "symlink")
    assert link.is_symlink() and not link.exists()
