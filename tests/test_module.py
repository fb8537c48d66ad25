"""The workflow used as a Snakemake module of another project's Snakefile.

``module rom: snakefile: ...; config: config["rare_objects"]`` with ``use rule * from rom``
(the rule names as they are) and with ``use rule * from rom as rom_*`` (the usual way to
combine workflows: every rule name prefixed). Both plan the jobs the workflow itself
plans; on a finished run of the workflow both have nothing to do, and the prefixed module
reruns the report's overview (whose benchmark list once depended on rule names) to the
end. The module's configuration is a section of the other project's, so a rule script
that read the other project's configuration instead of its own would fail.
"""

from __future__ import annotations

import pytest

from tests.conftest import REPO, planned_jobs, run_snakemake, workflow_config

pytestmark = pytest.mark.workflow

PREFIX = "rom_"


def outer_snakefile(folder, prefix: str | None) -> str:
    """Another project's Snakefile that uses this workflow as the module ``rom``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("Snakefile.prefixed" if prefix else "Snakefile.plain")
    use = f"use rule * from rom as {prefix}*" if prefix else "use rule * from rom"
    path.write_text(
        "# another project's workflow: one section of its config is the module's\n"
        "module rom:\n"
        f"    snakefile: {str(REPO / 'Snakefile')!r}\n"
        '    config: config["rare_objects"]\n'
        "\n"
        "\n"
        f"{use}\n"
    )
    return str(path)


def test_as_a_module_with_and_without_a_prefix_it_plans_the_workflows_jobs(
    tmp_path, workflow_images, demo_models
):
    config = workflow_config(tmp_path / "results", workflow_images, demo_models)
    own = planned_jobs(tmp_path, config)
    assert {"detect", "embed", "caption", "report_overview", "write_timing", "all"} <= set(own)
    outer = tmp_path / "project"
    project = {"rare_objects": config}
    plain = planned_jobs(tmp_path, project, "--snakefile", outer_snakefile(outer, None))
    assert plain == own
    prefixed = planned_jobs(tmp_path, project, "--snakefile", outer_snakefile(outer, PREFIX))
    assert prefixed == {f"{PREFIX}{rule}": count for rule, count in own.items()}


def test_as_a_module_on_a_finished_run_nothing_is_left_and_the_prefixed_report_reruns(
    workflow_run, tmp_path
):
    workdir, config = workflow_run
    plain = outer_snakefile(tmp_path, None)
    prefixed = outer_snakefile(tmp_path, PREFIX)
    # the same outputs, params and code as the workflow's own run
    project = {"rare_objects": config}
    assert planned_jobs(workdir, project, "--snakefile", plain) == {}
    assert planned_jobs(workdir, project, "--snakefile", prefixed) == {}
    # A real run of rom_report_overview: its inputs are every benchmark of the run but
    # its own (the prefix once made it depend on its own benchmark: a cyclic graph).
    timing = workdir / "results" / "report" / "timing.html"
    before = timing.stat().st_mtime_ns
    result = run_snakemake(
        workdir, project, "--snakefile", prefixed, "--forcerun", f"{PREFIX}report_overview"
    )
    text = result.stdout + result.stderr
    assert f"rule {PREFIX}report_overview:" in text
    assert f"rule {PREFIX}write_timing:" in text  # it lists report_overview's benchmark
    assert timing.stat().st_mtime_ns > before
    assert "detect" in timing.read_text() and "report_overview" not in timing.read_text()
    # and the workflow itself finds the run complete
    assert planned_jobs(workdir, config) == {}
