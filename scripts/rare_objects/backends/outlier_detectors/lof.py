"""LocalOutlierFactor, the default detector and the original's method.

Score: the local outlier factor itself (``-negative_outlier_factor_``; about 1
for a row as dense as its neighbours, higher = more anomalous). Flags:
scikit-learn's contamination rule (``fit_predict == -1``).

Up to ``exact_max_samples`` rows this is scikit-learn's
``LocalOutlierFactor(n_neighbors, contamination).fit_predict(X)`` itself, so
flags and scores are exactly the original's. Above it, the neighbours come
from the approximate search of :mod:`rare_objects.neighbors.search` (seeded
with the run's seed) and the same scikit-learn estimator runs on them as a
precomputed sparse distance graph (``metric="precomputed"``): the LOF
arithmetic and the contamination rule are scikit-learn's in both cases, only
the neighbour search differs.

Small inputs: with ``n <= n_neighbors`` rows, ``n - 1`` neighbours are used
(as scikit-learn does); with fewer than 3 rows there is no meaningful local
density, so nothing is an outlier and every factor is 1 ("as dense as its
neighbours").
"""

from __future__ import annotations

import warnings

import numpy as np

from rare_objects.backends.outlier_detectors import (
    Detection,
    Detector,
    check_contamination,
    register,
)
from rare_objects.neighbors.search import AnnParams, approximate_knn

MIN_ROWS = 3


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
    """scikit-learn's LOF on given neighbours: ``(negative_outlier_factor_, is_outlier)``."""
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
    X: np.ndarray, n_neighbors: int, contamination, exact_max: int, ann: AnnParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """LOF over the rows of ``X`` in scikit-learn's sign: ``(negative_outlier_factor_ float32, is_outlier)``.

    Exact (scikit-learn on ``X``) when ``len(X) <= exact_max``, else on
    approximate neighbours; see the module docstring for tiny inputs.
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


def check_settings(settings: dict) -> None:
    check_contamination(settings["contamination"])
    if settings["n_neighbors"] < 1:
        raise ValueError("n_neighbors must be >= 1")


def detect(X: np.ndarray, settings: dict, seed: int) -> Detection:
    """The local outlier factor of each row (higher = more anomalous) and scikit-learn's flags."""
    negative_factor, is_outlier = lof_flags(
        X,
        settings["n_neighbors"],
        settings["contamination"],
        settings["exact_max_samples"],
        AnnParams(seed=seed, device=settings.get("device", "cpu")),
    )
    # Negating a float32 is exact: the stored LOF columns keep scikit-learn's values.
    return Detection(-negative_factor, is_outlier)


register(Detector(name="lof", detect=detect, check_settings=check_settings))
