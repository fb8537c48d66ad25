"""One exported object's row: the detection joined with every stage's result, its file names,
and its detection_results.json record.

:func:`assemble` turns a detection shard into rows with every result field (nulls where a
stage did not cover an object), looking the per-object results up by object_id in the
tables :func:`read_object_tables` reads once per export. It also names each object's
files in the results tree: ``crop_name`` (the original's ``{image}_{index}_{class}``) and
``image_name`` (the original image's name there); both are built from data through
:func:`rare_objects.io.names.safe_name`, so no class name or image stem can leave its folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.io import schemas
from rare_objects.io.names import safe_name
from rare_objects.stages.targets import target_matches

# Fields of ours that follow the original's in each detection_results.json record (the
# original's fields and their order: tests/test_workflow.py RESULT_FIELDS).
EXTRA_FIELDS = [
    "object_id",
    "camera",
    "global_score",
    "class_score",
    "selected",
    "selection_reason",
    "caption_error",
]

# The columns of each per-object table that the export reads.
LOOKUP_COLUMNS = {
    "outliers": ["global_score", "class_score", "outlier_code", "is_outlier"],
    "selection": ["selected", "reason"],
    "captions": ["description", "error"],
    "concepts": [
        "top_concept",
        "top_concept_is_common",
        "is_final_outlier",
        "concepts",
        "probabilities",
    ],
}

# Longest image stem in a file name of the tree: with a clash suffix (10), the object's
# index and its class (at most 57) and "_probs.png", a name stays well under 255 bytes.
IMAGE_STEM_CHARS = 128
_IMAGE_SUFFIX = re.compile(r"\.[a-z0-9]{1,10}")


def assemble(
    detections: pd.DataFrame,
    outliers: pd.DataFrame,
    targets: dict[str, list[str]],
    selection: pd.DataFrame | None = None,
    captions: pd.DataFrame | None = None,
    concepts: pd.DataFrame | None = None,
    clashing_stems: set[str] | None = None,
) -> pd.DataFrame:
    """One row per detected object with every result field (nulls where a stage did not cover it).

    The result tables may have ``object_id`` as a column or as their index;
    indexed ones (:func:`read_object_tables`) are looked up without being
    hashed again, which is what makes shard-by-shard assembly cheap.
    ``clashing_stems``: see :func:`file_names`.
    """
    frame = detections.copy()
    ids = frame["object_id"]
    _attach(frame, outliers, ids, LOOKUP_COLUMNS["outliers"])
    frame["outlier_code"] = frame["outlier_code"].fillna(0).astype(int)
    frame["is_outlier"] = frame["is_outlier"].fillna(False).astype(bool)
    frame["target_matches"] = target_matches(frame["class_name"], targets)
    frame["is_yolo_potential"] = frame["target_matches"].map(bool)
    if selection is not None:
        _attach(frame, selection, ids, LOOKUP_COLUMNS["selection"], {"reason": "selection_reason"})
    if captions is not None:
        _attach(frame, captions, ids, LOOKUP_COLUMNS["captions"], {"error": "caption_error"})
    if concepts is not None:
        _attach(frame, concepts, ids, LOOKUP_COLUMNS["concepts"])
    for column in (
        "selected",
        "selection_reason",
        "description",
        "caption_error",
        "top_concept",
        "is_final_outlier",
    ):
        if column not in frame:
            frame[column] = None
    frame["crop_name"], frame["image_name"] = file_names(frame, clashing_stems)
    return frame


def by_object_id(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` indexed by its (unique) object_id."""
    if table.index.name == "object_id":
        return table
    return table.set_index("object_id", verify_integrity=True)


def _attach(
    frame: pd.DataFrame, table: pd.DataFrame, ids: pd.Series, columns: list[str], rename=None
) -> None:
    """Add ``table``'s ``columns`` to ``frame`` by object_id (a left join; absent ids give nulls)."""
    found = by_object_id(table)[columns].reindex(ids.to_numpy())
    for column in columns:
        frame[(rename or {}).get(column, column)] = found[column].to_numpy()


def read_object_tables(
    outliers, selection=None, captions=(), concepts=None
) -> dict[str, pd.DataFrame]:
    """The per-object results that the export looks up, indexed by object_id, with
    only the columns the export reads."""

    def read(paths, name):
        return by_object_id(schemas.read_parts(paths, ["object_id", *LOOKUP_COLUMNS[name]]))

    tables = {"outliers": read(outliers, "outliers")}
    for name, paths in (("selection", selection), ("captions", captions), ("concepts", concepts)):
        if paths is not None and (isinstance(paths, (str, os.PathLike)) or len(paths)):
            tables[name] = read(paths, name)
    return tables


def _safe_values(values: pd.Series, make) -> pd.Series:
    """``make`` of each value, computed once per distinct value (classes repeat millions of times)."""
    distinct = pd.unique(values.to_numpy())
    return values.map(dict(zip(distinct, map(make, distinct))))


def image_stems(image_paths: pd.Series) -> pd.Series:
    """Each image's file stem made safe (:func:`safe_name`, at most :data:`IMAGE_STEM_CHARS`)."""
    return _safe_values(image_paths, lambda p: safe_name(Path(p).stem, IMAGE_STEM_CHARS))


def clashing_stems(image_ids, image_paths) -> set[str]:
    """Safe file stems shared by more than one image (their files get the image id as a suffix)."""
    per_image = pd.DataFrame(
        {"stem": image_stems(pd.Series(list(image_paths))), "image_id": list(image_ids)}
    )
    per_image = per_image.drop_duplicates()
    return set(per_image["stem"][per_image["stem"].duplicated(keep=False)])


def file_names(
    frame: pd.DataFrame, clashing: set[str] | None = None
) -> tuple[pd.Series, pd.Series]:
    """Crop file stems as the original's '{image}_{index}_{class}', unique across folders,
    and the original image's file name in the tree.

    Image stems and class names go through :func:`safe_name`. A stem that more than one
    image has (``clashing``, from :func:`clashing_stems` over every exported object;
    computed from ``frame`` when not given) gets ``__`` and the image id's first 8
    characters.
    """
    if clashing is None:
        clashing = clashing_stems(frame["image_id"], frame["image_path"])
    stems = image_stems(frame["image_path"])
    unique_stem = [
        s if s not in clashing else f"{s}__{i[:8]}" for s, i in zip(stems, frame["image_id"])
    ]
    classes = _safe_values(frame["class_name"], safe_name)
    suffixes = _safe_values(frame["image_path"], image_suffix)
    crop_names = [f"{s}_{r}_{c}" for s, r, c in zip(unique_stem, frame["rank"], classes)]
    image_names = [s + suffix for s, suffix in zip(unique_stem, suffixes)]
    return (
        pd.Series(crop_names, index=frame.index, dtype=object),
        pd.Series(image_names, index=frame.index, dtype=object),
    )


def image_suffix(image_path: str) -> str:
    """The image's extension in lower case (``.jpg``), or nothing when it is not a plain one."""
    suffix = Path(image_path).suffix.lower()
    return suffix if _IMAGE_SUFFIX.fullmatch(suffix) else ""


def json_value(value):
    """``value`` as plain JSON data (numpy scalars and arrays to Python, NaN and NA to None)."""
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.ndarray):
        return [json_value(v) for v in value]
    if isinstance(value, list):
        return [json_value(v) for v in value]
    if value is pd.NA:
        return None
    return value


def is_true(value) -> bool:
    """True for a set flag; False for False and for a missing value (None, NaN, NA)."""
    return (
        value is not None
        and value is not pd.NA
        and not (isinstance(value, float) and np.isnan(value))
        and bool(value)
    )


def result_record(row: dict, crop_path: str | None) -> dict:
    """The detection_results.json object of one assembled row."""
    record = {
        "path": crop_path,
        "original_path": row["image_path"],
        "sample_token": row["sample_token"],
        "class_name": row["class_name"],
        "confidence": round(float(row["confidence"]), 6),
        "bbox": [round(float(row[k]), 2) for k in ("x1", "y1", "x2", "y2")],
        "is_outlier": bool(row["is_outlier"]),
        "outlier_code": int(row["outlier_code"]),
        "top_concept": row.get("top_concept"),
        "is_final_outlier": row.get("is_final_outlier"),
        "is_yolo_potential": bool(row["is_yolo_potential"]),
        "target_matches": list(row["target_matches"]),
        "description": row.get("description"),
    }
    for field in EXTRA_FIELDS:
        if field in row:
            record[field] = row[field]
    return {k: json_value(v) for k, v in record.items()}


def desc_record(row, crop_path: str | None) -> dict:
    """What report_files.format_desc needs for one object's _desc.txt."""
    record = result_record(dict(row), crop_path)
    record["top_concept_is_common"] = json_value(row.get("top_concept_is_common"))
    return record


def result_records(frame: pd.DataFrame, crop_paths: dict[str, str], chunk: int = 10_000):
    """Yield the JSON objects of detection_results.json, one per object
    (rows are turned into dicts ``chunk`` at a time, not all at once)."""
    for start in range(0, len(frame), chunk):
        for row in frame.iloc[start : start + chunk].to_dict("records"):
            yield result_record(row, crop_paths.get(row["object_id"]))
