"""The streaming export (one detection shard at a time) against the export of one shard
holding every object, and its JSON files and statistics against references written here."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from rare_objects.export import Shard, export_shards, rows
from rare_objects.export.json_writers import (
    ResultsWriter,
    target_results_name,
    target_results_writers,
)
from rare_objects.export.statistics import StatisticsWriter
from rare_objects.export.tree import TreeSettings, TreeWriter, place_file
from rare_objects.io import schemas

TARGETS = {"trailer": ["truck"], "construction_vehicle": ["truck", "bus"]}
CLASSES = ["car", "truck", "bus", "person"]
SETTINGS = TreeSettings(
    save_crops=True,
    save_descriptions=True,
    save_probability_plots=False,
    keep_cropped_objects=False,
    link_mode="copy",
    max_inliers=7,
    seed=3,
)
NO_REJECTS = pd.DataFrame({"reason": []})


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


def export_writers(out, targets=TARGETS, settings=SETTINGS, images=(0, 0), extra=()):
    """The rule's writers, in its order: tree, detection_results, target files, ``extra``, statistics."""
    return [
        TreeWriter(out, targets, settings),
        ResultsWriter(out / "detection_results.json"),
        *target_results_writers(targets, [out / target_results_name(t) for t in targets]),
        *extra,
        StatisticsWriter(out / "statistics.json", targets, images, NO_REJECTS),
    ]


def streaming_export(detection_paths, paths, out, extra_writers=(), targets=TARGETS):
    tables = rows.read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    return export_shards(
        detection_paths,
        tables,
        targets=targets,
        writers=export_writers(out, targets, extra=extra_writers),
    )


def one_shard(detection_paths, path):
    """Every detection shard's rows in one shard file (the whole-frame reference)."""
    frame = pd.concat([pd.read_parquet(p) for p in detection_paths], ignore_index=True)
    schemas.write_table(frame, schemas.DETECTIONS, path)
    return [path]


def reference_json_array(records) -> bytes:
    """A JSON array with one record per line, as the export writes it."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    return (("[\n  " + ",\n  ".join(lines) + "\n]\n") if lines else "[]\n").encode()


def reference_statistics(frame, targets) -> dict:
    """statistics.json's per-object figures of a whole assembled frame, computed here directly."""
    final = frame["is_final_outlier"].map(lambda v: v is True or v == 1.0)
    return {
        "total_objects": len(frame),
        "processed_objects": int(frame["description"].notna().sum()),
        "outlier_count": int(frame["is_outlier"].sum()),
        "final_outlier_count": int(final.sum()),
        "target_counts": {
            t: int(frame["target_matches"].map(lambda ts, t=t: t in ts).sum()) for t in targets
        },
        "class_distribution": frame["class_name"].value_counts().sort_index().to_dict(),
        "outlier_code_counts": {
            str(k): int(v) for k, v in frame["outlier_code"].value_counts().sort_index().items()
        },
        "total_images": 0,
        "images_with_objects": 0,
        "rejected_images": 0,
        "rejected_by_reason": {},
    }


def tree_contents(root):
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("n_shards", [1, 4])
def test_streaming_export_writes_what_the_whole_frame_export_writes(tmp_path, n_shards):
    detection_paths, paths = write_inputs(
        tmp_path / "in", n_shards=n_shards, images_per_shard=20 // n_shards
    )
    whole = one_shard(detection_paths, tmp_path / "in" / "all.parquet")
    streaming_export(whole, paths, tmp_path / "memory")
    streaming_export(detection_paths, paths, tmp_path / "stream")

    expected = tree_contents(tmp_path / "memory")
    streamed = tree_contents(tmp_path / "stream")
    assert sorted(streamed) == sorted(expected)
    streamed = {k: v.replace(b"/stream/", b"/memory/") for k, v in streamed.items()}
    assert streamed == expected

    # The JSON files and statistics against references computed on the whole frame.
    frame = rows.assemble(
        pd.read_parquet(whole[0]),
        pd.read_parquet(paths["outliers"]),
        TARGETS,
        pd.read_parquet(paths["selection"]),
        pd.read_parquet(paths["captions"]),
        pd.read_parquet(paths["concepts"]),
    )
    results = json.loads(expected["detection_results.json"])
    crop_paths = {r["object_id"]: r["path"] for r in results if r["path"] is not None}
    records = list(rows.result_records(frame, crop_paths))
    assert expected["detection_results.json"] == reference_json_array(records)
    for target in TARGETS:
        matching = [r for r in records if target in r["target_matches"]]
        assert matching and expected[f"{target}_results.json"] == reference_json_array(matching)
    assert json.loads(streamed["statistics.json"]) == reference_statistics(frame, TARGETS)

    # The comparison covers every kind of output: sampled inliers (fewer than all),
    # outliers, both target files, renamed clashing stems and description files.
    assert len(results) == len(frame) > 40
    crop_files = {f"{name}.jpg" for name in frame["crop_name"]}
    assert (
        len([p for p in (tmp_path / "stream" / "inliers").iterdir() if p.name in crop_files]) == 7
    )
    assert (~frame["is_outlier"]).sum() > 7 and frame["is_outlier"].sum() > 0
    assert any("__" in name for name in streamed)
    assert any(name.endswith("_desc.txt") for name in streamed)
    outlier_crops = [
        r["path"]
        for r in json.loads((tmp_path / "stream" / "detection_results.json").read_text())
        if r["is_outlier"]
    ]
    assert all(p.startswith(str(tmp_path / "stream" / "outliers")) for p in outlier_crops)


def test_streaming_export_leaves_no_results_file_when_a_shard_fails(tmp_path):
    detection_paths, paths = write_inputs(tmp_path / "in", n_shards=3)
    detection_paths[-1].write_bytes(b"not parquet")
    with pytest.raises(pa.ArrowInvalid):
        streaming_export(detection_paths, paths, tmp_path / "out")
    for name in ["detection_results.json", "statistics.json", *map(target_results_name, TARGETS)]:
        assert not (tmp_path / "out" / name).exists()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_object_tables_keep_only_the_columns_the_export_reads(tmp_path):
    _, paths = write_inputs(tmp_path / "in", n_shards=2)
    tables = rows.read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    assert tables["outliers"].index.name == "object_id"
    assert list(tables["outliers"].columns) == rows.LOOKUP_COLUMNS["outliers"]
    assert list(tables["selection"].columns) == ["selected", "reason"]
    assert set(tables) == {"outliers", "selection", "captions", "concepts"}


def test_placing_a_link_twice_keeps_the_first_even_when_its_image_is_gone(tmp_path):
    link = tmp_path / "outliers" / "a.jpg"
    place_file(tmp_path / "missing.jpg", link, "symlink")
    place_file(tmp_path / "missing.jpg", link, "symlink")
    assert link.is_symlink() and not link.exists()


def test_a_writer_after_the_tree_that_reads_records_too_early_is_an_error(tmp_path):
    detection_paths, paths = write_inputs(tmp_path / "in", n_shards=1)
    tables = rows.read_object_tables(paths["outliers"])

    class EarlyReader:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write_shard(self, shard: Shard):
            assert shard.records

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="tree writer must come before"):
        export_shards(
            detection_paths,
            tables,
            targets=TARGETS,
            writers=[EarlyReader(), TreeWriter(out, TARGETS, SETTINGS)],
        )


def test_file_names_of_image_stems_that_clash_get_the_image_id_and_keep_their_suffix():
    frame = pd.DataFrame(
        {
            "image_id": ["aaaaaaaa11", "bbbbbbbb22", "cccccccc33"],
            "image_path": ["/x/same.JPG", "/y/same.jpg", "/z/other.png"],
            "rank": [0, 3, 1],
            "class_name": ["traffic_cone", "car/van", "truck"],
        }
    )
    crops, images = rows.file_names(frame)
    assert crops.tolist() == [
        "same__aaaaaaaa_0_traffic_cone",
        "same__bbbbbbbb_3_car_van-4935b3db",
        "other_1_truck",
    ]
    # the image's own name, whatever the class (a class with "_" once cut it short)
    assert images.tolist() == ["same__aaaaaaaa.jpg", "same__bbbbbbbb.jpg", "other.png"]
