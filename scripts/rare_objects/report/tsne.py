"""t-SNE map of the embeddings, coloured by class, outliers marked."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

MAX_LEGEND_CLASSES = 20


def subsample_indices(class_names, is_outlier, max_points: int, seed: int) -> np.ndarray:
    """Sorted row indices of a deterministic subsample of at most ``max_points``.

    All outliers are kept when they fit (the rest of the budget goes to the
    inliers, stratified by class); otherwise the outliers themselves are
    sampled, stratified by class. Stratified = each class gets a share
    proportional to its size, at least one row where the budget allows.
    """
    class_names = np.asarray(class_names, dtype=object)
    is_outlier = np.asarray(is_outlier, dtype=bool)
    n = len(class_names)
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    outliers = np.flatnonzero(is_outlier)
    inliers = np.flatnonzero(~is_outlier)
    if len(outliers) >= max_points:
        chosen = _stratified(outliers, class_names[outliers], max_points, rng)
    else:
        rest = _stratified(inliers, class_names[inliers], max_points - len(outliers), rng)
        chosen = np.concatenate([outliers, rest])
    return np.sort(chosen)


def _stratified(
    rows: np.ndarray, labels: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    if budget <= 0 or len(rows) == 0:
        return np.empty(0, dtype=np.int64)
    if len(rows) <= budget:
        return rows
    classes, inverse, counts = np.unique(
        labels.astype(str), return_inverse=True, return_counts=True
    )
    # Largest-remainder allocation, at least one per class while budget allows.
    quota = counts * budget / counts.sum()
    alloc = np.floor(quota).astype(np.int64)
    if budget >= len(classes):
        alloc = np.maximum(alloc, 1)
    alloc = np.minimum(alloc, counts)
    while alloc.sum() > budget:  # the max(.,1) may overshoot: trim the largest
        alloc[np.argmax(alloc)] -= 1
    remainder = quota - np.floor(quota)
    for c in np.argsort(-remainder, kind="stable"):
        if alloc.sum() >= budget:
            break
        if alloc[c] < counts[c]:
            alloc[c] += 1
    while alloc.sum() < budget:  # classes still with room, largest first
        room = counts - alloc
        alloc[np.argmax(room)] += 1
    chosen = []
    for c, k in enumerate(alloc):
        if k:
            members = rows[inverse == c]
            chosen.append(rng.choice(members, size=int(k), replace=False))
    return np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)


def _thread_limit(threads: int | None):
    try:  # scikit-learn's own dependency; optional here
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


EXACT_BELOW = 300  # points: below, the exact t-SNE gradient is cheaper than Barnes-Hut's


def tsne_coordinates(
    X: np.ndarray,
    *,
    perplexity: float,
    seed: int,
    pca_dims: int = 50,
    threads: int | None = None,
) -> np.ndarray:
    """2-D t-SNE of the rows of ``X`` (PCA to ``pca_dims`` first); handles tiny inputs.

    Perplexity is clamped below the number of points (scikit-learn requires
    it); 1 point maps to the origin, 2 points to (-1, 0) and (1, 0).
    ``threads`` caps the OpenMP/BLAS threads (Barnes-Hut's OpenMP loop slows
    down badly when the cores are shared with other jobs; None = no cap).
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    if n == 0:
        return np.empty((0, 2), dtype=np.float32)
    if n == 1:
        return np.zeros((1, 2), dtype=np.float32)
    if n == 2:
        return np.array([[-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    Z = X
    n_comp = min(pca_dims, n, X.shape[1])
    if X.shape[1] > n_comp:
        Z = PCA(n_components=n_comp, random_state=seed).fit_transform(X)
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3.0)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seed,
        learning_rate="auto",
        method="exact" if n < EXACT_BELOW else "barnes_hut",
    )
    with _thread_limit(threads):
        return tsne.fit_transform(np.asarray(Z, dtype=np.float32)).astype(np.float32)


def plot_tsne(
    X: np.ndarray,
    class_names,
    is_outlier,
    out_png: str | os.PathLike,
    *,
    max_points: int,
    perplexity: float,
    seed: int,
    title: str = "t-SNE of object embeddings",
    object_ids=None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Write a t-SNE scatter of ``X`` to ``out_png``; return the plotted points.

    The returned frame has one row per plotted point: ``row`` (index into
    ``X``), ``object_id`` (when given), ``class_name``, ``is_outlier``, ``x``,
    ``y``. Classes beyond the :data:`MAX_LEGEND_CLASSES` largest are drawn
    grey as "other".
    """
    X = np.asarray(X)
    class_names = np.asarray(class_names, dtype=object)
    is_outlier = np.asarray(is_outlier, dtype=bool)
    if not (len(X) == len(class_names) == len(is_outlier)):
        raise ValueError("X, class_names and is_outlier must have the same length")
    rows = subsample_indices(class_names, is_outlier, max_points, seed)
    coords = tsne_coordinates(X[rows], perplexity=perplexity, seed=seed, threads=threads)
    frame = pd.DataFrame(
        {
            "row": rows.astype(np.int64),
            "class_name": class_names[rows].astype(str),
            "is_outlier": is_outlier[rows],
            "x": coords[:, 0] if len(rows) else np.empty(0, np.float32),
            "y": coords[:, 1] if len(rows) else np.empty(0, np.float32),
        }
    )
    if object_ids is not None:
        frame.insert(1, "object_id", np.asarray(object_ids, dtype=object)[rows])

    draw_map(frame, out_png, title, len(X))
    return frame


def draw_map(
    frame: pd.DataFrame, out_png: str | os.PathLike, title: str, total_objects: int
) -> None:
    """Scatter of ``frame``'s ``x``/``y`` coloured by ``class_name``, ``is_outlier`` rows marked, to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 8), dpi=110)
    counts = frame["class_name"].value_counts()
    shown = list(counts.index[:MAX_LEGEND_CLASSES])
    cmap = plt.get_cmap("tab20", max(len(shown), 1))
    labels = frame["class_name"].where(frame["class_name"].isin(shown), "other")
    for i, name in enumerate([*shown, "other"]):
        sel = (labels == name).to_numpy()
        if not sel.any():
            continue
        colour = "lightgrey" if name == "other" else cmap(i)
        inl = sel & ~frame["is_outlier"].to_numpy()
        out = sel & frame["is_outlier"].to_numpy()
        ax.scatter(
            frame["x"][inl],
            frame["y"][inl],
            s=6,
            color=colour,
            alpha=0.6,
            linewidths=0,
            label=f"{name} ({sel.sum()})",
        )
        if out.any():
            ax.scatter(
                frame["x"][out],
                frame["y"][out],
                s=30,
                marker="X",
                color=colour,
                edgecolors="black",
                linewidths=0.6,
            )
    if frame["is_outlier"].any():
        ax.scatter(
            [],
            [],
            s=30,
            marker="X",
            color="white",
            edgecolors="black",
            linewidths=0.6,
            label="outlier",
        )
    n_out = int(frame["is_outlier"].sum())
    ax.set_title(f"{title}\n{len(frame)} of {total_objects} objects shown, {n_out} outliers")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(frame):
        ax.legend(
            loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2, frameon=False
        )
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
