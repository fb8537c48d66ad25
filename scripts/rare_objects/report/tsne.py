"""The t-SNE coordinates of the map (:mod:`rare_objects.report.projection`) and its picture
(tsne.png): coloured by class, outliers marked."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

MAX_LEGEND_CLASSES = 20


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
