"""The run's cache folder: one rule, from the validated config."""

from __future__ import annotations

import os
from pathlib import Path

from rare_objects.runtime import offline
from rare_objects.runtime.config import defaults


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


def test_detector_settings_come_from_the_schema_and_the_precision_rule():
    from rare_objects.stages.detection import DetectSettings

    section = defaults()["detector"]
    on_cpu = DetectSettings.from_config(section, "cpu")
    assert (on_cpu.conf, on_cpu.iou, on_cpu.max_det, on_cpu.max_objects) == (0.25, 0.5, 100, 50)
    assert on_cpu.max_side == 1280 and not on_cpu.half
    assert DetectSettings.from_config(section, "cuda:1").half  # fp16 on a GPU, as open_clip
