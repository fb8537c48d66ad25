"""LocalOutlierFactor over all objects and per class, OR-combined (the original's
predict_outliers_lof and detect_class_aware_outliers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import LocalOutlierFactor


def lof_flags(X: np.ndarray, n_neighbors: int, contamination, exact_max: int = 200_000):
    """(negative_outlier_factor_ scores, outlier flags) of scikit-learn's LOF on X."""
    n = len(X)
    if n < 3:
        return np.zeros(n, dtype=np.float32), np.zeros(n, dtype=bool)
    model = LocalOutlierFactor(n_neighbors=min(n_neighbors, n - 1), contamination=contamination)
    flags = model.fit_predict(X) == -1
    return model.negative_outlier_factor_.astype(np.float32), flags


def class_aware_outliers(X, class_names, n_neighbors, contamination, min_samples=10, exact_max=200_000) -> pd.DataFrame:
    class_names = np.asarray(class_names, dtype=object)
    global_score, global_flag = lof_flags(X, n_neighbors, contamination, exact_max)
    class_score = np.full(len(X), np.nan, dtype=np.float32)
    class_flag = np.zeros(len(X), dtype=bool)
    for name in pd.unique(class_names):
        rows = np.flatnonzero(class_names == name)
        if len(rows) >= min_samples:
            class_score[rows], class_flag[rows] = lof_flags(X[rows], n_neighbors, contamination, exact_max)
    code = global_flag.astype(np.int8) | (class_flag.astype(np.int8) << 1)
    return pd.DataFrame(
        {
            "class_name": class_names,
            "global_score": global_score,
            "class_score": pd.array(np.where(np.isnan(class_score), None, class_score), dtype="Float32"),
            "global_outlier": global_flag,
            "class_outlier": class_flag,
            "outlier_code": code,
            "is_outlier": code != 0,
        }
    )
