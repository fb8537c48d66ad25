"""LocalOutlierFactor on the embeddings, globally and per detector class.

Up to ``exact_max`` rows this is scikit-learn's
``LocalOutlierFactor(n_neighbors, contamination).fit_predict(X)`` itself, so
flags and scores are exactly the original's. Above it, the neighbours come
from the approximate search of :mod:`rare_objects.stages.neighbors` and the same
scikit-learn estimator runs on them as a precomputed sparse distance graph
(``metric="precomputed"``): the LOF arithmetic and the contamination rule are
scikit-learn's in both cases, only the neighbour search differs.

Small inputs: with ``n <= n_neighbors`` rows, ``n - 1`` neighbours are used
(as scikit-learn does); with fewer than 3 rows there is no meaningful local
density, so nothing is an outlier and every score is -1.0 (a LOF of 1, "as
dense as its neighbours").
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from rare_objects.stages.neighbors import DEFAULT_EXACT_MAX, AnnParams, approximate_knn

MIN_ROWS = 3


def check_contamination(contamination) -> float | str:
    if isinstance(contamination, str):
        if contamination != "auto":
            raise ValueError(f"contamination {contamination!r}: use a number in (0, 0.5] or 'auto'")
        return contamination
    value = float(contamination)
    if not 0.0 < value <= 0.5:
        raise ValueError(f"contamination {contamination!r}: use a number in (0, 0.5] or 'auto'")
    return value


def knn_graph(dist: np.ndarray, ind: np.ndarray):
    """CSR distance graph for ``metric="precomputed"``: each row itself (0) then its neighbours.

    scikit-learn asks the graph for ``n_neighbors + 1`` entries per row and
    removes the row itself, so the self entry is stored explicitly.
    """
    from scipy.sparse import csr_matrix

    n, k = ind.shape
    indices = np.empty((n, k + 1), dtype=np.int64)
    indices[:, 0] = np.arange(n)
    indices[:, 1:] = ind
    data = np.zeros((n, k + 1), dtype=np.float32)
    data[:, 1:] = dist
    indptr = np.arange(0, n * (k + 1) + 1, k + 1, dtype=np.int64)
    return csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(n, n))


def lof_from_neighbors(
    dist: np.ndarray, ind: np.ndarray, n_neighbors: int, contamination
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LOF on given neighbours (``dist``/``ind`` as :func:`knn` returns them)."""
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(
        n_neighbors=n_neighbors, contamination=contamination, metric="precomputed"
    )
    with warnings.catch_warnings():
        # "Duplicate values are leading to incorrect results": the exact path warns too.
        warnings.filterwarnings("ignore", message="Duplicate values")
        labels = lof.fit_predict(knn_graph(dist[:, :n_neighbors], ind[:, :n_neighbors]))
    return lof.negative_outlier_factor_.astype(np.float32), labels == -1


def lof_flags(
    X: np.ndarray,
    n_neighbors: int = 20,
    contamination: float | str = 0.05,
    exact_max: int = DEFAULT_EXACT_MAX,
    ann: AnnParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """LOF over the rows of ``X``: ``(scores float32, is_outlier bool)``.

    ``scores`` is scikit-learn's ``negative_outlier_factor_`` (lower = more
    anomalous). Exact (scikit-learn on ``X``) when ``len(X) <= exact_max``,
    else on approximate neighbours; see the module docstring for tiny inputs.
    """
    contamination = check_contamination(contamination)
    if n_neighbors < 1:
        raise ValueError("n_neighbors must be >= 1")
    X = np.asarray(X)
    n = X.shape[0]
    if n < MIN_ROWS:
        return np.full(n, -1.0, dtype=np.float32), np.zeros(n, dtype=bool)
    k = min(n_neighbors, n - 1)
    if n <= exact_max:
        from sklearn.neighbors import LocalOutlierFactor

        # k == min(n_neighbors, n - 1) is what scikit-learn uses itself; passing
        # it keeps the results identical and avoids its warning.
        lof = LocalOutlierFactor(n_neighbors=k, contamination=contamination)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Duplicate values")
            labels = lof.fit_predict(X)
        return lof.negative_outlier_factor_.astype(np.float32), labels == -1
    dist, ind = approximate_knn(X, k, ann)
    return lof_from_neighbors(dist, ind, k, contamination)


OUTLIER_COLUMNS = [
    "class_name",
    "global_score",
    "class_score",
    "global_outlier",
    "class_outlier",
    "outlier_code",
    "is_outlier",
]


def class_aware_outliers(
    X: np.ndarray,
    class_names,
    n_neighbors: int = 20,
    contamination: float | str = 0.05,
    min_samples: int = 10,
    exact_max: int = DEFAULT_EXACT_MAX,
    ann: AnnParams | None = None,
) -> pd.DataFrame:
    """Global LOF on all rows plus a LOF per class with at least ``min_samples`` rows.

    Returns one row per input row (same order) with the OUTLIERS schema's
    columns except ``object_id``: ``outlier_code`` is 1 (global outlier),
    2 (class outlier), 3 (both) or 0; ``is_outlier`` is their OR;
    ``class_score`` is null (pandas ``Float32`` NA) for classes below
    ``min_samples``, whose ``class_outlier`` is False.
    """
    X = np.asarray(X)
    names = np.asarray(class_names, dtype=object)
    n = X.shape[0]
    if names.shape != (n,):
        raise ValueError(f"class_names has {names.shape[0]} entries for {n} rows")
    global_score, global_outlier = lof_flags(X, n_neighbors, contamination, exact_max, ann)
    class_score = np.full(n, np.nan, dtype=np.float32)
    class_outlier = np.zeros(n, dtype=bool)
    labels, inverse, counts = np.unique(names.astype(str), return_inverse=True, return_counts=True)
    for c, count in enumerate(counts):
        if count < min_samples:
            continue
        rows = np.flatnonzero(inverse == c)
        score, flag = lof_flags(X[rows], n_neighbors, contamination, exact_max, ann)
        class_score[rows] = score
        class_outlier[rows] = flag
    code = global_outlier.astype(np.int8) | (class_outlier.astype(np.int8) << 1)
    class_score_col = pd.array(class_score, dtype="Float32")
    class_score_col[np.isnan(class_score)] = pd.NA
    return pd.DataFrame(
        {
            "class_name": pd.Series(names, dtype=object),
            "global_score": global_score.astype(np.float32),
            "class_score": class_score_col,
            "global_outlier": global_outlier,
            "class_outlier": class_outlier,
            "outlier_code": code.astype(np.int8),
            "is_outlier": code != 0,
        }
    )
