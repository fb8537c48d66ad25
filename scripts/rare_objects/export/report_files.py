"""Per-object report files of the exported tree: ``{crop}_desc.txt`` and ``{crop}_probs.png``.

``_desc.txt`` follows the original's layout line for line::

    Sample Token: {sample_token}
    Is Outlier: {True/False}
    YOLO Class: {class_name}
    Target Matches: {target_matches}
    Final outlier (Top concept not common): {True/False}
    Cropped Image Path: {path}
    Original Image Path: {original_path}
    Confidence={confidence}, bbox={bbox}

    Generated caption:
    {description}

    Top concept: {top_concept} (in common classes: {True/False})

Formatting (ours, the original's numbers were not specified): booleans as
Python's ``True``/``False``; a missing value as ``None``; ``confidence`` with
4 decimals (``0.8712``); ``bbox`` as ``[x1, y1, x2, y2]`` in original-image
pixels with 1 decimal (``[12.0, 30.5, 110.2, 98.0]``); target matches as a
comma-separated list (``bicycle, motorcycle``) or ``None`` when empty; a
missing caption as ``None`` followed by `` (error: ...)`` when the caption
failed. The file ends with a newline.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from rare_objects.io import atomic

log = logging.getLogger("rare_objects.export.report_files")

# Fonts able to render Japanese, in order of preference.
CJK_FONT_CANDIDATES = (
    "Noto Sans CJK JP",
    "Noto Sans JP",
    "Noto Sans CJK",
    "Noto Serif CJK JP",
    "Source Han Sans JP",
    "Source Han Sans",
    "IPAexGothic",
    "IPAGothic",
    "IPAPGothic",
    "TakaoGothic",
    "TakaoPGothic",
    "VL Gothic",
    "Hiragino Sans",
    "Hiragino Kaku Gothic ProN",
    "Yu Gothic",
    "Meiryo",
    "MS Gothic",
    "Droid Sans Japanese",
    "Droid Sans Fallback",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
)


def _missing(value) -> bool:
    if value is None:
        return True
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(value, float) and math.isnan(value)


def _text(value) -> str:
    if _missing(value):
        return "None"
    if (
        hasattr(value, "item")
        and not isinstance(value, (str, bytes))
        and getattr(value, "ndim", 0) == 0
    ):
        value = value.item()  # numpy scalar -> Python (np.True_ -> True)
    return str(value)


def _bool(value) -> str:
    if _missing(value):
        return "None"
    return str(bool(value))


def _bbox(record: dict) -> str:
    box = record.get("bbox")
    if box is None or (not isinstance(box, (list, tuple)) and _missing(box)):
        if all(k in record for k in ("x1", "y1", "x2", "y2")):
            box = [record[k] for k in ("x1", "y1", "x2", "y2")]
        else:
            return "None"
    return "[" + ", ".join(f"{float(v):.1f}" for v in list(box)) + "]"


def _matches(value) -> str:
    if value is None or (not hasattr(value, "__len__") and _missing(value)):
        return "None"
    if isinstance(value, str):
        return value or "None"
    items = [str(v) for v in list(value)]
    return ", ".join(items) if items else "None"


def format_desc(record: dict, common_classes: Sequence[str] | None = None) -> str:
    """The text of one object's ``_desc.txt`` (see the module docstring for the layout).

    ``record`` holds the ``detection_results.json`` fields (``sample_token``,
    ``is_outlier``, ``class_name``, ``target_matches``, ``is_final_outlier``,
    ``path``, ``original_path``, ``confidence``, ``bbox`` or ``x1..y2``,
    ``description``, ``top_concept``) plus optionally ``top_concept_is_common``
    and ``caption_error``/``error``. Without ``top_concept_is_common`` it is
    derived from ``common_classes`` when given.
    """
    confidence = record.get("confidence")
    conf_text = "None" if _missing(confidence) else f"{float(confidence):.4f}"
    description = record.get("description")
    if _missing(description):
        error = record.get("caption_error", record.get("error"))
        caption = "None" if _missing(error) else f"None (error: {error})"
    else:
        caption = str(description)
    top = record.get("top_concept")
    in_common = record.get("top_concept_is_common")
    if _missing(in_common) and common_classes is not None and not _missing(top):
        in_common = top in set(common_classes)
    lines = [
        f"Sample Token: {_text(record.get('sample_token'))}",
        f"Is Outlier: {_bool(record.get('is_outlier'))}",
        f"YOLO Class: {_text(record.get('class_name'))}",
        f"Target Matches: {_matches(record.get('target_matches'))}",
        f"Final outlier (Top concept not common): {_bool(record.get('is_final_outlier'))}",
        f"Cropped Image Path: {_text(record.get('path'))}",
        f"Original Image Path: {_text(record.get('original_path'))}",
        f"Confidence={conf_text}, bbox={_bbox(record)}",
        "",
        "Generated caption:",
        caption,
        "",
        f"Top concept: {_text(top)} (in common classes: {_bool(in_common)})",
    ]
    return "\n".join(lines) + "\n"


def write_desc(
    record: dict, path: str | os.PathLike, common_classes: Sequence[str] | None = None
) -> None:
    """Write :func:`format_desc` of ``record`` to ``path`` (UTF-8, atomically)."""
    atomic.write_text(path, format_desc(record, common_classes))


_CJK_FILE_HINTS = ("ipa", "cjk", "takao", "droid", "wqy", "vlgothic", "sourcehan", "noto")


def _register_new_system_cjk_fonts(font_manager) -> None:
    """matplotlib caches the font list once per cache folder; a CJK font installed after
    that is not in it, so add system font files that look CJK and are not listed yet."""
    known = {f.fname for f in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if path not in known and any(h in os.path.basename(path).lower() for h in _CJK_FILE_HINTS):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):  # an unreadable font file: skip it
                continue


@functools.lru_cache(maxsize=1)
def find_cjk_font() -> str | None:
    """The family name of an installed font that renders Japanese, or None."""
    from matplotlib import font_manager

    _register_new_system_cjk_fonts(font_manager)
    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in CJK_FONT_CANDIDATES:
        if name in installed:
            return name
    for name in sorted(installed):  # any other CJK family
        if "CJK" in name or ("Gothic" in name and ("IPA" in name or "Takao" in name)):
            return name
    return None


def plot_probabilities(
    concepts: Sequence[str],
    probs: Sequence[float],
    out_png: str | os.PathLike,
    title: str = "",
    top_k: int = 10,
) -> Path:
    """Horizontal bar plot of the ``top_k`` most probable concepts (highest at the top).

    Uses the Agg backend through matplotlib's object API (no pyplot state, safe
    in threads). Japanese text renders when a CJK font is installed
    (:func:`find_cjk_font`); otherwise the default font is used and the
    missing-glyph warnings are silenced (such characters show as boxes).
    The PNG is written atomically.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pairs = [(str(c), float(p)) for c, p in zip(list(concepts or []), list(probs or []))]
    pairs.sort(key=lambda cp: -cp[1])  # stable: ties keep their order
    pairs = pairs[: max(0, int(top_k))]
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)

    font = find_cjk_font()
    rc = {"font.family": [font, "DejaVu Sans"]} if font else {}
    with rc_context(rc), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*[Gg]lyph .* missing from .*")
        warnings.filterwarnings("ignore", message=r".*findfont.*")
        fig = Figure(figsize=(6.4, 0.35 * max(len(pairs), 1) + 1.4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        names = [c for c, _ in pairs][::-1]
        values = [p for _, p in pairs][::-1]
        if pairs:
            bars = ax.barh(range(len(pairs)), values, color="#4C72B0")
            ax.set_yticks(range(len(pairs)), labels=names)
            for bar, v in zip(bars, values):
                ax.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    f" {v:.3f}",
                    va="center",
                    ha="left",
                    fontsize=8,
                )
            ax.set_xlim(0, max(max(values) * 1.2, 1e-6))
        else:
            ax.text(0.5, 0.5, "no concepts", ha="center", va="center", transform=ax.transAxes)
            ax.set_yticks([])
        ax.set_xlabel("probability")
        if title:
            ax.set_title(title, fontsize=10)
        fig.tight_layout()
        with atomic.atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    return out
