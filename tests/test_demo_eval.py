"""demo_eval follows each ground-truth object through the stages, planted and ordinary apart."""

from __future__ import annotations

import json

import pandas as pd

from rare_objects.demo import evaluation as demo_eval
from rare_objects.demo import scenes as demo_scenes


def _write(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    truth = pd.DataFrame(
        [
            # image, class, box, planted kind
            ("a.jpg", "car", (0, 0, 10, 10), "none"),
            ("a.jpg", "truck", (20, 0, 40, 10), "construction_vehicle"),
            ("b.jpg", "bicycle", (0, 0, 10, 10), "none"),
            ("b.jpg", "person", (50, 50, 60, 80), "none"),  # not detected
            ("b.jpg", "car", (20, 20, 40, 30), "zebra_pink_car"),
        ],
        columns=["image_path", "class_name", "box", "planted_kind"],
    )
    truth[["x1", "y1", "x2", "y2"]] = pd.DataFrame(truth.pop("box").tolist())
    truth["planted"] = truth["planted_kind"] != "none"
    for column in demo_scenes.GT_COLUMNS:
        if column not in truth:
            truth[column] = 0
    truth[demo_scenes.GT_COLUMNS].to_csv(images / demo_scenes.GROUND_TRUTH_NAME, index=False)

    def record(image, bbox, object_id, outlier, selected, final, description):
        return {
            "original_path": str(images / image),
            "bbox": bbox,
            "object_id": object_id,
            "is_outlier": outlier,
            "selected": selected,
            "is_final_outlier": final,
            "description": description,
        }

    results = [
        record("a.jpg", [0, 0, 10, 11], "o1", False, True, False, "a red car"),
        record(
            "a.jpg",
            [20, 0, 40, 10],
            "o2",
            True,
            True,
            True,
            "a yellow construction vehicle with an excavator arm",
        ),
        record("b.jpg", [0, 1, 10, 10], "o3", False, True, True, "a bicycle with rainbow wheels"),
        record(
            "b.jpg",
            [20, 20, 41, 30],
            "o4",
            True,
            True,
            False,
            "A car detected by YOLO with confidence 0.50.",
        ),
        record("b.jpg", [90, 90, 99, 99], "o5", False, False, None, None),  # no object there
    ]
    results_dir = tmp_path / "results"
    (results_dir / "tables" / "captions").mkdir(parents=True)
    (results_dir / "detection_results.json").write_text(json.dumps(results))
    pd.DataFrame(
        {
            "object_id": ["o1", "o2", "o3", "o4"],
            "caption_kind": ["vlm", "vlm", "vlm", "simple"],
            "error": [None] * 4,
        }
    ).to_parquet(results_dir / "tables" / "captions" / "part-0.parquet")
    return results_dir, images


def test_every_stage_is_counted_for_planted_and_ordinary_objects(tmp_path):
    results_dir, images = _write(tmp_path)
    report = demo_eval.planted_report(results_dir, images)
    assert report["ground_truth_objects"] == 5 and report["detected_share"] == 0.8
    assert report["planted"] == {
        "objects": 2,
        "detected": 2,
        "flagged_outlier": 2,
        "selected": 2,
        "captioned": 1,  # the zebra car got the simple caption, not a VLM one
        "captioned_correctly": 1,
        "final_outliers": 1,
        "detected_share": 1.0,
        "outlier_rate": 1.0,
        "caption_accuracy": 1.0,
        "final_outlier_share_of_captioned": 1.0,
    }
    ordinary = report["ordinary"]
    assert (ordinary["objects"], ordinary["detected"], ordinary["captioned"]) == (3, 2, 2)
    # the bicycle's caption names a rainbow bicycle: wrong kind, and a final outlier
    assert ordinary["captioned_correctly"] == 1 and ordinary["final_outliers"] == 1
    assert ordinary["final_outlier_share_of_captioned"] == 0.5
    assert report["caption_accuracy"] == round(2 / 3, 3)
    assert report["all_objects"] == 5 and report["all_captioned"] == 3
    assert demo_eval.main([str(results_dir), str(images)]) == 0
    assert json.loads((results_dir / "demo_evaluation.json").read_text()) == report
