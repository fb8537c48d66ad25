"""End to end: the COCO file and the training-selection list of the test run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pycocotools.coco import COCO

pytestmark = pytest.mark.workflow


def test_coco_file_of_the_run_matches_detection_results(workflow_run):
    workdir, config = workflow_run
    results = workdir / "results"
    exported = json.loads((results / "detection_results.json").read_text())
    selected = {r["object_id"]: r for r in exported if r["selected"] is True}
    assert selected  # the default: the objects the selection kept
    dataset = COCO(str(results / "coco_detections.json"))
    annotations = dataset.loadAnns(dataset.getAnnIds())
    assert len(annotations) == len(selected)
    image_root = Path(config["input"]["path"])
    for annotation in annotations:
        record = selected[annotation["object_id"]]
        x1, y1, x2, y2 = record["bbox"]
        np.testing.assert_allclose(annotation["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.006)
        assert dataset.loadCats(annotation["category_id"])[0]["name"] == record["class_name"]
        assert annotation["score"] == record["confidence"]
        assert annotation["caption"] == record["description"]
        assert annotation["top_concept"] == record["top_concept"]
        image = dataset.loadImgs(annotation["image_id"])[0]
        assert image_root / image["file_name"] == Path(record["original_path"])
        assert image["width"] > 0 and image["height"] > 0
    assert len(dataset.getImgIds()) == len({r["original_path"] for r in selected.values()})
    # categories: the detector's whole vocabulary, read from its weights by rule detector_classes
    vocabulary = json.loads((results / "tables" / "detector_classes.json").read_text())
    from ultralytics import YOLO

    names = YOLO(config["detector"]["weights"], task="detect").names
    assert vocabulary == {str(i): n for i, n in names.items()}
    assert [(c["id"], c["name"]) for c in dataset.loadCats(dataset.getCatIds())] == [
        (int(i) + 1, n) for i, n in vocabulary.items()
    ]


def test_training_selection_of_the_run(workflow_run):
    workdir, config = workflow_run
    results = workdir / "results"
    table = pd.read_parquet(results / "training_selection.parquet")
    assert (
        pd.read_csv(results / "training_selection.csv")["sample"].tolist()
        == table["sample"].tolist()
    )
    exported = json.loads((results / "detection_results.json").read_text())
    stats = json.loads((results / "statistics.json").read_text())
    summary = stats["training_selection"]
    mined = {
        r["original_path"] for r in exported if r["is_final_outlier"] is True
    }  # a folder input: image paths
    assert set(table.loc[table["reason"] == "mined", "sample"]) == mined
    per_image = pd.concat(
        [pd.read_parquet(p) for p in (results / "tables" / "images").glob("*.parquet")]
    )
    pool = per_image.loc[per_image["status"] == "ok", "image_path"]
    assert summary["total_samples"] == len(pool)
    assert len(table) == summary["selected_samples"] == max(summary["budget"], len(mined))
    assert summary["budget"] == int(0.1 * len(pool))  # the schema's default fraction
    assert set(table["sample"]) <= set(pool)
    chosen = set(table["sample"])
    counts = summary["class_counts"]
    assert {k: v["all"] for k, v in counts.items()} == stats["class_distribution"]
    for name, figures in counts.items():
        assert figures["selection"] == sum(
            r["class_name"] == name and r["original_path"] in chosen for r in exported
        )
    assert (results / "benchmarks" / "training_selection.tsv").exists()
    assert "samples chosen" in (results / "logs" / "training_selection.log").read_text()
