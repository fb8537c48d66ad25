"""Shared fixtures: the tiny models (built once per machine) and a workflow runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RARE_OBJECTS_TEST_CACHE", REPO / "tests" / ".cache"))
MODELS = CACHE / "models"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(scope="session")
def demo_models() -> Path:
    """The demo's tiny detector, CLIP and trained Qwen2-VL, built once and reused (files in tests/.cache)."""
    from rare_objects.runtime import offline

    offline.configure(CACHE / "libs")
    from rare_objects.demo.tiny_models import build_demo_clip, build_demo_detector
    from rare_objects.demo.tiny_vlm import build_tiny_qwen2vl
    from rare_objects.runtime.config import defaults

    MODELS.mkdir(parents=True, exist_ok=True)
    build_demo_detector(MODELS / "detector.pt", CACHE / "detector-training", seed=0)
    build_demo_clip(MODELS / "clip-tiny.pt", seed=0)
    build_tiny_qwen2vl(
        MODELS / "qwen2vl-tiny", seed=0, train_steps=defaults()["demo"]["vlm_train_steps"]
    )
    return MODELS


@pytest.fixture(scope="session")
def demo_scene_dir(tmp_path_factory) -> Path:
    """A small set of demo scenes in three folders (with ground truth)."""
    from rare_objects.demo.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, n_images=18, seed=11)
    return out


def workflow_config(results: Path, images: Path, models: Path, **sections) -> dict:
    """A configuration for the test data: tiny models, small shards, captions on."""
    config = {
        "results": str(results),
        "seed": 42,
        "device": "cpu",
        "cache_dir": str(CACHE / "libs"),
        "input": {"kind": "folder", "path": str(images), "shard_size": 4, "max_images": 1000},
        "demo": {"models_dir": str(models)},
        "detector": {"weights": str(models / "detector.pt"), "batch_size": 4, "imgsz": 320},
        "embedder": {"preset": "demo", "batch_size": 32},
        "outliers": {"n_neighbors": 10, "contamination": 0.1, "min_samples": 10},
        "projection": {"max_points": 500},
        "selection": {"similarity_threshold": 0.98, "max_per_cluster": 2},
        "captions": {
            "backend": "transformers",
            "partitions": 2,
            "max_new_tokens": 12,
            "vlm_for": ["targets", "outliers"],
            "transformers": {
                "model": str(models / "qwen2vl-tiny"),
                "batch_size": 4,
                "min_pixels": 3136,
                "max_pixels": 6272,
            },
        },
        "concepts": {"text_encoder": "clip"},
        "export": {"max_inlier_images": 5},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def run_snakemake(
    workdir: Path, config: dict, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` with ``config``; output is captured."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "run-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        str(SNAKEMAKE),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        "--cores",
        "2",
        *args,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=workdir, timeout=1800
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
        )
    return result


def planned_jobs(workdir: Path, config: dict, *args: str) -> dict[str, int]:
    """Jobs a dry run would schedule, per rule (read from snakemake's job table)."""
    result = run_snakemake(workdir, config, "--dry-run", "--quiet", "rules", *args)
    counts: dict[str, int] = {}
    in_table = False
    for line in (result.stdout + result.stderr).splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="session")
def workflow_images(tmp_path_factory, demo_scene_dir) -> Path:
    """The demo scenes, copied so that tests may add folders to them."""
    import shutil

    root = tmp_path_factory.mktemp("images")
    for path in sorted(demo_scene_dir.rglob("*.jpg")):
        target = root / path.relative_to(demo_scene_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


@pytest.fixture(scope="session")
def bad_image_expectations(workflow_images) -> dict[str, str]:
    from tests.bad_images import write_bad_corpus

    return write_bad_corpus(workflow_images / "zz-bad")


@pytest.fixture(scope="session")
def workflow_run(tmp_path_factory, workflow_images, bad_image_expectations, demo_models):
    """One complete run of the workflow on the scenes plus the bad corpus: (workdir, config)."""
    workdir = tmp_path_factory.mktemp("run")
    config = workflow_config(workdir / "results", workflow_images, demo_models)
    run_snakemake(workdir, config)
    return workdir, config
