"""The 2-D map of the objects (the explorer's map and tsne.png): which objects it shows, and their
t-SNE or UMAP coordinates.

Shown are every mined object (final outlier, outlier, target match) and a
seeded sample of the rest, up to ``max_points`` in all (:func:`choose_shown`).
Only the embeddings of the shown objects are read
(:func:`rare_objects.io.embeddings.read_embeddings_of`,
one record batch at a time), so the stage holds at most ``max_points`` vectors
however large the run.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from rare_objects.io.embeddings import read_embeddings_of
from rare_objects.report import tsne
from rare_objects.report.shown_objects import final_outlier_mask, first_flag

log = logging.getLogger("rare_objects.report.projection")

METHODS = ("tsne", "umap")

# Why an object is on the map, most important first: when the mined objects
# alone exceed the cap, they are taken in this order.
SHOWN_REASONS = ("final_outlier", "outlier", "target", "sample")


def shown_reasons(is_final_outlier, is_outlier, is_target) -> np.ndarray:
    """Each object's reason to be on the map (``sample`` = none: only by sampling)."""
    return first_flag(is_final_outlier, is_outlier, is_target, SHOWN_REASONS).astype(object)


def anomaly_score(score_global, score_class) -> np.ndarray:
    """The higher of an object's global and class outlier scores (higher = more anomalous, the
    detectors' convention; a NaN class score is ignored)."""
    g = np.asarray(score_global, dtype=np.float64)
    c = np.asarray(score_class, dtype=np.float64)
    return np.fmax(g, c)


def choose_shown(reasons, scores, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices of the objects on the map.

    Every mined object (reason other than ``sample``) is taken when they fit in
    ``max_points``; the rest of the budget is a seeded sample of the others.
    When the mined objects alone exceed the budget they are taken by reason
    (:data:`SHOWN_REASONS` order), most anomalous (highest score) first within
    a reason, ties by row.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    reasons = np.asarray(reasons, dtype=object)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(reasons)
    if n <= max_points:
        return np.arange(n)
    mined = np.flatnonzero(reasons != "sample")
    rest = np.flatnonzero(reasons == "sample")
    if len(mined) >= max_points:
        rank = np.array([SHOWN_REASONS.index(r) for r in reasons[mined]])
        score = np.nan_to_num(-scores[mined], nan=np.inf)  # highest first, unknown last
        order = np.lexsort((mined, score, rank))
        return np.sort(mined[order[:max_points]])
    rng = np.random.default_rng(seed)
    sample = rng.choice(rest, size=max_points - len(mined), replace=False)
    return np.sort(np.concatenate([mined, sample]))


def umap_coordinates(
    X: np.ndarray, *, n_neighbors: int, min_dist: float, seed: int, pca_dims: int = 50
) -> np.ndarray:
    """2-D UMAP (umap-learn) of the rows of ``X``, after PCA to ``pca_dims``; handles tiny inputs like t-SNE."""
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n <= 2:
        # the same fixed layouts for 0, 1 and 2 points (perplexity plays no part there)
        return tsne.tsne_coordinates(X, perplexity=1.0, seed=seed)
    import umap
    from sklearn.decomposition import PCA

    n_comp = min(pca_dims, n, X.shape[1])
    Z = PCA(n_components=n_comp, random_state=seed).fit_transform(X) if X.shape[1] > n_comp else X
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=int(max(2, min(n_neighbors, n - 1))),
        min_dist=min_dist,
        random_state=seed,  # reproducible; umap-learn then runs single-threaded
        n_jobs=1,
        init="spectral" if n > n_neighbors + 1 else "random",
    )
    return np.asarray(reducer.fit_transform(np.asarray(Z, dtype=np.float32)), dtype=np.float32)


def coordinates(
    X: np.ndarray, method: str, settings: dict, seed: int, threads: int | None = None
) -> np.ndarray:
    """2-D coordinates of the rows of ``X`` by ``method`` (``tsne`` or ``umap``)."""
    if method == "tsne":
        return tsne.tsne_coordinates(
            X, perplexity=settings["perplexity"], seed=seed, threads=threads
        )
    if method == "umap":
        return umap_coordinates(
            X,
            n_neighbors=settings["umap_n_neighbors"],
            min_dist=settings["umap_min_dist"],
            seed=seed,
        )
    raise ValueError(f"unknown projection method {method!r}; use one of {', '.join(METHODS)}")


def project(
    embedding_paths,
    outliers: pd.DataFrame,
    concepts: pd.DataFrame | None,
    targets: dict[str, list[str]],
    settings: dict,
    seed: int,
    threads: int | None = None,
) -> pd.DataFrame:
    """The projection table (:data:`rare_objects.io.schemas.PROJECTION`) of a run.

    ``outliers`` is the outlier table (one row per embedded object),
    ``concepts`` the concept table (final outliers), ``settings`` the
    ``projection`` section of the configuration.
    """
    from rare_objects.stages.targets import is_target

    reasons = shown_reasons(
        final_outlier_mask(concepts, outliers["object_id"].to_numpy()),
        outliers["is_outlier"].to_numpy(dtype=bool),
        is_target(outliers["class_name"], targets),
    )
    scores = anomaly_score(outliers["score_global"], outliers["score_class"])
    rows = choose_shown(reasons, scores, settings["max_points"], seed)
    mined = int((reasons != "sample").sum())
    log.info(
        "map: %d of %d objects (%d mined, %d of them shown), method %s",
        len(rows),
        len(outliers),
        mined,
        int((reasons[rows] != "sample").sum()),
        settings["method"],
    )
    chosen = outliers.iloc[rows]
    ids, X = read_embeddings_of(embedding_paths, chosen["object_id"])
    order = pd.Index(ids).get_indexer(chosen["object_id"].to_numpy())
    if (order < 0).any():
        raise ValueError(f"{int((order < 0).sum())} shown objects have no valid embedding")
    coords = coordinates(X[order], settings["method"], settings, seed, threads=threads)
    return pd.DataFrame(
        {
            "object_id": chosen["object_id"].to_numpy(),
            "class_name": chosen["class_name"].to_numpy(),
            "is_outlier": chosen["is_outlier"].to_numpy(dtype=bool),
            "shown_reason": reasons[rows],
            "method": settings["method"],
            "x": coords[:, 0] if len(rows) else np.empty(0, np.float32),
            "y": coords[:, 1] if len(rows) else np.empty(0, np.float32),
        }
    )


def write_projection(frame: pd.DataFrame, path: str | os.PathLike, total_objects: int) -> None:
    from rare_objects.io import schemas

    schemas.write_table(
        frame,
        schemas.PROJECTION,
        path,
        metadata={"total_objects": total_objects},
    )


def plot_projection(frame: pd.DataFrame, out_png, total_objects: int) -> None:
    """The map as a picture (tsne.png): coloured by class, outliers marked."""
    method = "UMAP" if (len(frame) and frame["method"].iloc[0] == "umap") else "t-SNE"
    tsne.draw_map(frame, out_png, f"{method} of object embeddings", total_objects)
