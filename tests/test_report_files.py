"""Per-object report files: the _desc.txt text (golden) and the probability plots."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rare_objects.export import report_files as rf
from rare_objects.runtime import offline


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    offline.configure(tmp_path_factory.mktemp("cache"))  # matplotlib's cache out of $HOME


RECORD = {
    "path": "outliers/n008__CAM_FRONT__1533_3_bicycle.jpg",
    "original_path": "/data/nuscenes/samples/CAM_FRONT/n008__CAM_FRONT__1533.jpg",
    "sample_token": "ca9a282c9e77460f8360f564131a8af5",
    "class_name": "bicycle",
    "confidence": np.float32(0.8712),
    "bbox": [612.25, 301.0, 700.75, 455.5],
    "is_outlier": np.True_,
    "outlier_code": 3,
    "top_concept": "construction_vehicle",
    "is_final_outlier": True,
    "is_yolo_potential": True,
    "target_matches": ["bicycle", "motorcycle"],
    "description": "A yellow excavator digging at a road construction site.",
}

GOLDEN = """\
Sample Token: ca9a282c9e77460f8360f564131a8af5
Is Outlier: True
YOLO Class: bicycle
Target Matches: bicycle, motorcycle
Final outlier (Top concept not common): True
Cropped Image Path: outliers/n008__CAM_FRONT__1533_3_bicycle.jpg
Original Image Path: /data/nuscenes/samples/CAM_FRONT/n008__CAM_FRONT__1533.jpg
Confidence=0.8712, bbox=[612.2, 301.0, 700.8, 455.5]

Generated caption:
A yellow excavator digging at a road construction site.

Top concept: construction_vehicle (in common classes: False)
"""


def test_desc_golden():
    assert rf.format_desc(RECORD, common_classes=["car", "truck"]) == GOLDEN
    # an explicit top_concept_is_common wins over the list
    assert rf.format_desc({**RECORD, "top_concept_is_common": False}) == GOLDEN


def test_desc_missing_values_and_failed_caption(tmp_path):
    record = {
        **RECORD,
        "bbox": None,
        "x1": 1,
        "y1": 2.5,
        "x2": 30,
        "y2": 40.25,
        "target_matches": [],
        "description": None,
        "caption_error": "HTTP 503 (failed after 4 attempts)",
        "top_concept": None,
        "is_final_outlier": pd.NA,
        "sample_token": None,
    }
    text = rf.format_desc(record, common_classes=["car"])
    lines = text.splitlines()
    assert lines[0] == "Sample Token: None"
    assert lines[3] == "Target Matches: None"
    assert lines[4] == "Final outlier (Top concept not common): None"
    assert lines[7] == "Confidence=0.8712, bbox=[1.0, 2.5, 30.0, 40.2]"
    assert lines[8:11] == [
        "",
        "Generated caption:",
        "None (error: HTTP 503 (failed after 4 attempts))",
    ]
    assert lines[-1] == "Top concept: None (in common classes: None)"
    out = tmp_path / "sub" / "x_desc.txt"
    rf.write_desc(RECORD, out, common_classes=[])
    assert out.read_text(encoding="utf-8") == GOLDEN
    assert [p.name for p in out.parent.iterdir()] == ["x_desc.txt"]


CONCEPT_NAMES = [
    "construction_vehicle",
    "truck",
    "trailer",
    "car",
    "bus",
    "bicycle",
    "motorcycle",
    "barrier",
    "pedestrian",
    "animal",
    "debris",
    "stroller",
]
PROBS = list(np.linspace(0.2, 0.01, len(CONCEPT_NAMES)))


def _render(monkeypatch, tmp_path, font, name):
    monkeypatch.setattr(rf, "find_cjk_font", lambda: font)
    out = tmp_path / name
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rf.plot_probabilities(
            CONCEPT_NAMES, PROBS, out, title="外れ値: 建設車両 (construction_vehicle)"
        )
    return out, caught


def test_plot_without_cjk_font_falls_back_quietly(monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    out, caught = _render(monkeypatch, tmp_path, None, "none_probs.png")
    assert [str(w.message) for w in caught] == []
    assert "Glyph" not in caplog.text and "findfont" not in caplog.text
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 300 and im.height > 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["none_probs.png"]  # no temp file left


def test_plot_uses_the_font_found(monkeypatch, tmp_path):
    # No CJK font is installed here: stand-ins show that the family found is the one used.
    sans, caught = _render(monkeypatch, tmp_path, "DejaVu Sans", "sans.png")
    serif, _ = _render(monkeypatch, tmp_path, "DejaVu Serif", "serif.png")
    assert [str(w.message) for w in caught if "findfont" in str(w.message)] == []
    with Image.open(sans) as a, Image.open(serif) as b:
        assert a.size == b.size
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_plot_top_k_and_empty(tmp_path):
    tall = rf.plot_probabilities(CONCEPT_NAMES, PROBS, tmp_path / "k10.png", "t", top_k=10)
    short = rf.plot_probabilities(CONCEPT_NAMES, PROBS, tmp_path / "k3.png", "t", top_k=3)
    with Image.open(tall) as a, Image.open(short) as b:
        assert a.height > b.height
    empty = rf.plot_probabilities([], [], tmp_path / "empty.png", "nothing")
    with Image.open(empty) as im:
        assert im.format == "PNG"


def test_real_cjk_font_when_installed():
    rf.find_cjk_font.cache_clear()
    name = rf.find_cjk_font()
    if name is None:
        if os.environ.get("CI"):
            pytest.fail(
                "CI installs fonts-ipafont-gothic (.ci/install-fonts.sh), but no CJK font was found"
            )
        pytest.skip("no CJK font installed on this machine")
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(
        font_manager.FontProperties(family=name), fallback_to_default=False
    )
    assert FT2Font(path).get_char_index(ord("車")) != 0
