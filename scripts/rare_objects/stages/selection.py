"""Which objects get a caption: outliers and target matches, then the diversity filter.

The original's get_optimized_target_classes and avoid_similar_images, as one
table that says for every object whether it was kept and why. Within a
near-duplicate cluster the most anomalous objects are kept first: the highest
``score_global`` (the outlier detectors' convention, higher = more anomalous,
whichever detectors ran).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pandas as pd

from rare_objects.neighbors.search import DEFAULT_EXACT_MAX
from rare_objects.stages.diversity import DIVERSITY_ANN, diversity_filter
from rare_objects.stages.targets import is_target as matches_a_target
from rare_objects.stages.targets import target_matches_column


def caption_partition(image_ids: pd.Series, partitions: int) -> np.ndarray:
    """Stable caption partition of each object: a hash of its image's id.

    Keyed by the image, not the object, so that each image is decoded by one caption
    job only (a job cuts the crops of its own images); keyed by a hash, not a position,
    so that an object keeps its partition whatever else is selected; keyed by the id (a
    hash of the path relative to the input root), not the absolute path, so that the
    same data gives the same caption jobs wherever it lies (another machine, another
    mount point, a test's temporary folder).
    """
    # factorized as they are: an object copy would make a Python str per row
    codes, keys = pd.factorize(pd.Series(image_ids), use_na_sentinel=True)
    per_image = np.array(
        [
            int.from_bytes(hashlib.sha1(str(key).encode()).digest()[:4], "little") % partitions
            for key in keys
        ],
        dtype=np.int32,
    )
    if not len(per_image):
        return np.zeros(len(codes), dtype=np.int32)
    # a row without an image (nothing to decode) goes to partition 0
    return np.where(codes < 0, 0, per_image[codes]).astype(np.int32)


def candidate_embeddings(embeddings, object_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The embeddings of the candidates, in their order (see :func:`select_objects`)."""
    if not callable(embeddings):
        return np.asarray(embeddings)[positions]
    found_ids, X = embeddings(object_ids)
    if len(found_ids) == len(object_ids) and (found_ids == object_ids).all():
        return X  # already in order (as read_embeddings_of gives them): no second copy
    where = pd.Index(found_ids).get_indexer(object_ids)
    if (where < 0).any():
        missing = object_ids[where < 0]
        raise ValueError(
            f"{len(missing)} candidate(s) have no embedding, e.g. {missing[0]!r}:"
            " the outliers table and the embedding shards are out of step"
        )
    return X[where]


def select_objects(
    objects: pd.DataFrame,
    embeddings: np.ndarray | Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    targets: dict[str, list[str]],
    include: list[str],
    vlm_for: list[str],
    similarity_threshold: float,
    max_per_cluster: int,
    partitions: int,
    seed: int,
    exact_max: int = DEFAULT_EXACT_MAX,
) -> pd.DataFrame:
    """The selection table (schemas.SELECTION) for ``objects``.

    ``objects`` has object_id, class_name, is_outlier, score_global, image_id (which
    keys the caption partitions), image_path, confidence and the box. ``embeddings``: their embedding matrix (in the row order of
    ``objects``), or a function that reads the embeddings of the object ids it is given,
    ``ids -> (ids, X)`` in any order (as :func:`rare_objects.io.embeddings.read_embeddings_of`):
    only the candidates' are needed, a few percent of the objects at nuScenes scale.
    ``seed`` seeds the near-duplicate search above ``exact_max`` rows.
    """
    frame = objects.reset_index(drop=True).copy()
    frame["target_matches"] = target_matches_column(frame["class_name"], targets)
    is_target = matches_a_target(frame["class_name"], targets)
    frame["is_yolo_potential"] = is_target
    is_outlier = frame["is_outlier"].to_numpy(dtype=bool)
    if "all" in include:
        candidate = np.ones(len(frame), dtype=bool)
    else:
        candidate = np.zeros(len(frame), dtype=bool)
        if "outliers" in include:
            candidate |= is_outlier
        if "targets" in include:
            candidate |= is_target
    frame["candidate"] = candidate
    # The diversity filter keeps the lowest priority first: the negated score
    # (exact in float32), so the highest score_global comes first.
    frame["priority"] = -frame["score_global"].astype(np.float32)
    frame["cluster_id"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame["selected"] = False
    frame["reason"] = "not_a_candidate"
    positions = np.flatnonzero(candidate)
    if len(positions):
        cluster, keep, reason = diversity_filter(
            candidate_embeddings(embeddings, frame["object_id"].to_numpy()[positions], positions),
            frame["priority"].to_numpy()[positions],
            threshold=similarity_threshold,
            max_per_cluster=max_per_cluster,
            exact_max=exact_max,
            ann=replace(DIVERSITY_ANN, seed=seed),
        )
        frame.loc[positions, "cluster_id"] = cluster
        frame.loc[positions, "selected"] = keep
        frame.loc[positions, "reason"] = reason
    wants_vlm = np.zeros(len(frame), dtype=bool)
    if "all" in vlm_for:
        wants_vlm[:] = True
    if "targets" in vlm_for:
        wants_vlm |= is_target
    if "outliers" in vlm_for:
        wants_vlm |= is_outlier
    frame["needs_vlm"] = frame["selected"] & wants_vlm
    partition = caption_partition(frame["image_id"], partitions)
    frame["caption_partition"] = pd.array(np.where(frame["selected"], partition, 0), dtype="Int32")
    frame.loc[~frame["selected"], "caption_partition"] = pd.NA
    return frame
