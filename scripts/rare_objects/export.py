"""Assemble per-object results and export the original's results tree.

Tree (as the original's detect_improved.py, without the timestamp folder):
    outliers/ inliers/ final_outliers/ targets/<class>/   original images (+ crops, _desc.txt, _probs.png)
    detection_results.json  {target}_results.json  statistics.json  rejected_images.csv
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("rare_objects.export")

# Fields of the original's detection_results.json, in its order, then ours.
RESULT_FIELDS = [
    "path", "original_path", "sample_token", "class_name", "confidence", "bbox", "is_outlier", "outlier_code",
    "top_concept", "is_final_outlier", "is_yolo_potential", "target_matches", "description",
]
EXTRA_FIELDS = ["object_id", "camera", "global_score", "class_score", "selected", "selection_reason", "caption_error"]


def target_matches(class_names: pd.Series, targets: dict[str, list[str]]) -> pd.Series:
    """Targets whose near classes include each object's detector class."""
    by_class: dict[str, list[str]] = {}
    for target, near in targets.items():
        for name in [target, *near]:
            by_class.setdefault(name, [])
            if target not in by_class[name]:
                by_class[name].append(target)
    return class_names.map(lambda c: list(by_class.get(c, [])))


def assemble(
    detections: pd.DataFrame,
    outliers: pd.DataFrame,
    targets: dict[str, list[str]],
    selection: pd.DataFrame | None = None,
    captions: pd.DataFrame | None = None,
    concepts: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per detected object with every result field (nulls where a stage did not cover it)."""
    frame = detections.merge(
        outliers[["object_id", "global_score", "class_score", "outlier_code", "is_outlier"]], on="object_id", how="left"
    )
    frame["outlier_code"] = frame["outlier_code"].fillna(0).astype(int)
    frame["is_outlier"] = frame["is_outlier"].fillna(False).astype(bool)
    frame["target_matches"] = target_matches(frame["class_name"], targets)
    frame["is_yolo_potential"] = frame["target_matches"].map(bool)
    if selection is not None:
        frame = frame.merge(
            selection[["object_id", "selected", "reason"]].rename(columns={"reason": "selection_reason"}),
            on="object_id", how="left",
        )
    if captions is not None:
        frame = frame.merge(
            captions[["object_id", "description", "error"]].rename(columns={"error": "caption_error"}),
            on="object_id", how="left",
        )
    if concepts is not None:
        frame = frame.merge(
            concepts[["object_id", "top_concept", "top_concept_is_common", "is_final_outlier", "concepts", "probabilities"]],
            on="object_id", how="left",
        )
    for column in ("selected", "selection_reason", "description", "caption_error", "top_concept", "is_final_outlier"):
        if column not in frame:
            frame[column] = None
    frame["crop_name"] = export_names(frame)
    return frame


def export_names(frame: pd.DataFrame) -> pd.Series:
    """Crop file stems as the original's '{image}_{index}_{class}', unique across folders."""
    stems = frame["image_path"].map(lambda p: Path(p).stem)
    per_image = pd.DataFrame({"stem": stems, "image_id": frame["image_id"]}).drop_duplicates()
    clashing = set(per_image["stem"][per_image["stem"].duplicated(keep=False)])
    unique_stem = [s if s not in clashing else f"{s}__{i[:8]}" for s, i in zip(stems, frame["image_id"])]
    return pd.Series(
        [f"{s}_{r}_{c}" for s, r, c in zip(unique_stem, frame["rank"], frame["class_name"])], index=frame.index
    )


def image_export_name(row) -> str:
    """The original image's name in the tree (made unique the same way as its crops)."""
    crop_stem = row["crop_name"].rsplit("_", 2)[0]
    return crop_stem + Path(row["image_path"]).suffix.lower()


def _json_value(value):
    if value is None:
        return None
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.ndarray):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if value is pd.NA:
        return None
    return value


def _is_true(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and np.isnan(value)) and bool(value)


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
    return {k: _json_value(v) for k, v in record.items()}


def desc_record(row, crop_path: str | None) -> dict:
    """What report_files.format_desc needs for one object's _desc.txt."""
    record = result_record(dict(row), crop_path)
    record["top_concept_is_common"] = _json_value(row.get("top_concept_is_common"))
    return record


def result_records(frame: pd.DataFrame, crop_paths: dict[str, str]):
    """Yield the JSON objects of detection_results.json, one per object."""
    for row in frame.to_dict("records"):
        yield result_record(row, crop_paths.get(row["object_id"]))


def write_json_array(records, path: str | os.PathLike) -> int:
    """Stream records into a JSON array file without holding them all; returns the count."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("[")
        for record in records:
            handle.write(",\n  " if count else "\n  ")
            handle.write(json.dumps(record, ensure_ascii=False))
            count += 1
        handle.write("\n]\n" if count else "]\n")
    os.replace(tmp, path)
    return count


def statistics(frame: pd.DataFrame, image_table: pd.DataFrame, rejects: pd.DataFrame, targets: dict) -> dict:
    """statistics.json: the original's fields first, then image accounting."""
    matches = Counter(t for ts in frame["target_matches"] for t in ts)
    captioned = frame["description"].notna() if "description" in frame else pd.Series(False, index=frame.index)
    final = frame["is_final_outlier"].map(_is_true)
    return {
        "total_objects": int(len(frame)),
        "processed_objects": int(captioned.sum()),
        "outlier_count": int(frame["is_outlier"].sum()),
        "final_outlier_count": int(final.sum()),
        "target_counts": {t: int(matches.get(t, 0)) for t in targets},
        "class_distribution": {k: int(v) for k, v in frame["class_name"].value_counts().sort_index().items()},
        "outlier_code_counts": {str(k): int(v) for k, v in frame["outlier_code"].value_counts().sort_index().items()},
        "total_images": int(len(image_table)),
        "images_with_objects": int((image_table["n_objects"] > 0).sum()),
        "rejected_images": int(len(rejects)),
        "rejected_by_reason": {
            k: int(v) for k, v in rejects["reason"].map(lambda r: r.split(":")[0]).value_counts().sort_index().items()
        },
    }


def place_file(source: str | os.PathLike, target: Path, mode: str = "copy") -> None:
    """Put ``source`` at ``target`` by copy, hard link or symbolic link (once)."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "hardlink":
        try:
            os.link(source, target)
            return
        except OSError:  # another file system: fall back to a copy
            pass
    elif mode == "symlink":
        os.symlink(os.path.abspath(source), target)
        return
    shutil.copyfile(source, target)


def per_object_file_switches(export: dict, max_images: int | None) -> dict:
    """The original's defaults logic: --minimal_io, or no --max_images (a full
    run), turns off every per-object file (crops, descriptions, plots)."""
    full_run = max_images is None
    off = export["minimal_io"] or full_run
    return {
        "save_crops": export["save_crops"] and not off,
        "save_descriptions": export["save_descriptions"] and not off,
        "save_probability_plots": export["save_probability_plots"] and not off,
        "keep_cropped_objects": not export["cleanup_temp_crops"] and not off,
    }


def choose_inliers(frame: pd.DataFrame, max_inliers: int, seed: int) -> pd.Index:
    inliers = frame.index[~frame["is_outlier"].to_numpy()]
    if len(inliers) <= max_inliers:
        return inliers
    picked = np.sort(np.random.default_rng(seed).choice(len(inliers), size=max_inliers, replace=False))
    return inliers[picked]


def export_tree(
    frame: pd.DataFrame,
    out_dir: str | os.PathLike,
    targets: dict,
    switches: dict,
    link_mode: str = "copy",
    max_inliers: int = 200,
    seed: int = 0,
    write_desc=None,
    write_plot=None,
    open_image=None,
) -> dict[str, str]:
    """Write outliers/, inliers/, final_outliers/, targets/<class>/ (and cropped_objects/).

    Returns object_id -> crop file path for the objects whose crop was saved.
    ``write_desc(row, path)`` and ``write_plot(row, path)`` write the per-object
    description and probability plot of captioned objects.
    """
    from . import images

    open_image = open_image or images.open_rgb
    out_dir = Path(out_dir)
    folders = {name: out_dir / name for name in ("outliers", "inliers", "final_outliers", "targets")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        (folders["targets"] / target).mkdir(exist_ok=True)

    inlier_rows = set(choose_inliers(frame, max_inliers, seed))
    final = frame["is_final_outlier"].map(_is_true) if "is_final_outlier" in frame else False
    exported = frame["is_outlier"] | frame.index.isin(inlier_rows) | final | frame["target_matches"].map(bool)
    placements: dict[int, list[Path]] = {}  # row index -> folders that get its crop and files
    for idx, row in frame[exported].iterrows():
        image_name = image_export_name(row)
        homes = []
        if row["is_outlier"]:
            homes.append(folders["outliers"])
        elif idx in inlier_rows:
            homes.append(folders["inliers"])
        for home in homes:
            place_file(row["image_path"], home / image_name, link_mode)
        if _is_true(row.get("is_final_outlier")):
            place_file(row["image_path"], folders["final_outliers"] / image_name, link_mode)
        for target in row["target_matches"]:
            place_file(row["image_path"], folders["targets"] / target / image_name, link_mode)
        if homes:
            placements[idx] = homes

    crop_paths: dict[str, str] = {}
    want_all = switches.get("keep_cropped_objects", False)
    if not (switches.get("save_crops") or want_all or switches.get("save_descriptions") or switches.get("save_probability_plots")):
        return crop_paths
    rows_needing_crops = frame.index if want_all else pd.Index(sorted(placements))
    for image_path, group in frame.loc[rows_needing_crops].groupby("image_path", sort=False):
        try:
            image = open_image(image_path) if (switches.get("save_crops") or want_all) else None
        except Exception as error:  # recorded in the log; the rest of the export goes on
            log.warning("cannot cut crops of %s: %s", image_path, error)
            image = None
        for idx, row in group.iterrows():
            name = row["crop_name"]
            crop = images.crop(image, (row["x1"], row["y1"], row["x2"], row["y2"])) if image is not None else None
            if want_all and crop is not None:
                target = out_dir / "cropped_objects" / f"{name}.jpg"
                target.parent.mkdir(exist_ok=True)
                crop.save(target, quality=95)
                crop_paths[row["object_id"]] = str(target)
            for home in placements.get(idx, []):
                if switches.get("save_crops") and crop is not None:
                    crop.save(home / f"{name}.jpg", quality=95)
                    crop_paths.setdefault(row["object_id"], str(home / f"{name}.jpg"))
                captioned = row.get("description") is not None and not pd.isna(row.get("description"))
                if captioned and switches.get("save_descriptions") and write_desc:
                    write_desc(row, crop_paths.get(row["object_id"]), home / f"{name}_desc.txt")
                if captioned and switches.get("save_probability_plots") and write_plot:
                    write_plot(row, home / f"{name}_probs.png")
    return crop_paths
