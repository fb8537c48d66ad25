"""Single-stage reruns, read from dry runs on a completed run."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO, planned_jobs

pytestmark = pytest.mark.workflow

# The map, the explorer and the report's files (rules/report.smk) follow every result table.
VIEWS = {"projection", "explorer", "report_galleries", "report_overview"}
DOWNSTREAM_OF_OUTLIERS = {
    "outliers",
    "tsne_plot",
    "select_objects",
    "caption",
    "analyse_concepts",
    "training_selection",
    "export_results",
    "write_timing",
} | VIEWS


def _with(config: dict, section: str, **values) -> dict:
    return {**config, section: {**config[section], **values}}


def test_a_completed_run_has_nothing_left_to_do(workflow_run):
    workdir, config = workflow_run
    assert planned_jobs(workdir, config) == {}


def test_forcerun_of_one_stage_reruns_it_and_what_depends_on_it(workflow_run):
    workdir, config = workflow_run
    planned = planned_jobs(workdir, config, "--forcerun", "outliers")
    assert set(planned) == DOWNSTREAM_OF_OUTLIERS | {"all"}
    assert planned["caption"] == config["captions"]["partitions"]
    planned = planned_jobs(workdir, config, "--forcerun", "analyse_concepts")
    assert (
        set(planned)
        == {"analyse_concepts", "training_selection", "export_results", "write_timing", "all"}
        | VIEWS
    )


def test_until_embed_stops_after_the_embeddings(tmp_path, workflow_images, demo_models):
    from tests.conftest import workflow_config

    config = workflow_config(tmp_path / "results", workflow_images, demo_models)
    planned = planned_jobs(tmp_path, config, "--until", "embed")
    assert set(planned) == {"detect", "embed"}
    assert planned["detect"] == planned["embed"] > 1


def test_changing_the_concept_list_reruns_only_the_analysis_and_export(workflow_run):
    workdir, config = workflow_run
    changed = _with(
        config,
        "concepts",
        list=[*config.get("concepts", {}).get("list", ["car", "truck"]), "forklift"],
    )
    assert (
        set(planned_jobs(workdir, changed))
        == {"analyse_concepts", "training_selection", "export_results", "write_timing", "all"}
        | VIEWS
    )


def test_changing_a_caption_setting_reruns_captions_and_what_follows(workflow_run):
    workdir, config = workflow_run
    changed = _with(config, "captions", prompt="Describe the vehicle.")
    planned = planned_jobs(workdir, changed)
    assert (
        set(planned)
        == {
            "caption",
            "analyse_concepts",
            "training_selection",
            "export_results",
            "write_timing",
            "all",
        }
        | VIEWS
    )
    assert planned["caption"] == config["captions"]["partitions"]


def test_a_training_selection_setting_reruns_the_selection_and_the_export_only(workflow_run):
    workdir, config = workflow_run
    changed = {**config, "training_selection": {"budget_fraction": 0.5}}
    assert set(planned_jobs(workdir, changed)) == {
        "training_selection",
        "export_results",
        "report_overview",
        "write_timing",
        "all",
    }


def test_a_coco_setting_reruns_the_export_only(workflow_run):
    workdir, config = workflow_run
    changed = _with(config, "export", coco={"objects": ["outliers", "targets"]})
    assert set(planned_jobs(workdir, changed)) == {
        "export_results",
        "report_overview",
        "write_timing",
        "all",
    }


def test_changing_the_diversity_threshold_keeps_detect_embed_and_lof(workflow_run):
    workdir, config = workflow_run
    planned = planned_jobs(workdir, _with(config, "selection", similarity_threshold=0.5))
    assert "select_objects" in planned
    assert not {"detect", "embed", "outliers"} & set(planned)


def test_editing_a_rule_script_reruns_that_rule(workflow_run, tmp_path):
    workdir, config = workflow_run
    copy = tmp_path / "workflow"
    copy.mkdir()
    for name in ("Snakefile", "rules", "scripts", "schemas", "envs", "profiles", "report"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy / name)
    snakefile = str(copy / "Snakefile")
    assert planned_jobs(workdir, config, "--snakefile", snakefile) == {}
    script = copy / "scripts" / "tsne_plot.py"
    script.write_text(script.read_text() + "\n# a change\n")
    planned = planned_jobs(workdir, config, "--snakefile", snakefile)
    # timing.txt and the report's timing table are built from every rule's benchmark file,
    # so they follow any rerun
    assert set(planned) == {"tsne_plot", "write_timing", "report_overview", "all"}
