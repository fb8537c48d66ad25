"""IsolationForest (scikit-learn), seeded with the run's seed.

The method's published code unions it with LOF: ``outliers.detectors: [lof,
isolation_forest]``. Score: the anomaly score of Liu et al. (2008),
``-score_samples(X)``, in (0, 1]; higher = more anomalous (rows isolated by
shorter paths). Flags: scikit-learn's ``predict == -1`` (the
``contamination`` share of the rows, or its fixed offset for ``"auto"``).

It scales linearly without a neighbour search: each tree is grown on a
subsample of ``max_samples`` rows (scikit-learn's ``"auto"``: min(256, n)),
so fitting costs the same for any n and scoring is one pass over the rows
per tree; there is no exact/approximate switch.
"""

from __future__ import annotations

import numpy as np

from rare_objects.backends.outlier_detectors import (
    Detection,
    Detector,
    check_contamination,
    register,
)


def check_settings(settings: dict) -> None:
    check_contamination(settings["contamination"])


def detect(X: np.ndarray, settings: dict, seed: int) -> Detection:
    """Liu et al.'s anomaly score per row (higher = more anomalous) and scikit-learn's flags."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=settings["n_estimators"],
        max_samples=settings["max_samples"],
        contamination=check_contamination(settings["contamination"]),
        random_state=seed,
    ).fit(X)
    score = forest.score_samples(X)
    # predict() is score_samples - offset_ < 0; computed here once instead of scoring twice.
    return Detection(-score, score - forest.offset_ < 0)


register(Detector(name="isolation_forest", detect=detect, check_settings=check_settings))
