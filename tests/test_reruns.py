"""Single-stage reruns, read from dry runs on a completed run."""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path

import pytest

from rare_objects.runtime import config as config_checks
from rare_objects.runtime import speed_settings
from tests.conftest import REPO, planned_jobs, run_snakemake

pytestmark = pytest.mark.workflow

# The map, the explorer and the report's files (rules/report.smk) follow every result table.
VIEWS = {"projection", "explorer", "report_galleries", "report_overview"}
DOWNSTREAM_OF_OUTLIERS = {
    "outliers",
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


def test_a_map_setting_reruns_the_one_projection_behind_tsne_png_and_the_explorer(workflow_run):
    workdir, config = workflow_run
    planned = planned_jobs(workdir, _set(config, ("projection", "perplexity"), 12))
    # one job projects the embeddings; it writes tsne.png and the explorer's table
    assert set(planned) == {"projection", "explorer", "write_timing", "report_overview", "all"}
    assert planned["projection"] == 1


def test_editing_a_rule_script_reruns_that_rule(workflow_run, tmp_path):
    workdir, config = workflow_run
    copy = tmp_path / "workflow"
    copy.mkdir()
    for name in ("Snakefile", "rules", "scripts", "schemas", "envs", "profiles", "report"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy / name)
    snakefile = str(copy / "Snakefile")
    assert planned_jobs(workdir, config, "--snakefile", snakefile) == {}
    script = copy / "scripts" / "projection.py"
    script.write_text(script.read_text() + "\n# a change\n")
    planned = planned_jobs(workdir, config, "--snakefile", snakefile)
    # the explorer reads the map's table; timing.txt and the report's timing table are built
    # from every rule's benchmark file, so they follow any rerun
    assert set(planned) == {"projection", "explorer", "write_timing", "report_overview", "all"}


# --- settings that change only speed rerun nothing; settings that change results do ---
# The schema marks the first kind x-speed-only (rare_objects.runtime.speed_settings): the
# rules leave them out of their params and the scripts read them from snakemake.config.
# tests/test_speed_settings.py shows that each gives the same results.


def _set(config: dict, path: tuple[str, ...], value) -> dict:
    changed = copy.deepcopy(config)
    section = changed
    for part in path[:-1]:
        section = section.setdefault(part, {})
    section[path[-1]] = value
    return changed


def _another_value(config: dict, path: tuple[str, ...]):
    """A valid value of ``path`` other than the run's (the schema's default where unset)."""
    value = config_checks.get(config_checks.validate(copy.deepcopy(config)), ".".join(path))
    return (not value) if isinstance(value, bool) else value + 1


def _shards(workdir) -> int:
    return len(list((workdir / "results" / "tables" / "detections").glob("*.parquet")))


@pytest.mark.parametrize("path", speed_settings.speed_only_keys(), ids=".".join)
def test_a_speed_only_setting_reruns_nothing(workflow_run, path):
    workdir, config = workflow_run
    assert planned_jobs(workdir, _set(config, path, _another_value(config, path))) == {}


def test_a_setting_of_another_caption_backend_reruns_nothing(workflow_run):
    workdir, config = workflow_run
    assert config["captions"]["backend"] == "transformers"
    changed = _set(config, ("captions", "openai", "timeout_s"), 7)
    assert planned_jobs(workdir, changed) == {}


@pytest.mark.parametrize(
    "path, value",
    [(("detector", "conf"), 0.3), (("images", "min_side"), 9)],
    ids=["detector.conf", "images.min_side"],
)
def test_a_detection_result_setting_reruns_detect_and_everything_after(workflow_run, path, value):
    workdir, config = workflow_run
    planned = planned_jobs(workdir, _set(config, path, value))
    assert planned["detect"] == planned["embed"] == _shards(workdir)
    assert planned["caption"] == config["captions"]["partitions"]
    assert DOWNSTREAM_OF_OUTLIERS <= set(planned)
    assert "detector_classes" not in planned  # it reads the weights only


@pytest.mark.parametrize(
    "path, value",
    [(("embedder", "precision"), "bf16"), (("embedder", "storage"), "float16")],
    ids=["embedder.precision", "embedder.storage"],
)
def test_an_embedding_result_setting_reruns_embed_and_everything_after(workflow_run, path, value):
    workdir, config = workflow_run
    planned = planned_jobs(workdir, _set(config, path, value))
    assert planned["embed"] == _shards(workdir)
    assert set(planned) == {"embed"} | DOWNSTREAM_OF_OUTLIERS | {"all"}


def test_a_caption_model_setting_reruns_the_captions_and_what_follows(workflow_run):
    workdir, config = workflow_run
    changed = _set(config, ("captions", "transformers", "max_pixels"), 9408)
    planned = planned_jobs(workdir, changed)
    assert planned["caption"] == config["captions"]["partitions"]
    assert not {"detect", "embed", "outliers", "select_objects"} & set(planned)
    assert {"analyse_concepts", "export_results"} <= set(planned)


# --- model files: every local model path is checked at start and is a rule input ---


def test_a_model_path_that_does_not_exist_is_refused_at_start(workflow_run):
    workdir, config = workflow_run
    changed = _set(config, ("detector", "weights"), "/nonexistent/yolov8x.pt")
    changed = _set(changed, ("captions", "transformers", "model"), "/nonexistent/qwen2-vl")
    result = run_snakemake(workdir, changed, "--dry-run", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Nothing to be done" not in text
    assert "model files not found (2 problem(s))" in text
    assert "detector.weights: '/nonexistent/yolov8x.pt' does not exist" in text
    assert "captions.transformers.model: '/nonexistent/qwen2-vl' does not exist" in text


def test_the_demo_models_may_be_missing_the_workflow_builds_them(tmp_path, workflow_images):
    from tests.conftest import workflow_config

    models = tmp_path / "no-models-yet"  # demo.models_dir: the build rules' outputs
    config = workflow_config(tmp_path / "results", workflow_images, models)
    planned = planned_jobs(tmp_path, config)
    assert {"build_demo_detector", "build_demo_clip", "build_demo_vlm"} <= set(planned)
    # another missing file in that folder is no output of theirs: refused
    typo = _set(config, ("detector", "weights"), str(models / "detecter.pt"))
    result = run_snakemake(tmp_path, typo, "--dry-run", check=False)
    assert result.returncode != 0
    message = f"detector.weights: '{models / 'detecter.pt'}' does not exist"
    assert message in result.stdout + result.stderr


def test_a_file_replaced_in_a_model_folder_reruns_its_stage(workflow_run):
    """A folder is compared by its own mtime, which a file rewritten inside it does not
    change: each file of a model folder is an input too."""
    workdir, config = workflow_run
    folder = Path(config["captions"]["transformers"]["model"])
    weights = folder / "model.safetensors"
    folder_times = os.stat(folder).st_atime_ns, os.stat(folder).st_mtime_ns
    times = os.stat(weights).st_atime_ns, os.stat(weights).st_mtime_ns
    try:
        os.utime(weights, ns=(times[0], time.time_ns()))  # as if new weights were copied in
        assert os.stat(folder).st_mtime_ns == folder_times[1]
        planned = planned_jobs(workdir, config)
    finally:
        os.utime(weights, ns=times)
    assert planned["caption"] == config["captions"]["partitions"]
    assert not {"detect", "embed", "outliers", "select_objects"} & set(planned)
    assert {"analyse_concepts", "export_results"} <= set(planned)
    assert planned_jobs(workdir, config) == {}


def _rule_block(text: str, rule: str) -> dict[str, str]:
    """The first `rule <rule>:` block of a dry run's output, as {field: value}."""
    block = None
    for line in text.splitlines():
        if line.startswith("rule "):
            if block is not None:
                break
            block = {} if line.strip() == f"rule {rule}:" else None
        elif block is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            block[key] = value
    return block or {}


def test_the_neighbour_search_goes_on_a_gpu_only_when_outliers_device_says_so(workflow_run):
    workdir, config = workflow_run
    # the default (cpu) is no param at all: the runs made before the setting stay up to date
    assert planned_jobs(workdir, _set(config, ("outliers", "device"), "cpu")) == {}
    on_gpu = _set(config, ("outliers", "device"), "cuda")
    planned = planned_jobs(workdir, on_gpu)
    assert planned["outliers"] == 1 and "detect" not in planned and "embed" not in planned
    result = run_snakemake(workdir, on_gpu, "--dry-run")
    block = _rule_block(result.stdout + result.stderr, "outliers")
    resources = dict(item.split("=", 1) for item in block["resources"].split(", "))
    assert resources["gpu"] == "1"
