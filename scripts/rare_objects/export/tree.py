"""The original's results tree, written as the export streams.

    outliers/ inliers/ final_outliers/ targets/<target>/   original images (+ crops, _desc.txt, _probs.png)
    cropped_objects/                                         every crop, only with export.cleanup_temp_crops: false

:class:`TreeWriter` is an export writer (:mod:`rare_objects.export`) that must come
before the writers that read records: it places each shard's original images, cuts the
crops, and tells the shard where each crop went (the ``path`` of detection_results.json).
An outlier and a sampled inlier (a seeded sample of ``max_inliers`` of every inlier of
the export) get their crop and per-object files (:mod:`rare_objects.export.report_files`)
in their folder; final outliers and target matches get the original image in theirs.
Target folders and every file name come from data through
:func:`rare_objects.io.names.safe_name`, so nothing leaves the results folder.
Every file is written through :mod:`rare_objects.io.atomic` (or linked in one step).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.export import report_files
from rare_objects.export.rows import desc_record, is_true
from rare_objects.io import atomic
from rare_objects.io.names import safe_name

log = logging.getLogger("rare_objects.export.tree")

FOLDERS = ("outliers", "inliers", "final_outliers", "targets")


@dataclass(frozen=True)
class TreeSettings:
    """What the tree holds: the per-object files (switches), how originals are
    placed (``link_mode``: copy, hardlink or symlink), and the inlier sample."""

    save_crops: bool
    save_descriptions: bool
    save_probability_plots: bool
    keep_cropped_objects: bool
    link_mode: str
    max_inliers: int
    seed: int

    @classmethod
    def from_config(cls, export: dict, max_images: int | None, seed: int) -> TreeSettings:
        """The ``export`` section of the configuration, ``input.max_images`` and ``seed``."""
        return cls(
            **per_object_file_switches(export, max_images),
            link_mode=export["link_mode"],
            max_inliers=export["max_inlier_images"],
            seed=seed,
        )

    @property
    def any_per_object_file(self) -> bool:
        return (
            self.save_crops
            or self.keep_cropped_objects
            or self.save_descriptions
            or self.save_probability_plots
        )


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
    with atomic.atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def save_jpeg(image, path: Path) -> None:
    """``image`` as a JPEG (quality 95, as the original) at ``path``, atomically."""
    with atomic.atomic_path(path) as tmp:
        image.save(tmp, format="JPEG", quality=95)


def write_desc_file(row, crop_path: str | None, path: Path) -> None:
    """An object's ``_desc.txt`` (:func:`rare_objects.export.report_files.format_desc`)."""
    report_files.write_desc(desc_record(row, crop_path), path)


def write_plot_file(row, path: Path) -> None:
    """An object's ``_probs.png``: its concept probabilities, titled with its crop name."""
    report_files.plot_probabilities(
        list(row["concepts"]), list(row["probabilities"]), path, row["crop_name"]
    )


def _no_image(path) -> None:
    return None


class TreeWriter:
    """The export writer of the results tree in ``out_dir`` (see the module docstring).

    ``open_image(path)`` decodes an original (default: :func:`rare_objects.io.images.open_rgb`
    with its default limits), in ``workers`` threads ahead of the crops (0: in this thread);
    ``write_desc(row, crop_path, path)`` and ``write_plot(row, path)`` write a captioned
    object's ``_desc.txt`` and ``_probs.png``.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        targets: dict,
        settings: TreeSettings,
        open_image: Callable | None = None,
        write_desc: Callable = write_desc_file,
        write_plot: Callable = write_plot_file,
        workers: int = 0,
    ):
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.folders = {name: self.out_dir / name for name in FOLDERS}
        self.target_folders = {t: self.folders["targets"] / safe_name(t) for t in targets}
        self.open_image = open_image
        self.write_desc = write_desc
        self.write_plot = write_plot
        self.workers = workers
        self._chosen: np.ndarray | None = None

    def __enter__(self):
        for folder in [*self.folders.values(), *self.target_folders.values()]:
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb):
        return False

    def _sampled_inliers(self, shard) -> set:
        """Index labels of the shard's inliers that are in the export's inlier sample."""
        if self._chosen is None:
            self._chosen = inlier_ordinals(
                shard.n_inliers, self.settings.max_inliers, self.settings.seed
            )
        frame = shard.frame
        inliers = frame.index[~frame["is_outlier"].to_numpy()]
        ordinals = np.arange(shard.first_inlier, shard.first_inlier + len(inliers))
        return set(inliers[np.isin(ordinals, self._chosen)])

    def write_shard(self, shard) -> None:
        shard.set_crop_paths(self._write(shard.frame, self._sampled_inliers(shard)))

    def _write(self, frame: pd.DataFrame, inlier_rows: set) -> dict[str, str]:
        """Place the originals and per-object files of ``frame``; object_id -> saved crop path."""
        link_mode = self.settings.link_mode
        final = frame["is_final_outlier"].map(is_true)
        exported = (
            frame["is_outlier"]
            | frame.index.isin(inlier_rows)
            | final
            | frame["target_matches"].map(bool)
        )
        placements: dict[int, list[Path]] = {}  # row index -> folders that get its crop and files
        for idx, row in frame[exported].iterrows():
            image_name = row["image_name"]
            homes = []
            if row["is_outlier"]:
                homes.append(self.folders["outliers"])
            elif idx in inlier_rows:
                homes.append(self.folders["inliers"])
            for home in homes:
                place_file(row["image_path"], home / image_name, link_mode)
            if final[idx]:
                place_file(
                    row["image_path"], self.folders["final_outliers"] / image_name, link_mode
                )
            for target in row["target_matches"]:
                place_file(row["image_path"], self.target_folders[target] / image_name, link_mode)
            if homes:
                placements[idx] = homes
        if not self.settings.any_per_object_file:
            return {}
        return self._write_object_files(frame, placements)

    def _write_object_files(
        self, frame: pd.DataFrame, placements: dict[int, list[Path]]
    ) -> dict[str, str]:
        """Crops, ``_desc.txt`` and ``_probs.png`` of the placed objects (and every crop
        with keep_cropped_objects), each original decoded once."""
        from rare_objects.io import images

        settings = self.settings
        open_image = self.open_image or images.open_rgb
        want_all = settings.keep_cropped_objects
        cut = settings.save_crops or want_all
        crop_paths: dict[str, str] = {}
        rows_needing_crops = frame.index if want_all else pd.Index(sorted(placements))
        needing = frame.loc[rows_needing_crops]
        needing = needing[needing["image_path"].notna()]
        decoded = images.iter_image_rows(
            needing["image_path"],
            open_image if cut else _no_image,
            workers=self.workers if cut else 0,
            catch=(Exception,),
        )
        for image_path, image, rows in decoded:
            if isinstance(image, BaseException):  # logged; the rest of the export goes on
                log.warning("cannot cut crops of %s: %s", image_path, image)
                image = None
            for idx, row in needing.iloc[rows].iterrows():
                name = row["crop_name"]
                crop = (
                    images.crop(image, (row["x1"], row["y1"], row["x2"], row["y2"]))
                    if image is not None
                    else None
                )
                if want_all and crop is not None:
                    target = self.out_dir / "cropped_objects" / f"{name}.jpg"
                    save_jpeg(crop, target)
                    crop_paths[row["object_id"]] = str(target)
                captioned = row.get("description") is not None and not pd.isna(
                    row.get("description")
                )
                for home in placements.get(idx, []):
                    if settings.save_crops and crop is not None:
                        save_jpeg(crop, home / f"{name}.jpg")
                        crop_paths.setdefault(row["object_id"], str(home / f"{name}.jpg"))
                    if captioned and settings.save_descriptions:
                        self.write_desc(
                            row, crop_paths.get(row["object_id"]), home / f"{name}_desc.txt"
                        )
                    if captioned and settings.save_probability_plots:
                        self.write_plot(row, home / f"{name}_probs.png")
        return crop_paths
