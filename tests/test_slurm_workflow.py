"""The real workflow through a one-node Slurm cluster: same results as a local run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import REPO, run_snakemake, workflow_config
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def small_images(tmp_path_factory, demo_scene_dir) -> Path:
    root = tmp_path_factory.mktemp("slurm-images")
    for path in sorted(demo_scene_dir.rglob("*.jpg"))[:8]:
        target = root / path.relative_to(demo_scene_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def test_workflow_through_slurm_equals_a_local_run(slurm_cluster, tmp_path, small_images, demo_models):  # noqa: F811
    settings = {"captions": {"partitions": 1}, "outliers": {"n_neighbors": 5, "min_samples": 5}}
    local = tmp_path / "local"
    run_snakemake(local, workflow_config(local / "results", small_images, demo_models, **settings))

    remote = tmp_path / "slurm"
    config = workflow_config(remote / "results", small_images, demo_models, **settings)
    remote.mkdir()
    config_path = remote / "run-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    profile = slurm_cluster.make_test_profile(tmp_path / "profile", mem_mb=2500)
    result = slurm_cluster.run_snakemake(remote, REPO / "Snakefile", config_path, profile, ["--jobs", "2"])
    assert result.returncode == 0, slurm_cluster.describe(result)

    log = result.stdout + result.stderr
    submitted = slurm_cluster.job_ids(log)
    print("Slurm job ids:", submitted)
    assert len(submitted) >= 8  # detect/embed per shard, outliers, select, caption, concepts, export, ...
    assert set(submitted) <= slurm_cluster.allocated_job_ids()
    finished = slurm_cluster.wait_finished(submitted)
    assert all(finished[j]["JobState"] == "COMPLETED" for j in submitted), finished

    for path in sorted((local / "results" / "tables").rglob("*.parquet")):
        other = remote / path.relative_to(local)
        assert pq.read_table(path).equals(pq.read_table(other)), path
    for name in ("detection_results.json", "statistics.json"):
        a = (local / "results" / name).read_text().replace(str(local / "results"), "<results>")
        b = (remote / "results" / name).read_text().replace(str(remote / "results"), "<results>")
        assert a == b, name
