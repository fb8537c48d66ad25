"""timing.txt's benchmark files come from the rules' own benchmark: declarations."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_snakemake, workflow_config

pytestmark = pytest.mark.workflow


def job_inputs(output: str, rule: str) -> list[str]:
    """The inputs of ``rule``'s job in a dry run's job listing."""
    blocks = re.split(r"\n(?=\[[^\n]*\]\nrule |rule )", output)
    for block in blocks:
        if re.search(rf"(^|\n)rule {rule}:", block):
            match = re.search(r"\n\s+input: ([^\n]*)", block)
            return match.group(1).split(", ") if match else []
    raise AssertionError(f"no {rule} job in the dry run")


def hand_written_list(results: str, shards: list[str], parts: list[str]) -> list[str]:
    """The list rules/common.smk used to spell out, rule by rule."""
    bench = f"{results}/benchmarks"
    return [
        *(f"{bench}/detect/{s}.tsv" for s in shards),
        *(f"{bench}/embed/{s}.tsv" for s in shards),
        f"{bench}/outliers.tsv",
        f"{bench}/select_objects.tsv",
        *(f"{bench}/caption/part-{p}.tsv" for p in parts),
        f"{bench}/analyse_concepts.tsv",
        f"{bench}/export_results.tsv",
        f"{bench}/training_selection.tsv",
        f"{bench}/projection.tsv",
        f"{bench}/explorer.tsv",
        f"{bench}/report_galleries.tsv",
        f"{bench}/report_overview.tsv",
    ]


def test_timing_lists_every_benchmarked_job_of_the_run(tmp_path, demo_scene_dir, demo_models):
    config = workflow_config(tmp_path / "results", demo_scene_dir, demo_models)
    output = run_snakemake(tmp_path, config, "--dry-run").stdout
    shards = sorted(set(re.findall(r"wildcards: shard=([^\s,]+)", output)))
    parts = [f"{p:03d}" for p in range(config["captions"]["partitions"])]
    assert len(shards) > 1
    expected = hand_written_list(config["results"], shards, parts)
    assert job_inputs(output, "write_timing") == expected
    # the report's timing table: every one but its own
    overview = [p for p in job_inputs(output, "report_overview") if "/benchmarks/" in p]
    assert overview == expected[:-1]
