"""The evaluation stage's parts on small hand-computed cases (no Snakemake)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from rare_objects.evaluation import ground_truth, measures, stage
from rare_objects.evaluation.matching import box_iou, match_image
from rare_objects.io import schemas
from rare_objects.stages.outliers import _combined


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0.0, 1.0]])


def test_matching_is_one_to_one_in_confidence_order():
    truth = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    # Two detections on the first box: the more confident one takes it even though the
    # other overlaps more; the other is left without a match (one-to-one).
    detections = np.array([[1, 0, 11, 10], [0, 0, 10, 10], [100, 100, 110, 110]], dtype=float)
    confidences = np.array([0.9, 0.5, 0.3])
    assert match_image(truth, detections, confidences, 0.5).tolist() == [0, 2]
    # Reversed confidences: the exact box now comes first.
    assert match_image(truth, detections, confidences[::-1].copy(), 0.5).tolist() == [1, 2]


def test_matching_threshold_is_inclusive_and_a_detection_takes_its_best_free_box():
    truth = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], dtype=float)
    # IoU with the first box exactly 0.5, with the second 0.25.
    detection = np.array([[0, 0, 5, 10]], dtype=float)
    assert box_iou(detection, truth)[0, 0] == pytest.approx(0.5)
    assert match_image(truth, detection, np.array([0.4]), 0.5).tolist() == [0, -1]
    assert match_image(truth, detection, np.array([0.4]), 0.51).tolist() == [-1, -1]
    # A second detection cannot take a box already taken; it takes the next best free one.
    both = np.array([[0, 0, 10, 10], [0, 0, 10, 6]], dtype=float)
    assert match_image(truth, both, np.array([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert match_image(truth, np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == [-1, -1]


def test_enrichment_by_hand():
    flag = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)  # overall rate 0.3
    in_category = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)  # rate 2/4 there
    assert measures.enrichment(flag, in_category) == pytest.approx(0.5 / 0.3)
    assert measures.enrichment(np.zeros(3, bool), np.ones(3, bool)) is None


def test_ranking_measures_by_hand_and_equal_to_sklearn():
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    positive = np.array([True, False, True, False])
    result = measures.ranking_measures(scores, positive, [1, 2, 3, 10])
    assert result["auroc"] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs
    assert result["average_precision"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    assert result["recall_at_k"] == {"1": 0.5, "2": 0.5, "3": 1.0}  # 10 > rows: left out
    rng = np.random.default_rng(0)
    scores = rng.normal(size=500)
    positive = rng.random(500) < 0.05 + 0.2 * (scores > 1)
    result = measures.ranking_measures(scores, positive, [50])
    assert result["auroc"] == pytest.approx(roc_auc_score(positive, scores), abs=1e-4)
    assert result["average_precision"] == pytest.approx(
        average_precision_score(positive, scores), abs=1e-4
    )
    # Unscored rows (NaN) rank below every scored one.
    with_nan = measures.ranking_measures(
        np.array([np.nan, 0.2, 0.1]), np.array([True, False, False]), [1]
    )
    assert with_nan["auroc"] == 0.0
    random = measures.random_ranking(np.array([True, False, False, False]), [1, 2])
    assert random == {"auroc": 0.5, "average_precision": 0.25, "recall_at_k": {"1": 0.25, "2": 0.5}}


def test_percentile_ranks_combine_as_the_outliers_stage_does():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=200).astype(np.float32), rng.exponential(size=200).astype(np.float32)
    ours = measures.combined_rank([measures.percentile_ranks(a), measures.percentile_ranks(b)])
    np.testing.assert_allclose(ours, _combined([a, b]), rtol=1e-6)
    groups = np.array(["x"] * 50 + ["y"] * 150)
    within = measures.percentile_ranks(a, groups)
    np.testing.assert_allclose(within[:50], measures.percentile_ranks(a[:50]))
    assert np.isnan(measures.combined_rank([np.array([np.nan, 1.0]), np.array([np.nan, 0.5])]))[0]


def test_selection_recall_against_the_exact_random_expectation():
    result = measures.selection_recall(
        holding=40, selected_holding=30, pool=1000, budget=200, draws=4000, seed=3
    )
    assert result["share"] == 0.75
    assert result["random_expected_share"] == 0.2  # budget / pool, exactly
    from scipy.stats import hypergeom

    low, high = hypergeom(1000, 40, 200).ppf([0.05, 0.95]) / 40
    assert result["random_p05"] == pytest.approx(low, abs=0.026)
    assert result["random_p95"] == pytest.approx(high, abs=0.026)
    assert measures.selection_recall(0, 0, 10, 5, 100, 0)["share"] is None


def _write_coco(path, images, annotations, categories):
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def test_coco_boxes_are_xywh_clipped_and_crowd_boxes_left_out(tmp_path):
    _write_coco(
        tmp_path / "gt.json",
        [{"id": 7, "file_name": "a/img.jpg", "width": 100, "height": 50}],
        [
            {"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 5, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [90, 40, 30, 30]},  # leaves
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 2, "bbox": [0, 0, 0, 5]},  # empty
        ],
        [{"id": 2, "name": "trailer"}, {"id": 3, "name": "never used"}],
    )
    frame, stats = ground_truth.read_coco(tmp_path / "gt.json", tmp_path / "root")
    assert frame["gt_id"].tolist() == ["1", "2"]
    assert frame[["x1", "y1", "x2", "y2"]].values.tolist() == [[10, 5, 30, 35], [90, 40, 100, 50]]
    assert frame["clipped"].tolist() == [False, True]
    assert set(frame["image_path"]) == {str(tmp_path / "root" / "a" / "img.jpg")}
    assert stats | {"category_names": None} == {
        "images": 1,
        "annotations": 4,
        "crowd": 1,
        "empty": 1,
        "clipped": 1,
        "category_names": None,
    }
    assert stats["category_names"] == ["never used", "trailer"]


def test_bad_ground_truth_gets_a_clear_answer(tmp_path):
    truth = pd.DataFrame(
        {"image_path": ["/data/x/1.jpg", "/data/x/2.jpg"], "category": ["car", "trailer"]}
    )
    with pytest.raises(ground_truth.GroundTruthError) as error:
        ground_truth.align_to_run(truth, ["/other/1.jpg", "/other/3.jpg"])
    message = str(error.value)
    assert "2 labelled images" in message and "2 run images" in message
    assert "/data/x/1.jpg" in message and "/other/1.jpg" in message
    aligned, stats = ground_truth.align_to_run(truth, ["/data/x/./1.jpg", "/data/y/9.jpg"])
    assert aligned["image_path"].tolist() == ["/data/x/./1.jpg"]  # the run's spelling
    assert stats["run_images_without_labels"] == 1 and stats["labelled_images_not_in_run"] == 1
    with pytest.raises(ground_truth.GroundTruthError, match="bus, car, trailer"):
        ground_truth.check_rare(["tram"], ["car", "trailer", "bus"], "evaluation.rare_categories")
    settings = {"rare_categories": None, "source": "coco"}
    with pytest.raises(ground_truth.GroundTruthError, match="required.*car, trailer"):
        ground_truth.resolve_rare(settings, ["car", "trailer"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ground_truth.GroundTruthError, match="bad.json"):
        ground_truth.read_coco(tmp_path / "bad.json", tmp_path)


def _evaluation_settings(**overrides):
    from rare_objects.runtime.config import defaults

    settings = defaults()["evaluation"]
    settings.update(
        {"detectors": ["lof", "knn_distance"], "combinations": [["knn_distance", "lof"]]}
    )
    settings.update(overrides)
    return settings


def test_evaluate_follows_each_ground_truth_object_through_the_stages(tmp_path):
    """Two images: a rare trailer (detected, flagged by lof only, selected, captioned as a
    trailer, final outlier), a car (detected, nothing else), a trailer the detector missed,
    and a car on a rejected image."""
    detections = pd.DataFrame(
        {
            "object_id": ["a-0", "a-1", "b-0"],
            "image_path": ["/i/a.jpg", "/i/a.jpg", "/i/b.jpg"],
            "class_name": ["truck", "car", "car"],
            "confidence": [0.9, 0.8, 0.7],
            "x1": [0.0, 50, 0],
            "y1": [0.0, 0, 0],
            "x2": [10.0, 60, 5],
            "y2": [10.0, 10, 5],
        }
    )
    detections.to_parquet(tmp_path / "det.parquet")
    truth = pd.DataFrame(
        {
            "gt_id": ["1", "2", "3", "4"],
            "image_path": ["/i/a.jpg", "/i/a.jpg", "/i/b.jpg", "/i/c.jpg"],
            "category": ["trailer", "car", "trailer", "car"],
            "x1": [0.0, 51, 30, 0],
            "y1": [0.0, 0, 30, 0],
            "x2": [10.0, 60, 40, 5],
            "y2": [10.0, 10, 40, 5],
            "clipped": False,
            "visibility": None,
        }
    )
    images = pd.DataFrame(
        {
            "image_path": ["/i/a.jpg", "/i/b.jpg", "/i/c.jpg", "/i/d.jpg"],
            "status": ["ok", "ok", "rejected", "ok"],
        }
    )
    ids = ["a-0", "a-1", "b-0"]
    tables = {
        "outliers": pd.DataFrame({"is_outlier": [True, False, False]}, index=ids),
        "selection": pd.DataFrame({"selected": [True, False, False]}, index=ids),
        "captions": pd.DataFrame({"caption_kind": ["vlm"], "error": [None]}, index=["a-0"]),
        "concepts": pd.DataFrame(
            {"top_concept": ["trailer"], "is_final_outlier": [True]}, index=["a-0"]
        ),
    }
    scores = pd.DataFrame(
        {
            "object_id": ids,
            "class_name": ["truck", "car", "car"],
            "score_global_lof": [3.0, 1.0, 2.0],
            "score_class_lof": [np.nan, 1.0, 2.0],
            "is_outlier_lof": [True, False, False],
            "score_global_knn_distance": [1.0, 3.0, 2.0],
            "score_class_knn_distance": [np.nan, 2.0, 1.0],
            "is_outlier_knn_distance": [False, True, False],
        }
    )
    summary = {"total_samples": 3, "selected_samples": 1}
    report, objects = stage.evaluate(
        truth,
        images,
        [tmp_path / "det.parquet"],
        tables,
        scores,
        ({"/i/a.jpg"}, summary),
        _evaluation_settings(top_k=[1, 2]),
        ["trailer"],
        {"trailer": ["truck"]},
        {"trailer": "trailer", "car": "car"},
        "image_path",
        seed=0,
    )
    # the car on the rejected image is left out; the second trailer was missed
    assert objects["object_id"].fillna("missed").tolist() == ["a-0", "a-1", "missed"]
    assert report["objects_on_rejected_images"] == 1
    trailer = report["categories"]["trailer"]
    assert trailer["objects"] == 2 and trailer["detected"] == 1 and trailer["recall"] == 0.5
    for flag in (
        "outlier",
        "selected",
        "captioned",
        "captioned_naming_category",
        "final_outlier",
        "target_match",
        "outlier_lof",
        "outlier_knn_distance+lof",
    ):
        assert trailer[flag] == 1, flag
    assert trailer["outlier_knn_distance"] == 0
    # Enrichment: lof flags 1 of the 2 matched objects (rate 0.5), the trailer's 1 of 1.
    assert trailer["outlier_lof_enrichment"] == 2.0
    assert report["categories"]["car"]["outlier_knn_distance"] == 1
    assert report["rare"]["objects"] == 2 and report["rare_objects_ranked"] == 1
    lof = report["detectors"]["lof"]
    assert lof["global"]["auroc"] == 1.0 and lof["global"]["recall_at_k"] == {"1": 1.0, "2": 1.0}
    assert report["detectors"]["knn_distance"]["global"]["auroc"] == 0.0
    assert report["best"] == {"auroc": "lof", "average_precision": "lof"}
    assert report["mining_ceiling"]["trailer"] == {
        "objects": 2,
        "missed_by_detector": 1,
        "max_recall": 0.5,
    }
    # Samples (images here) holding a trailer in the pool: a and b; the selection has a.
    selection = report["training_selection"]["categories"]["trailer"]
    assert selection["samples"] == 2 and selection["selected"] == 1 and selection["share"] == 0.5
    assert selection["random_expected_share"] == round(1 / 3, 4)
    assert "rare objects 2: detected 1" in report["summary"]
    schemas.write_table(
        objects,
        schemas.evaluation_objects_schema(["lof", "knn_distance", "knn_distance+lof"]),
        tmp_path / "objects.parquet",
    )


def test_concept_names_prefer_the_config_then_the_source_mapping():
    concepts = ["car", "trailer", "construction_vehicle", "zebra_striped_car"]
    named = stage.concept_names(
        ["Car", "trailer", "zebra_pink_car", "bus"],
        {"zebra_pink_car": "zebra_striped_car"},
        concepts,
        "coco",
    )
    assert named == {"Car": "car", "trailer": "trailer", "zebra_pink_car": "zebra_striped_car"}


def test_a_rare_set_without_objects_gets_zero_counts_and_a_summary(tmp_path):
    """Rare categories that no labelled object of the run has: zeros, no error."""
    pd.DataFrame(
        {
            c: pd.Series(dtype=t)
            for c, t in [
                ("object_id", str),
                ("image_path", str),
                ("class_name", str),
                ("confidence", float),
                ("x1", float),
                ("y1", float),
                ("x2", float),
                ("y2", float),
            ]
        }
    ).to_parquet(tmp_path / "det.parquet")
    truth = pd.DataFrame(
        {
            "gt_id": ["1"],
            "image_path": ["/i/a.jpg"],
            "category": ["car"],
            "x1": [0.0],
            "y1": [0.0],
            "x2": [5.0],
            "y2": [5.0],
            "clipped": [False],
            "visibility": [None],
        }
    )
    empty = pd.DataFrame({"x": []}, index=pd.Index([], name="object_id"))
    tables = {
        "outliers": empty.assign(is_outlier=[]),
        "selection": empty.assign(selected=[]),
        "captions": empty.assign(caption_kind=[], error=[]),
        "concepts": empty.assign(top_concept=[], is_final_outlier=[]),
    }
    scores = pd.DataFrame(
        {
            "object_id": [],
            "class_name": [],
            **{
                f"{k}_{d}": []
                for d in ("lof", "knn_distance")
                for k in ("score_global", "score_class", "is_outlier")
            },
        }
    )
    report, _ = stage.evaluate(
        truth,
        pd.DataFrame({"image_path": ["/i/a.jpg"], "status": ["ok"]}),
        [tmp_path / "det.parquet"],
        tables,
        scores,
        None,
        _evaluation_settings(),
        ["trailer"],
        {},
        {},
        "image_path",
        seed=0,
    )
    assert report["rare"]["objects"] == 0 and report["rare"]["recall"] is None
    assert report["other"]["objects"] == 1 and report["other"]["detected"] == 0
    assert report["summary"].startswith("rare objects 0: detected 0")
