"""End to end: detector classes and a target named to escape the results folder.

The detector is the tiny test detector, loaded with ultralytics, given six classes
(its class head's outputs for car and truck repeated, so every name is predicted) with
hostile names, and saved as an ordinary checkpoint. The run must succeed, write every
file inside its results folder, and keep the original names in the JSON outputs.
"""

from __future__ import annotations

import json
import os

import pytest

from rare_objects.io.names import safe_name
from tests.conftest import run_snakemake, workflow_config
from tests.test_names import FILE_NAME_LIMIT

pytestmark = pytest.mark.workflow

HOSTILE_CLASSES = ["car/van", "../../../x", "a:b", "CON", "", "L" * 300]
HOSTILE_TARGETS = {"../../x": ["car/van", "a:b"], "CON": ["../../../x"], "bicycle": [""]}


def hostile_detector(source, out_path):
    """The detector at ``source`` with the classes :data:`HOSTILE_CLASSES`, saved at ``out_path``."""
    import torch
    from ultralytics import YOLO

    model = YOLO(str(source), task="detect")
    head = model.model.model[-1]
    n = len(HOSTILE_CLASSES)
    for branch in head.cv3:  # the class logits of each scale: repeat the trained ones
        trained = branch[-1]
        repeated = torch.nn.Conv2d(trained.in_channels, n, 1)
        keep = [i % trained.out_channels for i in range(n)]
        with torch.no_grad():
            repeated.weight.copy_(trained.weight[keep])
            repeated.bias.copy_(trained.bias[keep])
        branch[-1] = repeated
    head.nc, head.no = n, n + head.reg_max * 4
    model.model.nc = model.model.yaml["nc"] = n
    model.model.names = dict(enumerate(HOSTILE_CLASSES))
    model.save(str(out_path))
    return out_path


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, demo_scene_dir, demo_models):
    """A run with the hostile detector and targets, its results folder deep in a tree of its own."""
    from rare_objects.runtime import offline
    from tests.conftest import CACHE

    offline.configure(CACHE / "libs")
    root = tmp_path_factory.mktemp("hostile")
    weights = hostile_detector(demo_models / "detector.pt", root / "hostile-detector.pt")
    workdir = root / "a" / "b" / "c" / "run"
    config = workflow_config(
        workdir / "results",
        demo_scene_dir,
        demo_models,
        detector={"weights": str(weights)},
        targets=HOSTILE_TARGETS,
    )
    run_snakemake(workdir, config)
    return root, workdir, config


def test_hostile_names_stay_inside_the_results_folder(hostile_run):
    root, workdir, _ = hostile_run
    results = workdir / "results"
    outside = []
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            path = os.path.join(folder, name)
            assert len(name.encode()) <= FILE_NAME_LIMIT
            inside = path == str(results) or path.startswith(str(results) + os.sep)
            known = path in {str(workdir / "run-config.yaml"), str(root / "hostile-detector.pt")}
            bookkeeping = path.startswith(str(workdir / ".snakemake"))
            if not (inside or known or bookkeeping or str(results).startswith(path + os.sep)):
                outside.append(path)
    assert outside == []
    # nothing resolves outside either (a symbolic link, a name with "..")
    for path in results.rglob("*"):
        assert path.resolve().is_relative_to(results.resolve()) or path.is_symlink()


def test_hostile_names_are_kept_in_the_outputs_and_made_safe_on_disk(hostile_run):
    _, workdir, _ = hostile_run
    results = workdir / "results"
    exported = json.loads((results / "detection_results.json").read_text())
    classes = {r["class_name"] for r in exported}
    assert classes <= set(HOSTILE_CLASSES)
    assert len(classes) >= 4  # most of the hostile names were detected and exported
    # every crop is named after its object's class made safe, in its tree folder
    crops = [r for r in exported if r["path"]]
    assert crops
    for record in crops:
        assert record["path"].startswith(str(results) + os.sep)
        assert record["path"].endswith(f"_{safe_name(record['class_name'])}.jpg")
        assert os.path.isfile(record["path"])
    stats = json.loads((results / "statistics.json").read_text())
    assert set(stats["target_counts"]) == set(HOSTILE_TARGETS)
    assert set(stats["class_distribution"]) == classes
    for target in HOSTILE_TARGETS:
        matching = json.loads((results / f"{safe_name(target)}_results.json").read_text())
        assert all(target in r["target_matches"] for r in matching)
        assert len(matching) == stats["target_counts"][target]
        assert (results / "targets" / safe_name(target)).is_dir()
    assert stats["target_counts"]["../../x"] > 0
    coco = json.loads((results / "coco_detections.json").read_text())
    assert [c["name"] for c in coco["categories"]] == HOSTILE_CLASSES
    galleries = json.loads((results / "report" / "galleries.json").read_text())
    assert {entry["group"] for entry in galleries.values()} & set(HOSTILE_CLASSES)
    for relative in galleries:
        assert (results / "report" / relative).is_file()
