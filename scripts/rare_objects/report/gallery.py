"""The Snakemake report's galleries and tables.

Galleries (one folder each, one subfolder per group, one small JPEG per crop):

- ``outliers_by_class``: the outliers of each detector class;
- ``final_outliers_by_concept``: the final outliers of each top concept;
- ``targets``: the objects matching each target class.

Each group holds at most ``max_per_group`` crops, the most anomalous first
(highest of the global and class outlier scores), so the report stays the same
size however many objects a run has. The choice streams the outlier table in
record batches keeping a running top-k per group (:func:`choose_items`), and
only the chosen objects' detection rows and originals are read.

``galleries.json`` maps each crop file (relative to the galleries' parent
folder) to its group and its report labels (class, confidence, scores,
caption, top concept, ...), which the workflow's ``report()`` flags read.
Group names come from data and are made safe for paths with
:func:`rare_objects.io.names.safe_name`.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from rare_objects.io import atomic
from rare_objects.io.images import encode_jpeg
from rare_objects.io.names import safe_name
from rare_objects.report.projection import anomaly_score
from rare_objects.report.shown_objects import iter_crops, object_rows
from rare_objects.stages.targets import is_target

log = logging.getLogger("rare_objects.report.gallery")

GALLERIES = {
    "outliers_by_class": "Outliers per class",
    "final_outliers_by_concept": "Final outliers per top concept",
    "targets": "Target classes",
}
ITEM_COLUMNS = [
    "gallery",
    "group",
    "object_id",
    "score",
    "class_name",
    "score_global",
    "score_class",
    "outlier_code",
]
OUTLIER_COLUMNS = [
    "object_id",
    "class_name",
    "score_global",
    "score_class",
    "outlier_code",
    "is_outlier",
]


def _top(frame: pd.DataFrame, cap: int) -> pd.DataFrame:
    """Per (gallery, group): the ``cap`` highest scores (most anomalous), ties by object_id."""
    ordered = frame.sort_values(
        ["gallery", "group", "score", "object_id"],
        ascending=[True, True, False, True],
        na_position="last",
        kind="stable",
    )
    return ordered.groupby(["gallery", "group"], sort=False).head(cap).reset_index(drop=True)


def choose_items(
    outlier_paths,
    concepts: pd.DataFrame | None,
    targets: dict[str, list[str]],
    max_per_group: int,
    batch_size: int = 500_000,
) -> pd.DataFrame:
    """The gallery items: ``gallery``, ``group``, ``object_id``, ``score``, ``rank`` (0 = most anomalous)
    and the object's class and outlier scores (higher = more anomalous).

    Streams the outlier table(s) ``batch_size`` rows at a time; memory is one
    batch plus the items kept so far.
    """
    if max_per_group < 0:
        raise ValueError(f"max_per_group must be >= 0, got {max_per_group}")
    paths = (
        [outlier_paths] if isinstance(outlier_paths, (str, os.PathLike)) else list(outlier_paths)
    )
    final_concept = pd.Series(dtype=object)
    if concepts is not None and len(concepts):
        final = concepts[concepts["is_final_outlier"].fillna(False).astype(bool)]
        final_concept = final.set_index("object_id")["top_concept"].fillna("(none)")
    kept = pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS})
    if max_per_group == 0:
        return kept.assign(rank=pd.Series(dtype=int))
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(
            batch_size=batch_size, columns=OUTLIER_COLUMNS
        ):
            rows = batch.to_pandas()
            rows["score"] = anomaly_score(rows["score_global"], rows["score_class"])
            parts = [kept]
            outliers = rows[rows["is_outlier"].astype(bool)]
            parts.append(
                outliers.assign(gallery="outliers_by_class", group=outliers["class_name"])[
                    ITEM_COLUMNS
                ]
            )
            is_final = rows["object_id"].isin(final_concept.index)
            if is_final.any():
                finals = rows[is_final]
                groups = final_concept.reindex(finals["object_id"]).to_numpy()
                parts.append(
                    finals.assign(gallery="final_outliers_by_concept", group=groups)[ITEM_COLUMNS]
                )
            for target in targets:
                matching = rows[is_target(rows["class_name"], targets, target)]
                parts.append(matching.assign(gallery="targets", group=target)[ITEM_COLUMNS])
            kept = _top(
                pd.concat([p for p in parts if len(p)] or [kept], ignore_index=True), max_per_group
            )
    kept["rank"] = kept.groupby(["gallery", "group"], sort=False).cumcount()
    return kept


# Report labels are strings: the report's page sorts and compares them as text.
def _label_number(value, digits: int) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.{digits}f}"


def _label_text(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def write_galleries(
    items: pd.DataFrame,
    detection_paths,
    captions: pd.DataFrame | None,
    concepts: pd.DataFrame | None,
    out_dirs: dict[str, str | os.PathLike],
    index_path: str | os.PathLike,
    open_image,
    crop_size: int = 256,
    workers: int = 2,
) -> dict:
    """Cut and write every item's crop; write and return the index (file -> group, labels)."""
    out_dirs = {name: Path(path) for name, path in out_dirs.items()}
    for folder in out_dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    ids = pd.unique(items["object_id"])
    details = object_rows(
        detection_paths,
        ids,
        columns=[
            "object_id",
            "image_path",
            "sample_token",
            "class_name",
            "confidence",
            "x1",
            "y1",
            "x2",
            "y2",
        ],
    ).set_index("object_id")
    caption = (
        captions.set_index("object_id")["description"]
        if captions is not None and len(captions)
        else pd.Series(dtype=object)
    )
    concept = (
        concepts.set_index("object_id")["top_concept"]
        if concepts is not None and len(concepts)
        else pd.Series(dtype=object)
    )

    index: dict[str, dict] = {}
    places: dict[str, list[Path]] = {}
    rank_width = (
        len(str(int(items["rank"].max()) + 1)) if len(items) else 1
    )  # "01" sorts before "10"
    for item in items.itertuples(index=False):
        folder = out_dirs[item.gallery] / safe_name(item.group)
        name = f"{item.rank:04d}_{safe_name(item.object_id)}.jpg"
        relative = f"{out_dirs[item.gallery].name}/{folder.name}/{name}"
        detail = details.loc[item.object_id] if item.object_id in details.index else None
        index[relative] = {
            "gallery": item.gallery,
            "group": str(item.group),
            "object_id": item.object_id,
            "labels": {
                "rank": f"{int(item.rank) + 1:0{rank_width}d}",
                "class": _label_text(item.class_name),
                "confidence": _label_number(
                    detail["confidence"] if detail is not None else None, 3
                ),
                "global score": _label_number(item.score_global, 3),
                "class score": _label_number(item.score_class, 3),
                "outlier code": str(int(item.outlier_code)),
                "caption": _label_text(caption.get(item.object_id)),
                "top concept": _label_text(concept.get(item.object_id)),
                "image": _label_text(detail["image_path"] if detail is not None else None),
            },
        }
        folder.mkdir(exist_ok=True)
        places.setdefault(item.object_id, []).append(folder / name)

    missing = [i for i in places if i not in details.index]
    for object_id in missing:
        log.warning("gallery object %s has no detection row; left out", object_id)
    written = 0
    for object_id, crop in iter_crops(
        details.loc[[i for i in places if i in details.index]], open_image, crop_size, workers
    ):
        if isinstance(crop, BaseException):
            log.warning("no crop for %s: %s", object_id, crop)
            continue
        data = encode_jpeg(crop, quality=85)
        for path in places[object_id]:
            atomic.write_bytes(path, data)
            written += 1
    # Only crops that exist are indexed, so the report lists no missing file.
    index = {k: v for k, v in index.items() if (out_dirs[v["gallery"]].parent / k).exists()}
    atomic.write_text(index_path, json.dumps(index, indent=1, ensure_ascii=False) + "\n")
    log.info("%d gallery crops written (%d objects)", written, len(places))
    return index


# --- tables as small HTML pages (the report shows text/html in a frame) --------------------------------

_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "th{background:#f0f0f0}"
)


def html_tables(title: str, sections: list[tuple[str, pd.DataFrame]], note: str = "") -> str:
    """A self-contained HTML page of titled tables (every cell escaped)."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h2>{html.escape(title)}</h2>",
    ]
    if note:
        parts.append(f"<p>{html.escape(note)}</p>")
    for heading, frame in sections:
        parts.append(f"<h3>{html.escape(heading)}</h3>")
        parts.append(frame.to_html(index=False, escape=True, na_rep="", border=0))
    parts.append("</body></html>\n")
    return "".join(parts)


def statistics_frames(statistics: dict) -> list[tuple[str, pd.DataFrame]]:
    """statistics.json as tables: the scalar figures, then one table per breakdown."""
    scalars = [(k, v) for k, v in statistics.items() if not isinstance(v, dict)]
    sections = [("Counts", pd.DataFrame(scalars, columns=["figure", "value"]))]
    for key, value in statistics.items():
        if isinstance(value, dict):
            sections.append((key, pd.DataFrame(list(value.items()), columns=["name", "count"])))
    return sections


def rejected_frames(
    rejects: pd.DataFrame, max_per_reason: int
) -> tuple[list[tuple[str, pd.DataFrame]], str]:
    """The rejected images by reason code, and up to ``max_per_reason`` of them listed per reason."""
    code = rejects["reason"].map(lambda r: str(r).split(":")[0])
    summary = code.value_counts().sort_index().rename_axis("reason").reset_index(name="images")
    listed = rejects.assign(code=code).sort_values(["code", "image_path"], kind="stable")
    listed = listed.groupby("code", sort=False).head(max_per_reason)
    columns = [c for c in ("image_path", "sample_token", "stage", "reason") if c in listed]
    note = f"{len(rejects)} images rejected; at most {max_per_reason} listed per reason."
    return [("By reason", summary), ("Images", listed[columns])], note
