"""The caption backend registry: its names, each backend's declarations, and the rule they drive.

The dry runs at the end read the caption jobs that Snakemake plans for each backend:
their `gpu` resource and their inputs come from the registry, not from the rules.
"""

from __future__ import annotations

import pytest

from rare_objects.backends import captioning
from rare_objects.runtime import config, devices, models
from tests.conftest import run_snakemake, workflow_config


@pytest.fixture(scope="module")
def settings() -> dict:
    return captioning.complete_settings({"transformers": {"model": "/models/qwen"}})


def test_registry_names_are_the_schema_enum():
    enum = config.load_schema()["properties"]["captions"]["properties"]["backend"]["enum"]
    assert sorted(enum) == captioning.names() == ["none", "openai", "transformers"]
    for name in captioning.names():
        assert captioning.get_backend(name).name == name


def test_every_backend_with_options_has_its_schema_section():
    sections = config.defaults()["captions"]
    for name in captioning.names():
        if name != "none":
            assert isinstance(sections[name], dict) and sections[name], name


def test_unknown_backend_names_the_known_ones():
    with pytest.raises(ValueError, match="none, openai, transformers"):
        captioning.get_backend("bogus")
    with pytest.raises(ValueError, match="bogus"):
        captioning.make_captioner("bogus", {})


def test_a_name_cannot_be_registered_twice():
    twin = captioning.Backend(name="openai", make=lambda s, d: None, batch_size=lambda s: 1)
    with pytest.raises(ValueError, match="registered twice"):
        captioning.register(twin)
    assert captioning.get_backend("openai") is not twin


def test_transformers_declarations(settings):
    backend = captioning.get_backend("transformers")
    assert [backend.needs_gpu(d) for d in ("cpu", "auto", "cuda", "cuda:1")] == [
        False,
        True,
        True,
        True,
    ]
    assert backend.model_files(settings) == ["/models/qwen"]
    # the key names the path in the start-up check's message
    assert backend.model_paths(settings) == {"captions.transformers.model": "/models/qwen"}
    assert backend.batch_size(settings) == settings["transformers"]["batch_size"] == 4
    assert backend.batch_size({"transformers": {"batch_size": 9}}) == 9
    assert backend.device("cpu") == "cpu"
    with pytest.raises(ValueError, match="needs a device"):
        backend.make(settings, None)


def test_openai_declarations(settings):
    backend = captioning.get_backend("openai")
    assert not any(backend.needs_gpu(d) for d in ("cpu", "auto", "cuda", "cuda:1"))
    assert backend.model_files(settings) == []
    assert backend.batch_size(settings) == 2 * settings["openai"]["concurrency"]
    assert backend.device("cuda") is None  # no local model: the device is never resolved
    captioner = captioning.make_captioner("openai", {"openai": {"concurrency": 3}})
    assert (captioner.backend, captioner.concurrency) == ("openai", 3)
    assert captioner.max_tokens == settings["max_new_tokens"]  # the schema's default


def test_none_declarations(settings):
    backend = captioning.get_backend("none")
    assert not any(backend.needs_gpu(d) for d in ("cpu", "auto", "cuda"))
    assert backend.model_files(settings) == []
    assert backend.device("cuda") is None
    assert captioning.make_captioner("none", settings, "cpu") is None


def test_settings_get_the_schema_defaults_and_are_checked():
    filled = captioning.complete_settings({"openai": {"concurrency": 5}})
    defaults = config.defaults()["captions"]
    assert filled["openai"] == {**defaults["openai"], "concurrency": 5}
    assert filled["prompt"] == defaults["prompt"] == captioning.DEFAULT_PROMPT
    with pytest.raises(config.ConfigError, match="concurrency"):
        captioning.complete_settings({"openai": {"concurrency": 0}})


def test_one_dtype_rule_for_every_model(monkeypatch):
    import torch

    assert devices.resolve_dtype("auto", "cpu") is torch.float32
    assert devices.resolve_dtype("auto", "cpu", gpu_auto="bf16") is torch.float32
    assert devices.resolve_dtype("auto", "cuda") is torch.float16  # open_clip's
    assert devices.resolve_dtype("bf16", "cpu") is torch.bfloat16  # asked for: given
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert devices.resolve_dtype("auto", "cuda:0", gpu_auto="bf16") is torch.bfloat16  # Qwen2-VL's
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert devices.resolve_dtype("auto", "cuda:0", gpu_auto="bf16") is torch.float16
    with pytest.raises(ValueError, match="unknown precision"):
        devices.resolve_dtype("int8", "cpu")


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        captioning.get_backend("transformers").device("cuda")
    assert captioning.get_backend("transformers").device("auto") == "cpu"


# --- the rule, as Snakemake plans it -----------------------------------------------------------


def _caption_jobs(text: str) -> list[dict[str, str]]:
    """The `rule caption:` blocks of a dry run's output, as {field: value}."""
    jobs, job = [], None
    for line in text.splitlines():
        if line.startswith("rule "):
            job = {} if line.strip() == "rule caption:" else None
            if job is not None:
                jobs.append(job)
        elif job is not None and line.startswith("    ") and ": " in line:
            key, value = line.strip().split(": ", 1)
            job[key] = value
    return jobs


@pytest.mark.parametrize(
    "backend, device, gpu, loads_model",
    [
        ("transformers", "cuda", "1", True),
        ("transformers", "cpu", "0", True),
        ("openai", "cuda", "0", False),
        ("none", "cuda", "0", False),
    ],
)
def test_dry_run_takes_gpu_and_model_input_from_the_registry(
    tmp_path, workflow_images, demo_models, backend, device, gpu, loads_model
):
    config = workflow_config(tmp_path / "results", workflow_images, demo_models, device=device)
    config["captions"]["backend"] = backend
    model = config["captions"]["transformers"]["model"]
    target = str(tmp_path / "results" / "tables" / "captions" / "part-000.parquet")
    result = run_snakemake(tmp_path, config, "--dry-run", target)
    jobs = _caption_jobs(result.stdout + result.stderr)
    assert len(jobs) == 1, result.stdout[-3000:]
    (job,) = jobs
    resources = dict(item.split("=", 1) for item in job["resources"].split(", "))
    assert resources["gpu"] == gpu
    inputs = job["input"].split(", ")
    assert inputs[0].endswith("tables/selection.parquet")
    # a model folder is an input with every file in it (a file replaced inside reruns it)
    assert inputs[1:] == (models.model_input_files(model) if loads_model else [])
    assert (model in inputs) == loads_model
    assert not loads_model or f"{model}/model.safetensors" in inputs
