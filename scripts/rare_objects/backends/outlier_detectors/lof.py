"""LocalOutlierFactor, the default detector and the original's method.

Score: the local outlier factor itself (``-negative_outlier_factor_``; about 1
for a row as dense as its neighbours, higher = more anomalous). Flags:
scikit-learn's contamination rule (``fit_predict == -1``).

Up to ``exact_max_samples`` rows this is scikit-learn's
``LocalOutlierFactor(n_neighbors, contamination).fit_predict(X)`` itself, so
flags and scores are exactly the original's. Above it, the neighbours come
from the approximate search of :mod:`rare_objects.neighbors.search` (seeded
with the run's seed) and the LOF arithmetic runs on them block by block
(:func:`lof_from_neighbors`): scikit-learn's own operations, in its order and
precision, so the result equals ``LocalOutlierFactor(metric="precomputed")`` on
the same neighbours (a test checks it) without the copies that estimator makes
(about 6 GB more at 10,000,000 rows).

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
from rare_objects.backends.outlier_detectors._class_neighbours import class_neighbours
from rare_objects.neighbors.search import AnnParams, approximate_knn, rows_float32

MIN_ROWS = 3
BLOCK_ROWS = 1 << 16


def lof_from_neighbors(
    dist: np.ndarray, ind: np.ndarray, n_neighbors: int, contamination
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's LOF on given neighbours: ``(negative_outlier_factor_, is_outlier)``.

    ``dist`` (float32, ascending per row) and ``ind``: each row's nearest other rows; the
    first ``n_neighbors`` columns are used. The arithmetic is
    ``LocalOutlierFactor.fit``'s (reachability distances, their float32 mean, the
    densities' ratios, the ``contamination`` percentile, or -1.5 for ``"auto"``), done
    ``BLOCK_ROWS`` rows at a time: row by row the same operations, so the same values.
    """
    contamination = check_contamination(contamination)
    dist = np.asarray(dist, dtype=np.float32)[:, :n_neighbors]
    ind = np.asarray(ind)[:, :n_neighbors]
    n = dist.shape[0]
    k_distance = np.ascontiguousarray(dist[:, n_neighbors - 1])
    density = np.empty(n, dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        reach = np.maximum(dist[block], k_distance[ind[block]])
        # 1e-10 as scikit-learn: no nan when more duplicates than neighbours
        density[block] = 1.0 / (np.mean(reach, axis=1) + 1e-10)
    negative_factor = np.empty(n, dtype=np.float32)
    for start in range(0, n, BLOCK_ROWS):
        block = slice(start, start + BLOCK_ROWS)
        negative_factor[block] = -np.mean(density[ind[block]] / density[block, None], axis=1)
    if contamination == "auto":
        offset = -1.5
    else:
        offset = np.percentile(negative_factor, 100.0 * contamination)
    return negative_factor, negative_factor < offset


def lof_flags(
    X: np.ndarray,
    n_neighbors: int,
    contamination,
    exact_max: int,
    ann: AnnParams | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """LOF over the rows of ``X`` in scikit-learn's sign: ``(negative_outlier_factor_ float32, is_outlier)``.

    Exact (scikit-learn on ``X``) when ``len(X) <= exact_max``, else on
    approximate neighbours; see the module docstring for tiny inputs. ``rows``: over
    these rows of ``X`` only (one result per entry), read without copying ``X``.
    """
    contamination = check_contamination(contamination)
    if n_neighbors < 1:
        raise ValueError("n_neighbors must be >= 1")
    X = np.asarray(X)
    n = X.shape[0] if rows is None else len(rows)
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
            labels = lof.fit_predict(rows_float32(X, rows))
        return lof.negative_outlier_factor_.astype(np.float32), labels == -1
    dist, ind = approximate_knn(X, k, ann, rows)
    return lof_from_neighbors(dist, ind, k, contamination)


def check_settings(settings: dict) -> None:
    check_contamination(settings["contamination"])
    if settings["n_neighbors"] < 1:
        raise ValueError("n_neighbors must be >= 1")


def detect(X: np.ndarray, settings: dict, seed: int, rows: np.ndarray | None = None) -> Detection:
    """The local outlier factor of each row (higher = more anomalous) and scikit-learn's flags."""
    negative_factor, is_outlier = lof_flags(
        X,
        settings["n_neighbors"],
        settings["contamination"],
        settings["exact_max_samples"],
        AnnParams(seed=seed, device=settings.get("device", "cpu")),
        rows,
    )
    # Negating a float32 is exact: the stored LOF columns keep scikit-learn's values.
    return Detection(-negative_factor, is_outlier)


def detect_with_classes(
    X: np.ndarray, settings: dict, seed: int, class_rows: list[np.ndarray]
) -> tuple[Detection, list[Detection | None]] | None:
    """LOF on all rows and, from the same neighbour search, within each class above
    ``exact_max_samples`` rows (:mod:`rare_objects.neighbors.groups`); the classes at most
    ``exact_max_samples`` are left to :func:`detect` (scikit-learn's LOF itself)."""
    n = X.shape[0]
    if n < MIN_ROWS:
        return None
    k = min(settings["n_neighbors"], n - 1)
    found = class_neighbours(X, k, settings, seed, class_rows)
    if found is None:
        return None
    contamination = settings["contamination"]
    negative_factor, is_outlier = lof_from_neighbors(found.dist, found.ind, k, contamination)
    per_class: list[Detection | None] = [None] * len(class_rows)
    for number in found.derived:
        class_factor, class_outlier = lof_from_neighbors(
            *found.class_tables(number), k, contamination
        )
        per_class[number] = Detection(-class_factor, class_outlier)
    return Detection(-negative_factor, is_outlier), per_class


register(
    Detector(
        name="lof",
        detect=detect,
        check_settings=check_settings,
        detect_with_classes=detect_with_classes,
    )
)
