"""IsolationForest (scikit-learn), seeded with the run's seed.

The method's published code unions it with LOF: ``outliers.detectors: [lof,
isolation_forest]``. Score: the anomaly score of Liu et al. (2008),
``-score_samples(X)``, in (0, 1]; higher = more anomalous (rows isolated by
shorter paths). Flags: scikit-learn's ``predict == -1`` (the
``contamination`` share of the rows, or its fixed offset for ``"auto"``).

It scales linearly without a neighbour search: each tree is grown on a
subsample of ``max_samples`` rows (scikit-learn's ``"auto"``: min(256, n)),
so fitting costs the same for any n and scoring is one pass over the rows
per tree.

A float32 matrix of all rows, or up to ``exact_max_samples`` rows, is scikit-learn's
``fit(X)`` as it is. float16 embeddings (``embedder.storage``) or one class of more
rows are not copied to float32 as a whole: the trees grow on a seeded sample of
``n_estimators x max_samples`` rows (what they could draw from), and the rows are
scored block by block, the contamination rule applied to all their scores.
"""

from __future__ import annotations

import numpy as np

from rare_objects.backends.outlier_detectors import (
    Detection,
    Detector,
    check_contamination,
    register,
)

BLOCK_ROWS = 1 << 16


def check_settings(settings: dict) -> None:
    check_contamination(settings["contamination"])


def detect(X: np.ndarray, settings: dict, seed: int, rows: np.ndarray | None = None) -> Detection:
    """Liu et al.'s anomaly score per row (higher = more anomalous) and scikit-learn's flags."""
    from sklearn.ensemble import IsolationForest

    from rare_objects.neighbors.search import rows_float32

    forest = IsolationForest(
        n_estimators=settings["n_estimators"],
        max_samples=settings["max_samples"],
        contamination=check_contamination(settings["contamination"]),
        random_state=seed,
    )
    n = X.shape[0] if rows is None else len(rows)
    whole = rows is None and X.dtype == np.float32
    if whole or n <= settings["exact_max_samples"]:
        X = rows_float32(X, rows)
        forest.fit(X)
        score = forest.score_samples(X)
        # predict() is score_samples - offset_ < 0; computed here once instead of scoring twice.
        return Detection(-score, score - forest.offset_ < 0)
    # float16 rows or a subset of many: no float32 copy of them all. The trees are grown
    # on a seeded sample of the rows they could draw from (n_estimators x max_samples),
    # the rows are scored block by block, and the contamination rule is scikit-learn's
    # (the share of all rows' scores, or its fixed offset for "auto").
    per_tree = settings["max_samples"]
    per_tree = min(256, n) if per_tree == "auto" else per_tree
    per_tree = int(per_tree * n) if isinstance(per_tree, float) else int(per_tree)
    size = min(n, settings["n_estimators"] * per_tree)
    sample = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    forest.fit(rows_float32(X, sample if rows is None else rows[sample]))
    score = np.empty(n, dtype=np.float64)
    for start in range(0, n, BLOCK_ROWS):
        block = np.arange(start, min(start + BLOCK_ROWS, n))
        score[start : start + len(block)] = forest.score_samples(
            rows_float32(X, block if rows is None else rows[block])
        )
    contamination = forest.contamination
    offset = -0.5 if contamination == "auto" else np.percentile(score, 100.0 * contamination)
    return Detection(-score, score - offset < 0)


register(Detector(name="isolation_forest", detect=detect, check_settings=check_settings))
