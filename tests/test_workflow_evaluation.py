"""The evaluation stage through Snakemake, on a copy of the shared test run, with the COCO
ground truth that the scene generator wrote for its images."""

from __future__ import annotations

import json
import shutil
import zipfile

import pandas as pd
import pytest

from tests.conftest import planned_jobs, run_snakemake, workflow_config
from tests.test_explorer_browser import ARTIFACTS, browser  # noqa: F401 (the Chromium fixture)

pytestmark = pytest.mark.workflow

EVALUATION_RULES = ["ground_truth", "evaluation_scores", "evaluate"]
PLANTED = [
    "construction_vehicle",
    "zebra_pink_car",
    "monster_car",
    "rainbow_bicycle",
    "mascot_person",
]


@pytest.fixture(scope="module")
def run_copy(workflow_run, tmp_path_factory):
    """The shared run copied (modification times kept), its results folder renamed to match."""
    workdir, config = workflow_run
    copy = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(workdir, copy, symlinks=True)
    return copy, {**config, "results": str(copy / "results")}


def _planted_present(coco) -> list[str]:
    """The planted kinds that the generated scenes hold (the rare categories of the tests)."""
    truth = json.loads(coco.read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    present = {names[a["category_id"]] for a in truth["annotations"]}
    return [kind for kind in PLANTED if kind in present]


def _evaluation(config, coco, **settings):
    return {
        **config,
        "evaluation": {
            "enabled": True,
            "source": "coco",
            "coco": {"file": str(coco), "root": config["input"]["path"]},
            "rare_categories": _planted_present(coco),
            "detectors": ["knn_distance", "lof"],
            "combinations": [["knn_distance", "lof"]],
            **settings,
        },
    }


def _evaluate(workdir, config, check=True):
    """Only the evaluation's rules run (the copied stage tables are taken as they are)."""
    return run_snakemake(
        workdir,
        config,
        str(workdir / "results" / "evaluation.json"),
        "--allowed-rules",
        *EVALUATION_RULES,
        check=check,
    )


def test_the_evaluation_follows_the_generated_ground_truth(run_copy, demo_scene_dir):
    workdir, config = run_copy
    coco = demo_scene_dir / "ground_truth.coco.json"
    evaluated = _evaluation(config, coco)
    _evaluate(workdir, evaluated)
    results = workdir / "results"
    report = json.loads((results / "evaluation.json").read_text())
    truth = json.loads(coco.read_text())
    assert report["ground_truth_objects"] == len(truth["annotations"])
    images = pd.concat(map(pd.read_parquet, (results / "tables" / "images").glob("*.parquet")))
    # every generated scene is labelled; the bad corpus's images (usable or not) are not
    bad = int(images["image_path"].str.contains("/zz-bad/").sum())
    assert bad and report["ground_truth"]["run_images_without_labels"] == bad
    objects = pd.read_parquet(results / "tables" / "evaluation_objects.parquet")
    assert len(objects) == len(truth["annotations"])
    matched = objects[objects["detected"]]
    assert matched["object_id"].is_unique and (matched["iou"] >= 0.5).all()
    # The detector finds most generated objects, and every count agrees with the table.
    assert len(matched) >= 0.7 * len(objects)
    for category, counts in report["categories"].items():
        rows = objects[objects["category"] == category]
        assert counts["objects"] == len(rows)
        assert counts["detected"] == int(rows["detected"].sum())
        assert counts["outlier"] == int(rows["outlier"].sum())
    assert set(report["detectors"]) == {"knn_distance", "lof", "knn_distance+lof"}
    assert report["rare_categories"] == _planted_present(coco) != []
    assert report["rare"]["objects"] == len(objects[objects["category"].isin(PLANTED)])
    log = (results / "logs" / "evaluate.log").read_text()
    assert report["summary"] in log
    # Only evaluation settings rerun the evaluation, and only it.
    assert planned_jobs(workdir, evaluated, "--allowed-rules", *EVALUATION_RULES) == {}
    stricter = {**evaluated, "evaluation": {**evaluated["evaluation"], "iou_threshold": 0.7}}
    planned = planned_jobs(workdir, stricter, "--allowed-rules", *EVALUATION_RULES)
    assert set(planned) == {"evaluate", "all"}  # the ground truth and the scores stay


def test_ground_truth_that_does_not_fit_the_run_stops_with_what_to_check(
    run_copy, demo_scene_dir, tmp_path
):
    workdir, config = run_copy
    coco = demo_scene_dir / "ground_truth.coco.json"
    wrong_root = _evaluation(config, coco)
    wrong_root["evaluation"]["coco"]["root"] = "/elsewhere"
    result = _evaluate(workdir, wrong_root, check=False)
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "ground_truth.log").read_text()
    assert "matches none of the run's images" in log and "/elsewhere/scene-" in log

    unknown = _evaluation(config, coco, rare_categories=["tram"])
    result = _evaluate(workdir, unknown, check=False)
    assert result.returncode != 0
    log = (workdir / "results" / "logs" / "ground_truth.log").read_text()
    assert "['tram'] not among the ground truth's categories" in log and "bicycle, car" in log

    # Labels for part of the images: it runs, and says how many have none.
    truth = json.loads(coco.read_text())
    keep = {image["id"] for image in truth["images"][::2]}
    truth["images"] = [i for i in truth["images"] if i["id"] in keep]
    truth["annotations"] = [a for a in truth["annotations"] if a["image_id"] in keep]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(truth))
    _evaluate(workdir, _evaluation(config, partial))
    stats = json.loads((workdir / "results" / "tables" / "ground_truth_stats.json").read_text())
    good_images = stats["run_images"]
    assert stats["labelled_run_images"] == len(keep)
    assert stats["run_images_without_labels"] == good_images - len(keep)
    log = (workdir / "results" / "logs" / "ground_truth.log").read_text()
    assert (
        f"{good_images - len(keep)} of the run's {good_images} images have no ground truth" in log
    )


def test_nuscenes_annotations_are_projected_matched_and_evaluated(tmp_path, demo_models):
    """input.kind nuscenes with the dataroot's annotation tables: the whole workflow, then the
    evaluation with nuScenes' default rare categories (the planted kinds stand for them)."""
    from rare_objects.demo.synthetic_nuscenes import write_dataroot
    from rare_objects.evaluation.nuscenes import DEFAULT_RARE_CATEGORIES

    dataroot = tmp_path / "nuscenes"
    counts = write_dataroot(
        dataroot,
        scenes=["scene-0061", "scene-0103"],
        keyframes_per_scene=2,
        sweeps_per_keyframe=0,
        annotations=True,
        image_size=(640, 360),
        objects_per_camera=(2, 3),
    )
    assert counts["annotations"] > 0
    config = workflow_config(
        tmp_path / "results",
        dataroot,
        demo_models,
        input={
            "kind": "nuscenes",
            "path": str(dataroot),
            "shard_size": 500,
            "max_images": None,
            "nuscenes": {"version": "v1.0-mini", "keyframes_only": True},
        },
        evaluation={"enabled": True, "source": "nuscenes"},
    )
    run_snakemake(tmp_path, config)
    results = tmp_path / "results"
    report = json.loads((results / "evaluation.json").read_text())
    stats = report["ground_truth"]
    assert stats["run_images"] == 2 * 2 * 6 and stats["boxes"] > 0
    assert stats["behind_camera"] + stats["outside_image"] > 0  # other cameras' objects
    # The rare categories are the default list's that the dataroot holds (its planted kinds).
    assert report["rare_categories"]
    assert set(report["rare_categories"]) <= set(DEFAULT_RARE_CATEGORIES)
    truth = pd.read_parquet(results / "tables" / "ground_truth.parquet")
    assert set(truth["category"]) >= set(report["rare_categories"]) | {"vehicle.car"}
    # The projected boxes lie on the drawn objects: the detector finds most of them.
    objects = pd.read_parquet(results / "tables" / "evaluation_objects.parquet")
    assert len(objects) == len(truth)
    assert objects["detected"].mean() >= 0.5
    assert report["categories"]["vehicle.car"]["recall"] >= 0.5
    # Samples are nuScenes sample tokens: the training selection is measured on them.
    selection = report["training_selection"]
    assert selection["pool_samples"] == 4
    assert all(v["samples"] <= 4 for v in selection["categories"].values())


def test_the_evaluation_opens_in_the_browser(run_copy, demo_scene_dir, browser, tmp_path):
    """evaluation.html from file:// in Chromium as a person opens it: the summary, the detector
    table with every entry and the random ranking, one row per category; and the Snakemake
    report lists the evaluation's figure and tables under their own category."""
    workdir, config = run_copy
    evaluated = _evaluation(config, demo_scene_dir / "ground_truth.coco.json")
    _evaluate(workdir, evaluated)
    results = workdir / "results"
    report = json.loads((results / "evaluation.json").read_text())
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((results / "report" / "evaluation.html").as_uri())
    assert page.get_by_text(report["summary"]).count() == 1
    detector_rows = page.locator("table").first.locator("tbody tr")
    assert detector_rows.count() == 3 * len(report["detectors"]) + 1  # 3 rankings each, random
    assert page.locator("table").nth(1).locator("tbody tr").count() == len(report["categories"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "evaluation-tables.png"), full_page=True)
    archive = tmp_path / "report.zip"
    run_snakemake(workdir, evaluated, "--report", str(archive))
    zipfile.ZipFile(archive).extractall(tmp_path)
    page.goto((tmp_path / "report" / "report.html").as_uri())
    page.get_by_text("6. Evaluation").first.click()
    page.get_by_text("tables", exact=True).first.wait_for(timeout=15_000)
    # the figure's row: its "view" button shows evaluation.png
    page.locator("tr", has_text="evaluation").first.locator("a, button").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img')].some((i) => "
        "i.src.endsWith('/evaluation.png') && i.naturalWidth > 1000)",
        timeout=15_000,
    )
    page.screenshot(path=str(ARTIFACTS / "evaluation-report.png"))
    assert not errors, errors
    page.close()
