"""The run's cache folder: one rule, from the validated config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rare_objects.runtime import offline
from rare_objects.runtime.config import defaults


def _run_fresh(code: str, **env_changes: str | None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with scripts/ on its path (what a rule job starts
    with: no module already imported); an environment variable set to None is removed."""
    env = {**os.environ, "PYTHONPATH": str(Path(offline.__file__).parents[2])}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def test_cache_folder_follows_config_then_environment_then_results(tmp_path, monkeypatch):
    config = {**defaults(), "results": str(tmp_path / "runs" / "demo")}
    monkeypatch.delenv("RARE_OBJECTS_CACHE", raising=False)
    assert config["cache_dir"] is None  # the schema's default
    assert offline.cache_dir_for(config) == tmp_path / "runs" / ".cache"
    monkeypatch.setenv("RARE_OBJECTS_CACHE", str(tmp_path / "scratch"))
    assert offline.cache_dir_for(config) == tmp_path / "scratch"
    config["cache_dir"] = str(tmp_path / "configured")
    assert offline.cache_dir_for(config) == Path(tmp_path / "configured")


def test_configure_points_every_library_cache_into_the_folder(tmp_path, monkeypatch):
    for var in ("YOLO_CONFIG_DIR", "HF_HOME", "MPLCONFIGDIR", "NUMBA_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    cache = offline.configure(tmp_path / "cache")
    assert cache == tmp_path / "cache"
    for var in ("YOLO_CONFIG_DIR", "HF_HOME", "MPLCONFIGDIR", "NUMBA_CACHE_DIR"):
        assert Path(os.environ[var]).is_relative_to(cache), var
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_configure_gives_ultralytics_a_local_font_without_importing_matplotlib(tmp_path):
    import matplotlib

    code = (
        "import sys; from rare_objects.runtime import offline;"
        f" offline.configure({str(tmp_path / 'cache')!r});"
        " print('matplotlib' in sys.modules)"
    )
    done = _run_fresh(code, YOLO_CONFIG_DIR=None)
    assert done.stdout.strip() == "False"
    font = tmp_path / "cache" / "ultralytics" / "Ultralytics" / "Arial.ttf"
    expected = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    assert font.read_bytes() == expected.read_bytes()


def test_detector_settings_come_from_the_schema_and_the_precision_rule():
    from rare_objects.stages.detection import DetectSettings

    section = defaults()["detector"]
    on_cpu = DetectSettings.from_config(section, "cpu")
    assert (on_cpu.conf, on_cpu.iou, on_cpu.max_det, on_cpu.max_objects) == (0.25, 0.5, 100, 50)
    assert on_cpu.max_side == 1280 and not on_cpu.half
    assert DetectSettings.from_config(section, "cuda:1").half  # fp16 on a GPU, as open_clip


def _machine(monkeypatch, nvidia_smi: bool, device_nodes: bool, visible: str | None):
    """A machine as rare_objects.runtime.devices sees it at parse time."""
    from rare_objects.runtime import devices

    monkeypatch.setattr(
        devices.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if nvidia_smi else None
    )
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0"] * device_nodes)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return devices


def test_auto_is_a_gpu_when_one_is_visible_at_parse_time_and_in_the_job(monkeypatch):
    import torch

    for nvidia_smi, nodes, visible, expected in [
        (True, True, None, True),
        (True, False, None, True),  # the driver's nvidia-smi says there is a GPU
        (False, True, "0", True),  # a container given a GPU without nvidia-smi
        (False, False, None, False),
        (True, True, "", False),  # CUDA_VISIBLE_DEVICES hides every GPU
        (True, True, "-1", False),
    ]:
        devices = _machine(monkeypatch, nvidia_smi, nodes, visible)
        assert devices.gpu_visible() is expected
        assert devices.uses_gpu("auto") is expected
        assert devices.uses_gpu("cpu") is False and devices.uses_gpu("cuda:1") is True
        # the job follows the same rule: no GPU that the parse did not reserve
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert devices.resolve_device("auto") == ("cuda" if expected else "cpu")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        assert devices.resolve_device("auto") == "cpu"  # reserved, but torch has no CUDA
        assert devices.resolve_device("cpu") == "cpu"


def test_reading_the_speed_only_keys_imports_no_validator():
    """A caption job reads the schema for its speed-only keys at start; jsonschema (tens of
    milliseconds of its start-up) is imported only where a config is validated."""
    code = (
        "import sys; from rare_objects.runtime.speed_settings import speed_only_keys;"
        " assert speed_only_keys(); print('jsonschema' in sys.modules);"
        " from rare_objects.runtime.config import defaults; defaults();"
        " print('jsonschema' in sys.modules)"
    )
    done = _run_fresh(code)
    assert done.stdout.split() == ["False", "True"]


def test_end_rule_flushes_the_log_and_ends_the_process_with_success(tmp_path):
    """end_rule exits without the interpreter's teardown: what the script logged and wrote
    to stderr (the rule's log) is in the file, the exit status is 0, and nothing after the
    call runs (neither the rest of the script nor exit handlers)."""
    log_file = tmp_path / "rule.log"
    marker = tmp_path / "after"
    code = (
        "import atexit, pathlib, sys; from rare_objects.runtime import end_rule;"
        " from rare_objects.runtime.logs import setup_rule_logging;"
        f" log = setup_rule_logging({str(log_file)!r});"
        f" atexit.register(pathlib.Path({str(marker)!r}).write_text, 'exit handler');"
        " log.info('table written'); sys.stderr.write('a library warning, unterminated');"
        " end_rule(log);"
        f" pathlib.Path({str(marker)!r}).write_text('after end_rule')"
    )
    done = _run_fresh(code)
    assert done.returncode == 0
    text = log_file.read_text()
    assert "INFO rare_objects: table written" in text
    assert "a library warning, unterminated" in text
    assert text.rstrip().endswith("INFO rare_objects: rule finished")
    assert not marker.exists()


def test_a_captioner_from_a_complete_section_imports_no_validator():
    """The caption rule builds its captioner from the workflow's validated section
    (``Backend.make``); every value is given, so the schema is not validated again
    (jsonschema and the validation are tens of milliseconds of a caption job's start)."""
    import json

    section = defaults()["captions"]
    section["openai"]["encode_processes"] = 0
    code = (
        "import json, sys; from rare_objects.backends import captioning;"
        f" section = json.loads({json.dumps(section)!r});"
        " c = captioning.get_backend('openai').make(section, None);"
        " print('jsonschema' in sys.modules, c.concurrency, c.max_tokens, c.prompt == section['prompt']);"
        " c.close()"
    )
    done = _run_fresh(code)
    assert done.stdout.split() == [
        "False",
        str(section["openai"]["concurrency"]),
        str(section["max_new_tokens"]),
        "True",
    ]
