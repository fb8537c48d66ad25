"""The real workflow through a one-node Slurm cluster: same results as a local run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
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


def test_workflow_through_slurm_equals_a_local_run(  # noqa: F811
    slurm_cluster, tmp_path, small_images, demo_models, capsys
):
    settings = {"captions": {"partitions": 1}, "outliers": {"n_neighbors": 5, "min_samples": 5}}
    local = tmp_path / "local"
    run_snakemake(local, workflow_config(local / "results", small_images, demo_models, **settings))

    remote = tmp_path / "slurm"
    config = workflow_config(remote / "results", small_images, demo_models, **settings)
    remote.mkdir()
    config_path = remote / "run-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    profile = slurm_cluster.make_test_profile(tmp_path / "profile", mem_mb=2500)
    result = slurm_cluster.run_snakemake(
        remote, REPO / "Snakefile", config_path, profile, ["--jobs", "2"]
    )
    assert result.returncode == 0, slurm_cluster.describe(result)

    log = result.stdout + result.stderr
    submitted = slurm_cluster.job_ids(log)
    with capsys.disabled():  # the job ids belong in the CI log
        print(f"\n[slurm] workflow on the test images: Slurm job ids {submitted}")
    assert (
        len(submitted) >= 8
    )  # detect/embed per shard, outliers, select, caption, concepts, export, ...
    assert set(submitted) <= slurm_cluster.allocated_job_ids()
    finished = slurm_cluster.wait_finished(submitted)
    assert all(finished[j]["JobState"] == "COMPLETED" for j in submitted), finished

    for path in sorted((local / "results" / "tables").rglob("*.parquet")):
        a, b = pq.read_table(path), pq.read_table(remote / path.relative_to(local))
        if path.name == "projection.parquet":
            # t-SNE/UMAP coordinates amplify last-bit differences of the embeddings; which
            # objects are on the map, and why, must still be identical
            a, b = a.drop_columns(["x", "y"]), b.drop_columns(["x", "y"])
        assert_same_table(a, b, path)
    for name in ("detection_results.json", "statistics.json"):
        a = json.loads(
            (local / "results" / name).read_text().replace(str(local / "results"), "<results>")
        )
        b = json.loads(
            (remote / "results" / name).read_text().replace(str(remote / "results"), "<results>")
        )
        assert_same_json(a, b, name)


# A Slurm job and a local job may run the model with other BLAS threads and buffers, so
# floats may differ in their last bits; everything else (ids, classes, flags, choices,
# captions) must be identical.
FLOAT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def assert_same_table(a: pa.Table, b: pa.Table, where) -> None:
    assert a.schema.equals(b.schema, check_metadata=True), where
    assert a.num_rows == b.num_rows, where
    for name in a.column_names:
        column_type = a.schema.field(name).type
        value_type = (
            column_type.value_type
            if pa.types.is_list(column_type) or pa.types.is_fixed_size_list(column_type)
            else column_type
        )
        if pa.types.is_floating(value_type):
            x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
            assert x.is_null().equals(y.is_null()), (where, name)
            if value_type is not column_type:
                x, y = x.flatten(), y.flatten()
            np.testing.assert_allclose(
                x.to_numpy(zero_copy_only=False),
                y.to_numpy(zero_copy_only=False),
                **FLOAT_TOLERANCE,
                err_msg=f"{where}:{name}",
            )
        else:
            assert a.column(name).equals(b.column(name)), (where, name)


def assert_same_json(a, b, where) -> None:
    if isinstance(a, float) or isinstance(b, float):
        np.testing.assert_allclose(a, b, **FLOAT_TOLERANCE, err_msg=str(where))
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_json(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_json(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
