"""Ground-truth boxes for the run's images: one table whatever the source.

Sources (``evaluation.source``):

- ``coco``: a COCO detection file; each image's ``file_name`` is relative to
  ``evaluation.coco.root`` (default: ``input.path``), boxes are ``[x, y, w, h]``
  in pixels; crowd annotations are left out, as COCO's own evaluation does;
- ``nuscenes``: the dataroot's annotation tables, each 3-D box projected into the
  run's camera images (:mod:`rare_objects.evaluation.nuscenes`).

Every source gives rows of :data:`rare_objects.io.schemas.GROUND_TRUTH`: ``gt_id``,
``image_path`` (as the run names the image), ``category``, the box ``x1, y1, x2,
y2`` clipped to the image, whether it was ``clipped``, and the nuScenes
``visibility`` (null for COCO). :func:`align_to_run` keeps the rows of the run's
images and stops with the counts and example names of each side when the two
share no image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.io import schemas


class GroundTruthError(ValueError):
    """The ground truth cannot be used with this run; the message says why and what to check."""


def path_key(path: str) -> str:
    """The form in which a run's image path and a ground-truth path are compared."""
    return os.path.normpath(os.path.abspath(path))


def clip_boxes(frame: pd.DataFrame, width: np.ndarray, height: np.ndarray) -> pd.DataFrame:
    """Clip ``x1, y1, x2, y2`` to ``[0, width] x [0, height]`` (where the size is known)
    and set ``clipped`` where a box left its image."""
    box = frame[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    limit = np.stack([width, height, width, height], axis=1).astype(np.float64)
    known = ~np.isnan(limit)
    clipped_box = np.where(known, np.clip(box, 0, np.where(known, limit, np.inf)), box)
    frame = frame.copy()
    frame["clipped"] = (clipped_box != box).any(axis=1)
    frame[["x1", "y1", "x2", "y2"]] = clipped_box
    return frame


def read_coco(path: str | os.PathLike, root: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """The boxes of a COCO detection file as :data:`schemas.GROUND_TRUTH` rows, and counts
    (crowd boxes left out, empty boxes dropped, boxes clipped to their image)."""
    try:
        with open(path, encoding="utf-8") as handle:
            coco = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise GroundTruthError(f"evaluation.coco.file {str(path)!r}: {error}") from None
    missing = [key for key in ("images", "annotations", "categories") if key not in coco]
    if missing:
        raise GroundTruthError(
            f"evaluation.coco.file {str(path)!r} is not a COCO detection file: no {missing}"
        )
    images = pd.DataFrame(coco["images"])
    categories = {c["id"]: str(c["name"]) for c in coco["categories"]}
    annotations = pd.DataFrame(coco["annotations"])
    stats = {
        "images": len(images),
        "annotations": len(annotations),
        "crowd": 0,
        "empty": 0,
        "category_names": sorted(set(categories.values())),
    }
    if annotations.empty:
        return schemas.empty_table(schemas.GROUND_TRUTH).to_pandas(), stats | {"clipped": 0}
    if "iscrowd" in annotations:
        crowd = annotations["iscrowd"].fillna(0).astype(bool)
        stats["crowd"] = int(crowd.sum())
        annotations = annotations[~crowd]
    unknown = set(annotations["category_id"]) - set(categories)
    if unknown:
        raise GroundTruthError(
            f"evaluation.coco.file {str(path)!r}: annotations name category ids "
            f"{sorted(unknown)[:5]} that its categories do not list"
        )
    image_of = images.set_index("id")
    bbox = np.array(annotations["bbox"].tolist(), dtype=np.float64).reshape(-1, 4)
    frame = pd.DataFrame(
        {
            "gt_id": annotations["id"].astype(str).to_numpy(),
            "image_path": [
                str(Path(root) / name)
                for name in image_of.loc[annotations["image_id"], "file_name"]
            ],
            "category": annotations["category_id"].map(categories).to_numpy(),
            "x1": bbox[:, 0],
            "y1": bbox[:, 1],
            "x2": bbox[:, 0] + bbox[:, 2],
            "y2": bbox[:, 1] + bbox[:, 3],
            "visibility": None,
        }
    )
    empty = (bbox[:, 2] <= 0) | (bbox[:, 3] <= 0)
    stats["empty"] = int(empty.sum())
    sizes = image_of.reindex(columns=["width", "height"]).loc[annotations["image_id"]]
    frame = clip_boxes(
        frame, sizes["width"].to_numpy(np.float64), sizes["height"].to_numpy(np.float64)
    )[~empty]
    stats["clipped"] = int(frame["clipped"].sum())
    return frame.reset_index(drop=True), stats


def load(settings: dict, input_config: dict, image_paths: list[str]) -> tuple[pd.DataFrame, dict]:
    """The ground truth that ``settings`` (the ``evaluation`` section) names, for ``image_paths``."""
    source = settings["source"]
    if source == "coco":
        coco = settings["coco"]
        if not coco["file"]:
            raise GroundTruthError("evaluation.coco.file: required when evaluation.source is coco")
        return read_coco(coco["file"], coco["root"] or input_config["path"])
    if source == "nuscenes":
        if input_config["kind"] != "nuscenes":
            raise GroundTruthError(
                "evaluation.source nuscenes needs input.kind nuscenes (the annotations are "
                "the dataroot's tables)"
            )
        from rare_objects.evaluation import nuscenes

        frame, stats = nuscenes.project_annotations(
            input_config["path"],
            input_config["nuscenes"]["version"],
            image_paths,
            settings["nuscenes"]["visibilities"],
        )
        return frame, stats
    raise GroundTruthError(f"evaluation.source {source!r}: use coco or nuscenes")


def align_to_run(truth: pd.DataFrame, image_paths: list[str]) -> tuple[pd.DataFrame, dict]:
    """The rows of ``truth`` on the run's images, renamed to the run's paths, and counts.

    Stops (:class:`GroundTruthError`) when no image is shared, with the counts and an
    example name of each side, the usual sign of a wrong root.
    """
    run_key = {path_key(p): p for p in image_paths}
    keys = truth["image_path"].map(path_key)
    on_run = keys.isin(run_key.keys()).to_numpy()
    truth_images = set(keys)
    shared = truth_images & run_key.keys()
    if len(truth) and not shared:
        raise GroundTruthError(
            f"the ground truth matches none of the run's images: {len(truth_images)} labelled "
            f"images (e.g. {sorted(truth['image_path'])[0]!r}) against {len(run_key)} run "
            f"images (e.g. {sorted(image_paths)[0]!r}); check evaluation.coco.root"
        )
    aligned = truth[on_run].copy()
    aligned["image_path"] = keys[on_run].map(run_key).to_numpy()
    stats = {
        "run_images": len(run_key),
        "labelled_run_images": len(shared),
        "run_images_without_labels": len(run_key) - len(shared),
        "labelled_images_not_in_run": len(truth_images - run_key.keys()),
        "boxes_not_in_run": int((~on_run).sum()),
    }
    return aligned.reset_index(drop=True), stats


def check_rare(rare: list[str], categories: list[str], setting: str) -> None:
    """Every rare category must be one the ground truth has."""
    unknown = sorted(set(rare) - set(categories))
    if unknown:
        raise GroundTruthError(
            f"{setting}: {unknown} not among the ground truth's categories: "
            f"{', '.join(sorted(categories))}"
        )


def resolve_rare(settings: dict, categories: list[str]) -> list[str]:
    """The rare categories: ``evaluation.rare_categories``, each checked against the ground
    truth's ``categories``; when null, nuScenes' documented default list (those of them
    present) and, for COCO, an error that lists the categories to choose from."""
    rare = settings["rare_categories"]
    if rare is None:
        if settings["source"] == "nuscenes":
            from rare_objects.evaluation.nuscenes import DEFAULT_RARE_CATEGORIES

            return [c for c in DEFAULT_RARE_CATEGORIES if c in set(categories)]
        raise GroundTruthError(
            "evaluation.rare_categories: required for a COCO ground truth; its categories: "
            + ", ".join(sorted(categories))
        )
    check_rare(rare, categories, "evaluation.rare_categories")
    return list(rare)


def to_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with exactly the columns of :data:`schemas.GROUND_TRUTH`."""
    return frame.reindex(columns=schemas.GROUND_TRUTH.names)
