"""Mean distance to the k nearest neighbours (Angiulli & Pizzuti's kNN-weight, averaged).

Score: the mean Euclidean distance from a row to its ``n_neighbors`` nearest
other rows (on unit rows, ``sqrt(2 - 2 cos)``); higher = more anomalous
(farther from everything). Flags: the rows whose score is strictly above the
``1 - contamination`` quantile of the scores (numpy's linear interpolation),
so about a ``contamination`` share of the rows, fewer when scores tie at the
threshold. ``contamination`` must be a number: there is no ``"auto"`` rule.

Neighbours come from :func:`rare_objects.neighbors.search.knn`: exact
(scikit-learn) up to ``exact_max_samples`` rows, the scalable approximate
search (seeded with the run's seed) above. With ``n <= n_neighbors`` rows,
``n - 1`` neighbours are used; a single row has score 0 and is no outlier.
"""

from __future__ import annotations

import numpy as np

from rare_objects.backends.outlier_detectors import (
    Detection,
    Detector,
    check_contamination,
    register,
)
from rare_objects.backends.outlier_detectors._class_neighbours import class_neighbours
from rare_objects.neighbors.search import AnnParams, knn


def check_settings(settings: dict) -> None:
    check_contamination(settings["contamination"], allow_auto=False)
    if settings["n_neighbors"] < 1:
        raise ValueError("n_neighbors must be >= 1")


def detect(X: np.ndarray, settings: dict, seed: int, rows: np.ndarray | None = None) -> Detection:
    """Mean distance to the k nearest rows (higher = more anomalous); outliers above the quantile."""
    check_settings(settings)
    contamination = float(settings["contamination"])
    n = X.shape[0] if rows is None else len(rows)
    if n < 2:
        return Detection(np.zeros(n, np.float32), np.zeros(n, bool))
    k = min(settings["n_neighbors"], n - 1)
    ann = AnnParams(seed=seed, device=settings.get("device", "cpu"))
    dist, _ = knn(X, k, settings["exact_max_samples"], ann, rows)
    return _from_distances(dist, contamination)


def _from_distances(dist: np.ndarray, contamination: float) -> Detection:
    score = dist.mean(axis=1, dtype=np.float64).astype(np.float32)
    threshold = np.quantile(score, 1.0 - contamination)
    return Detection(score, score > threshold)


def detect_with_classes(
    X: np.ndarray, settings: dict, seed: int, class_rows: list[np.ndarray]
) -> tuple[Detection, list[Detection | None]] | None:
    """The score on all rows and, from the same neighbour search, within each class above
    ``exact_max_samples`` rows (:mod:`rare_objects.neighbors.groups`)."""
    check_settings(settings)
    n = X.shape[0]
    if n < 2:
        return None
    found = class_neighbours(X, min(settings["n_neighbors"], n - 1), settings, seed, class_rows)
    if found is None:
        return None
    contamination = float(settings["contamination"])
    per_class: list[Detection | None] = [None] * len(class_rows)
    for number in found.derived:
        per_class[number] = _from_distances(found.class_distances(number), contamination)
    return _from_distances(found.dist, contamination), per_class


register(
    Detector(
        name="knn_distance",
        detect=detect,
        check_settings=check_settings,
        detect_with_classes=detect_with_classes,
    )
)
