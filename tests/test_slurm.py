"""The Slurm profile, and Snakemake through a real one-node Slurm cluster.

The cluster tests (marked `slurm`) start munged, slurmctld and slurmd on 127.0.0.1
(tests/slurm/cluster.sh, via the `slurm_cluster` fixture of tests/slurm_cluster.py) and run
the toy workflow of tests/slurm/toy with the Slurm executor and a profile derived from
profiles/slurm/config.yaml. They need root and .ci/install-slurm.sh's packages: without
them they are skipped, except under CI, where that fails.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import (  # noqa: F401  (slurm_cluster is a fixture)
    CLUSTER_ONLY_OPTIONS,
    CLUSTER_ONLY_RESOURCES,
    REPO,
    SLURM_PROFILE,
    TOY_WORKFLOW,
    SlurmCluster,
    make_test_profile,
    slurm_cluster,
)

# Every rule of the real workflow: the profile must say what each needs on a cluster.
WORKFLOW_RULES = {
    "build_demo_detector",
    "build_demo_clip",
    "build_demo_vlm",
    "detect",
    "embed",
    "outliers",
    "projection",
    "select_objects",
    "caption",
    "analyse_concepts",
    "export_results",
    "write_timing",
}
GPU_RULES = {"detect", "embed", "caption"}
TOY_SNAKEFILE = TOY_WORKFLOW / "Snakefile"
TOY_SAMPLES = ["a", "b"]


def load_profile() -> dict:
    return yaml.safe_load(SLURM_PROFILE.read_text())


def rules_in_workflow() -> set[str]:
    """Names of the rules defined in Snakefile and rules/*.smk (rule `all` excluded)."""
    sources = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    names = set()
    for path in sources:
        if path.exists():
            names |= set(
                re.findall(r"^(?:rule|checkpoint)\s+(\w+)\s*:", path.read_text(), re.MULTILINE)
            )
    return names - {"all"}


# --- the profile (no cluster needed) ---------------------------------------------------------
def test_profile_sets_resources_for_every_rule():
    profile = load_profile()
    assert profile["executor"] == "slurm"
    set_resources = profile["set-resources"]
    missing = (WORKFLOW_RULES | rules_in_workflow()) - set(set_resources)
    assert not missing, f"profiles/slurm/config.yaml has no set-resources for: {sorted(missing)}"
    unknown = set(set_resources) - WORKFLOW_RULES - rules_in_workflow()
    assert not unknown, f"set-resources for rules that do not exist: {sorted(unknown)}"
    for rule, resources in set_resources.items():
        assert resources.get("mem_mb") and resources.get("runtime"), rule
    for key in ("mem_mb", "runtime", "cpus_per_task"):
        assert key in profile["default-resources"], key


def test_profile_model_rules_ask_for_a_gpu_and_cpus_per_gpu():
    set_resources = load_profile()["set-resources"]
    for rule in GPU_RULES:
        resources = set_resources[rule]
        assert resources["gpu"] == 1, rule
        assert resources["cpus_per_gpu"] >= 1, rule
        # The plugin prefers cpus_per_task over cpus_per_gpu; 0 turns the default one off.
        assert resources["cpus_per_task"] == 0, rule
    for rule in WORKFLOW_RULES - GPU_RULES:
        assert not set_resources[rule].get("gpu"), rule


def test_profile_status_query_works_without_accounting():
    profile = load_profile()
    assert profile["slurm-status-command"] == "squeue"
    # The plugin falls back to sacct when MinJobAge < 3x this; the default MinJobAge is 300 s.
    assert 3 * int(profile["slurm-init-seconds-before-status-checks"]) <= 300


def test_profile_every_key_is_commented():
    uncommented = []
    previous = ""
    for number, line in enumerate(SLURM_PROFILE.read_text().splitlines(), start=1):
        stripped = line.strip()
        is_key = re.match(r"^\s*[\w-]+\s*:", line) and not stripped.startswith("#")
        if is_key and "#" not in line and not previous.strip().startswith("#"):
            uncommented.append(f"{number}: {line}")
        previous = line
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def test_profile_parses_as_snakemake_reads_it():
    from snakemake.profiles import ProfileConfigFileParser

    with SLURM_PROFILE.open() as stream:
        parsed = ProfileConfigFileParser().parse(stream)
    assert parsed["executor"] == "slurm"
    assert "detect:gpu=1" in parsed["set-resources"]
    assert "cpus_per_task=threads" in parsed["default-resources"]


def test_test_profile_fits_a_one_node_cluster(tmp_path):
    dest = make_test_profile(tmp_path / "profile", cpus=2, mem_mb=700)
    profile = yaml.safe_load((dest / "config.yaml").read_text())
    assert profile["slurm-status-command"] == "squeue"
    assert profile["slurm-no-account"] is True
    assert not set(CLUSTER_ONLY_OPTIONS) & set(profile)
    assert set(profile["set-resources"]) == set(load_profile()["set-resources"])
    for rule, resources in [
        ("default", profile["default-resources"]),
        *profile["set-resources"].items(),
    ]:
        assert not (set(resources) & set(CLUSTER_ONLY_RESOURCES) - {"gpu"}), rule
        assert resources.get("gpu", 0) == 0, rule
        assert resources["mem_mb"] == 700, rule
        assert resources["cpus_per_task"] == "min(max(threads, 1), 2)", rule
    assert all(n <= 2 for n in profile["set-threads"].values())

    with_gpus = yaml.safe_load(
        (make_test_profile(tmp_path / "gpu", cpus=2, gpus=True) / "config.yaml").read_text()
    )
    for rule in GPU_RULES:
        resources = with_gpus["set-resources"][rule]
        assert (resources["gpu"], resources["cpus_per_task"], resources["cpus_per_gpu"]) == (
            1,
            0,
            2,
        ), rule


def test_missing_slurm_skips_locally_but_fails_under_ci(monkeypatch):
    import tests.slurm_cluster as module

    monkeypatch.setattr(module, "missing_requirements", lambda: ["not root"])
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="not root"):
        module.require_slurm()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not root"):
        module.require_slurm()
    monkeypatch.setattr(module, "missing_requirements", lambda: [])
    module.require_slurm()  # nothing missing: neither skips nor fails


def test_job_ids_are_read_from_the_plugin_log():
    log = (
        "Job 3 has been submitted with SLURM jobid 17 (log: /x/17.log).\n"
        "Job 4 has been submitted with SLURM jobid 18 (log: /x/18.log).\n"
        "Submitted array job with Snakemake IDs 5,6 and SLURM job ID 20. The individual task IDs are 1-2.\n"
    )
    assert SlurmCluster.job_ids(log) == ["17", "18", "20_1", "20_2"]
    assert SlurmCluster.submissions(log)["4"] == "18"


# --- through the cluster -----------------------------------------------------------------------
def write_toy_config(path: Path, fail_sample: str = "") -> Path:
    path.write_text(yaml.safe_dump({"samples": TOY_SAMPLES, "fail_sample": fail_sample}))
    return path


def result_files(workdir: Path) -> dict[str, bytes]:
    root = workdir / "results"
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def slurm_jobs_by_comment(cluster: SlurmCluster, job_ids: list[str]) -> dict[str, str]:
    """The plugin's job comment (rule_<rule>[_wildcards_<values>]) -> Slurm job id."""
    return {cluster.job_record(job)["Comment"]: job for job in job_ids}


def report(capsys, text: str) -> None:
    with capsys.disabled():
        print(f"\n[slurm] {text}")


@pytest.fixture(scope="module")
def toy_profile(slurm_cluster, tmp_path_factory) -> Path:
    """The real profile fitted to the test node, with its GPU requests kept (one pretend GPU);
    the toy's `transform` rule gets the real `detect` rule's resources (gpu, cpus_per_gpu)."""
    base = tmp_path_factory.mktemp("profile")
    profile = make_test_profile(base / "fitted", mem_mb=500, cpus=slurm_cluster.cpus, gpus=True)
    config = yaml.safe_load((profile / "config.yaml").read_text())
    config["set-resources"]["transform"] = dict(
        config["set-resources"]["detect"], mem_mb=300, runtime=5
    )
    (profile / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return profile


@pytest.mark.slurm
def test_toy_workflow_runs_through_slurm_like_a_local_run(
    slurm_cluster, toy_profile, tmp_path, capsys
):
    config = write_toy_config(tmp_path / "config.yaml")
    local = slurm_cluster.run_snakemake(
        tmp_path / "local", TOY_SNAKEFILE, config, None, ["--cores", "2"]
    )
    assert local.returncode == 0, slurm_cluster.describe(local)

    run = slurm_cluster.run_snakemake(tmp_path / "slurm", TOY_SNAKEFILE, config, toy_profile)
    assert run.returncode == 0, slurm_cluster.describe(run)
    log = run.stdout + run.stderr
    job_ids = slurm_cluster.job_ids(log)
    report(capsys, f"toy workflow: Slurm job ids {job_ids}")

    # Five jobs (generate x2, transform x2, combine), each submitted, allocated and completed by Slurm.
    assert len(job_ids) == 5, slurm_cluster.describe(run)
    assert set(job_ids) <= slurm_cluster.allocated_job_ids(), slurm_cluster.daemon_logs()
    states = slurm_cluster.job_states()
    assert all(states.get(job) == "COMPLETED" for job in job_ids), states
    records = slurm_cluster.wait_finished(job_ids)
    assert all(records[job]["JobState"] == "COMPLETED" for job in job_ids), records
    by_comment = slurm_jobs_by_comment(slurm_cluster, job_ids)
    assert set(by_comment) == {
        "rule_generate_wildcards_a",
        "rule_generate_wildcards_b",
        "rule_transform_wildcards_a",
        "rule_transform_wildcards_b",
        "rule_combine",
    }
    # Each transform job ran inside its own Slurm job, on the test node.
    for sample in TOY_SAMPLES:
        where = json.loads((tmp_path / "slurm" / "where" / f"{sample}.json").read_text())
        assert where["slurm_job_id"] == by_comment[f"rule_transform_wildcards_{sample}"], where
    # The real profile's GPU request (detect's) was accepted and granted.
    for sample in TOY_SAMPLES:
        record = slurm_cluster.job_record(by_comment[f"rule_transform_wildcards_{sample}"])
        assert "gpu:1" in record.get("TresPerJob", ""), record
        assert "gpu" in record.get("CpusPerTres", ""), record

    assert result_files(tmp_path / "slurm") == result_files(tmp_path / "local")
    assert result_files(tmp_path / "local"), "the local run wrote no results"


@pytest.mark.slurm
def test_a_failing_slurm_job_fails_the_run(slurm_cluster, toy_profile, tmp_path, capsys):
    config = write_toy_config(tmp_path / "config.yaml", fail_sample="b")
    run = slurm_cluster.run_snakemake(tmp_path / "slurm", TOY_SNAKEFILE, config, toy_profile)
    log = run.stdout + run.stderr
    job_ids = slurm_cluster.job_ids(log)
    report(capsys, f"failing toy workflow: Slurm job ids {job_ids}, exit code {run.returncode}")
    assert run.returncode not in (0, -9), slurm_cluster.describe(run)

    by_comment = slurm_jobs_by_comment(slurm_cluster, job_ids)
    failed = by_comment["rule_transform_wildcards_b"]
    report(capsys, f"failed job: rule transform, sample b, Slurm job id {failed}")
    assert slurm_cluster.job_states()[failed] == "FAILED"
    assert slurm_cluster.wait_finished([failed])[failed]["JobState"] == "FAILED"
    assert "Error in rule transform" in log, slurm_cluster.describe(run)
    assert re.search(rf"SLURM-job '{failed}' failed", log), slurm_cluster.describe(run)
    assert "failing on purpose for sample b" in slurm_log_text(tmp_path / "slurm", failed)
    # The other sample went through (keep-going), and nothing ran after the failure.
    assert slurm_cluster.job_states()[by_comment["rule_transform_wildcards_a"]] == "COMPLETED"
    assert "rule_combine" not in by_comment
    assert not (tmp_path / "slurm" / "results" / "summary.txt").exists()


def slurm_log_text(workdir: Path, job_id: str) -> str:
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log"))
    assert logs, f"no Slurm log for job {job_id}"
    return logs[0].read_text(errors="replace")
