"""Assemble per-object results and export the original's results tree.

Tree (as the original's detect_improved.py, without the timestamp folder):
    outliers/ inliers/ final_outliers/ targets/<class>/   original images (+ crops, _desc.txt, _probs.png)
    detection_results.json  {target}_results.json  statistics.json  rejected_images.csv

:func:`export_shards` streams: it holds one detection shard at a time plus the
few per-object result columns it looks up by object_id
(:func:`read_object_tables`), not every assembled row of the export. :func:`assemble` and :func:`export_tree` are the same
functions on one frame (what a test or a small run calls directly).

Every file the pass writes from the assembled rows is a *writer* (see
:class:`RecordsWriter`): a context manager with ``write_shard(frame, records)``
that gets each shard's assembled frame and its detection_results records in
export order, and publishes its file only when the pass ends without error.
detection_results.json and the {target}_results.json files are writers; other
outputs (the COCO file, :mod:`rare_objects.export.coco`) are passed to
:func:`export_shards` as ``writers``.
"""

from __future__ import annotations

import contextlib
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
    "path",
    "original_path",
    "sample_token",
    "class_name",
    "confidence",
    "bbox",
    "is_outlier",
    "outlier_code",
    "top_concept",
    "is_final_outlier",
    "is_yolo_potential",
    "target_matches",
    "description",
]
EXTRA_FIELDS = [
    "object_id",
    "camera",
    "global_score",
    "class_score",
    "selected",
    "selection_reason",
    "caption_error",
]


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
    clashing_stems: set[str] | None = None,
) -> pd.DataFrame:
    """One row per detected object with every result field (nulls where a stage did not cover it).

    The result tables may have ``object_id`` as a column or as their index;
    indexed ones (:func:`read_object_tables`) are looked up without being
    hashed again, which is what makes shard-by-shard assembly cheap.
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
    frame["crop_name"] = export_names(frame, clashing_stems)
    return frame


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


def clashing_stems(image_ids, image_paths) -> set[str]:
    """File stems shared by more than one image (their crops get the image id as a suffix)."""
    per_image = pd.DataFrame(
        {"stem": [Path(p).stem for p in image_paths], "image_id": list(image_ids)}
    )
    per_image = per_image.drop_duplicates()
    return set(per_image["stem"][per_image["stem"].duplicated(keep=False)])


def export_names(frame: pd.DataFrame, clashing: set[str] | None = None) -> pd.Series:
    """Crop file stems as the original's '{image}_{index}_{class}', unique across folders.

    ``clashing`` (from :func:`clashing_stems` over every exported object) is
    computed from ``frame`` when not given.
    """
    if clashing is None:
        clashing = clashing_stems(frame["image_id"], frame["image_path"])
    stems = frame["image_path"].map(lambda p: Path(p).stem)
    unique_stem = [
        s if s not in clashing else f"{s}__{i[:8]}" for s, i in zip(stems, frame["image_id"])
    ]
    return pd.Series(
        [f"{s}_{r}_{c}" for s, r, c in zip(unique_stem, frame["rank"], frame["class_name"])],
        index=frame.index,
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
    return {k: _json_value(v) for k, v in record.items()}


def desc_record(row, crop_path: str | None) -> dict:
    """What report_files.format_desc needs for one object's _desc.txt."""
    record = result_record(dict(row), crop_path)
    record["top_concept_is_common"] = _json_value(row.get("top_concept_is_common"))
    return record


def result_records(frame: pd.DataFrame, crop_paths: dict[str, str], chunk: int = 10_000):
    """Yield the JSON objects of detection_results.json, one per object
    (rows are turned into dicts ``chunk`` at a time, not all at once)."""
    for start in range(0, len(frame), chunk):
        for row in frame.iloc[start : start + chunk].to_dict("records"):
            yield result_record(row, crop_paths.get(row["object_id"]))


class JsonArrayWriter:
    """A JSON array file written one record at a time; it appears at ``path``
    only when closed without error (written to a temporary name until then)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        self._handle = None
        self.count = 0

    def write(self, record: dict) -> None:
        self._handle.write(",\n  " if self.count else "\n  ")
        self._handle.write(json.dumps(record, ensure_ascii=False))
        self.count += 1

    def __enter__(self):
        # Opened on entry, not on construction: a writer built but never entered
        # (the export failed before its pass) leaves no temporary file behind.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self._tmp, "w", encoding="utf-8")
        self._handle.write("[")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._handle.write("\n]\n" if self.count else "]\n")
            self._handle.close()
            os.replace(self._tmp, self.path)
        else:
            self._handle.close()
            self._tmp.unlink(missing_ok=True)
        return False


class RecordsWriter(JsonArrayWriter):
    """An export writer: the detection_results records that ``keep`` accepts
    (all by default), as a JSON array in export order."""

    def __init__(self, path: str | os.PathLike, keep=None):
        super().__init__(path)
        self.keep = keep

    def write_shard(self, frame: pd.DataFrame, records: list[dict]) -> None:
        for record in records:
            if self.keep is None or self.keep(record):
                self.write(record)


def matches_target(target: str):
    """``keep`` of a {target}_results.json writer."""
    return lambda record: target in record["target_matches"]


def write_json_array(records, path: str | os.PathLike) -> int:
    """Stream records into a JSON array file without holding them all; returns the count."""
    with JsonArrayWriter(path) as writer:
        for record in records:
            writer.write(record)
    return writer.count


class ObjectCounts:
    """The per-object figures of statistics.json, added up one frame at a time."""

    def __init__(self):
        self.total = self.captioned = self.outliers = self.final_outliers = 0
        self.targets: Counter = Counter()
        self.classes: Counter = Counter()
        self.codes: Counter = Counter()

    def add(self, frame: pd.DataFrame) -> None:
        self.total += len(frame)
        if "description" in frame:
            self.captioned += int(frame["description"].notna().sum())
        self.outliers += int(frame["is_outlier"].sum())
        self.final_outliers += int(frame["is_final_outlier"].map(_is_true).sum())
        self.targets.update(t for ts in frame["target_matches"] for t in ts)
        self.classes.update(frame["class_name"].value_counts().to_dict())
        self.codes.update(frame["outlier_code"].value_counts().to_dict())

    def statistics(
        self, total_images: int, images_with_objects: int, rejects: pd.DataFrame, targets: dict
    ) -> dict:
        """statistics.json: the original's fields first, then image accounting."""
        return {
            "total_objects": self.total,
            "processed_objects": self.captioned,
            "outlier_count": self.outliers,
            "final_outlier_count": self.final_outliers,
            "target_counts": {t: int(self.targets.get(t, 0)) for t in targets},
            "class_distribution": {k: int(v) for k, v in sorted(self.classes.items())},
            "outlier_code_counts": {str(k): int(v) for k, v in sorted(self.codes.items())},
            "total_images": int(total_images),
            "images_with_objects": int(images_with_objects),
            "rejected_images": int(len(rejects)),
            "rejected_by_reason": {
                k: int(v)
                for k, v in rejects["reason"]
                .map(lambda r: r.split(":")[0])
                .value_counts()
                .sort_index()
                .items()
            },
        }


def statistics(
    frame: pd.DataFrame, image_table: pd.DataFrame, rejects: pd.DataFrame, targets: dict
) -> dict:
    """statistics.json of one assembled frame (see :class:`ObjectCounts`)."""
    counts = ObjectCounts()
    counts.add(frame)
    return counts.statistics(
        len(image_table), int((image_table["n_objects"] > 0).sum()), rejects, targets
    )


def image_counts(image_table_paths) -> tuple[int, int]:
    """(images, images with objects) over the per-shard image tables, read one column at a time."""
    total = with_objects = 0
    for path in image_table_paths:
        n_objects = pd.read_parquet(path, columns=["n_objects"])["n_objects"]
        total += len(n_objects)
        with_objects += int((n_objects > 0).sum())
    return total, with_objects


def place_file(source: str | os.PathLike, target: Path, mode: str = "copy") -> None:
    """Put ``source`` at ``target`` by copy, hard link or symbolic link (once)."""
    if target.exists() or target.is_symlink():  # a link whose image has gone is still placed
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


def inlier_ordinals(n_inliers: int, max_inliers: int, seed: int) -> np.ndarray:
    """Which inliers (0 = the first in export order) get exported, in order: all, or a seeded sample."""
    if n_inliers <= max_inliers:
        return np.arange(n_inliers)
    return np.sort(np.random.default_rng(seed).choice(n_inliers, size=max_inliers, replace=False))


def choose_inliers(frame: pd.DataFrame, max_inliers: int, seed: int) -> pd.Index:
    inliers = frame.index[~frame["is_outlier"].to_numpy()]
    return inliers[inlier_ordinals(len(inliers), max_inliers, seed)]


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
    inlier_rows: set | None = None,
) -> dict[str, str]:
    """Write outliers/, inliers/, final_outliers/, targets/<class>/ (and cropped_objects/).

    Returns object_id -> crop file path for the objects whose crop was saved.
    ``write_desc(row, path)`` and ``write_plot(row, path)`` write the per-object
    description and probability plot of captioned objects. ``inlier_rows``
    (index labels) are the inliers to export; by default a seeded sample of
    ``max_inliers`` of the frame's.
    """
    from rare_objects.io import images

    open_image = open_image or images.open_rgb
    out_dir = Path(out_dir)
    folders = {
        name: out_dir / name for name in ("outliers", "inliers", "final_outliers", "targets")
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for target in targets:
        (folders["targets"] / target).mkdir(exist_ok=True)

    if inlier_rows is None:
        inlier_rows = set(choose_inliers(frame, max_inliers, seed))
    final = frame["is_final_outlier"].map(_is_true) if "is_final_outlier" in frame else False
    exported = (
        frame["is_outlier"]
        | frame.index.isin(inlier_rows)
        | final
        | frame["target_matches"].map(bool)
    )
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
    if not (
        switches.get("save_crops")
        or want_all
        or switches.get("save_descriptions")
        or switches.get("save_probability_plots")
    ):
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
            crop = (
                images.crop(image, (row["x1"], row["y1"], row["x2"], row["y2"]))
                if image is not None
                else None
            )
            if want_all and crop is not None:
                target = out_dir / "cropped_objects" / f"{name}.jpg"
                target.parent.mkdir(exist_ok=True)
                crop.save(target, quality=95)
                crop_paths[row["object_id"]] = str(target)
            for home in placements.get(idx, []):
                if switches.get("save_crops") and crop is not None:
                    crop.save(home / f"{name}.jpg", quality=95)
                    crop_paths.setdefault(row["object_id"], str(home / f"{name}.jpg"))
                captioned = row.get("description") is not None and not pd.isna(
                    row.get("description")
                )
                if captioned and switches.get("save_descriptions") and write_desc:
                    write_desc(row, crop_paths.get(row["object_id"]), home / f"{name}_desc.txt")
                if captioned and switches.get("save_probability_plots") and write_plot:
                    write_plot(row, home / f"{name}_probs.png")
    return crop_paths


def read_object_tables(
    outliers, selection=None, captions=(), concepts=None
) -> dict[str, pd.DataFrame]:
    """The per-object results that :func:`export_shards` looks up, indexed by
    object_id, with only the columns the export reads."""

    def read(paths, name):
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        columns = ["object_id", *LOOKUP_COLUMNS[name]]
        return by_object_id(
            pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)
        )

    tables = {"outliers": read(outliers, "outliers")}
    for name, paths in (("selection", selection), ("captions", captions), ("concepts", concepts)):
        if paths is not None and (isinstance(paths, (str, os.PathLike)) or len(paths)):
            tables[name] = read(paths, name)
    return tables


def export_shards(
    detection_paths,
    tables: dict[str, pd.DataFrame],
    targets: dict,
    out_dir: str | os.PathLike,
    results_path: str | os.PathLike,
    target_results_paths,
    switches: dict,
    max_inliers: int = 200,
    seed: int = 0,
    writers=(),
    **tree_options,
) -> ObjectCounts:
    """The whole export, one detection shard at a time, with the same outputs as
    :func:`assemble` + :func:`export_tree` + :func:`result_records` on all rows at once.

    A first pass over the shards' id and path columns finds what depends on
    every object (which inliers the seeded sample takes, which file stems
    clash); the second assembles, exports and writes each shard's rows through
    the writers: detection_results.json, the target files and the extra
    ``writers`` (see the module docstring). ``tree_options`` go to
    :func:`export_tree`. Returns the counts for statistics.json.
    """
    from rare_objects.runtime.logs import Progress

    detection_paths = list(detection_paths)
    is_outlier = tables["outliers"]["is_outlier"]
    n_inliers, image_paths = 0, {}
    for path in detection_paths:
        part = pd.read_parquet(path, columns=["object_id", "image_id", "image_path"])
        flags = (
            is_outlier.reindex(part["object_id"].to_numpy()).fillna(False).astype(bool).to_numpy()
        )
        n_inliers += int((~flags).sum())
        image_paths.update(zip(part["image_id"], part["image_path"]))
    clashing = clashing_stems(image_paths.keys(), image_paths.values())
    del image_paths
    chosen = inlier_ordinals(n_inliers, max_inliers, seed)

    counts = ObjectCounts()
    progress = Progress(log, "export shards", len(detection_paths))
    offset = inliers_before = 0
    all_writers = [
        RecordsWriter(results_path),
        *(RecordsWriter(p, keep=matches_target(t)) for t, p in zip(targets, target_results_paths)),
        *writers,
    ]
    with contextlib.ExitStack() as stack:
        for writer in all_writers:
            stack.enter_context(writer)
        for path in detection_paths:
            detections = pd.read_parquet(path)
            detections.index = pd.RangeIndex(offset, offset + len(detections))
            frame = assemble(
                detections,
                tables["outliers"],
                targets,
                tables.get("selection"),
                tables.get("captions"),
                tables.get("concepts"),
                clashing_stems=clashing,
            )
            inliers = frame.index[~frame["is_outlier"].to_numpy()]
            ordinals = np.arange(inliers_before, inliers_before + len(inliers))
            picked = set(inliers[np.isin(ordinals, chosen)])
            inliers_before += len(inliers)
            crop_paths = export_tree(
                frame,
                out_dir,
                targets,
                switches,
                max_inliers=max_inliers,
                seed=seed,
                inlier_rows=picked,
                **tree_options,
            )
            records = list(result_records(frame, crop_paths))
            for writer in all_writers:
                writer.write_shard(frame, records)
            counts.add(frame)
            offset += len(frame)
            progress.update()
    return counts
