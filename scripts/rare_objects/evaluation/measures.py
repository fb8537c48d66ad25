"""The measures of ``evaluation.json``, as plain functions over arrays and tables.

- :func:`category_counts`: per ground-truth category, how its objects come through
  each stage, and each flag's enrichment;
- :func:`ranking_measures`: how well a score ranks the rare objects above the rest
  (AUROC, average precision, recall among the top K) beside a random ranking;
- :func:`percentile_ranks` and :func:`combined_rank`: the scores of several
  detectors and of the global and per-class scopes on one scale, as the outliers
  stage combines them;
- :func:`selection_recall`: the share of the samples holding a category that a
  training selection contains, beside the exact random expectation at the same
  budget and the 5th-95th percentile of seeded random draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score


def enrichment(flag: np.ndarray, in_category: np.ndarray) -> float | None:
    """A flag's rate among the category's objects over its rate among all of them.

    ``flag`` and ``in_category`` are boolean arrays over the same objects (the
    matched ones). None when the category is empty or the flag never set.
    """
    flag = np.asarray(flag, dtype=bool)
    in_category = np.asarray(in_category, dtype=bool)
    overall = flag.mean() if len(flag) else 0.0
    if not in_category.any() or overall == 0:
        return None
    return float(flag[in_category].mean() / overall)


def category_counts(objects: pd.DataFrame, flags: list[str]) -> dict[str, dict]:
    """Per category of ``objects`` (one row per ground-truth object, columns
    ``category``, ``detected`` and the boolean ``flags``, false where not detected):
    objects, detected, recall, each flag's count and enrichment (its rate among
    the category's detected objects over its rate among all detected objects)."""
    detected = objects["detected"].to_numpy(dtype=bool)
    matched = objects[detected]
    result = {}
    for category, rows in objects.groupby("category", sort=True):
        hit = rows["detected"].to_numpy(dtype=bool)
        entry = {
            "objects": int(len(rows)),
            "detected": int(hit.sum()),
            "recall": round(float(hit.mean()), 4) if len(rows) else None,
        }
        in_category = matched["category"].to_numpy() == category
        for flag in flags:
            entry[flag] = int(rows[flag].to_numpy(dtype=bool).sum())
            ratio = enrichment(matched[flag].to_numpy(dtype=bool), in_category)
            entry[f"{flag}_enrichment"] = None if ratio is None else round(ratio, 3)
        result[str(category)] = entry
    return result


def empty_counts(flags: list[str]) -> dict:
    """:func:`category_counts`' entry for a group without objects."""
    entry = {"objects": 0, "detected": 0, "recall": None}
    for flag in flags:
        entry[flag] = 0
        entry[f"{flag}_enrichment"] = None
    return entry


def percentile_ranks(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Each score's percentile rank (share of the rows scoring at most as high, in (0, 1]),
    within its group when ``groups`` is given; NaN scores stay NaN. The outliers stage's
    rule for putting several detectors on one scale."""
    scores = np.asarray(scores, dtype=np.float64)
    ranks = np.full(len(scores), np.nan)
    valid = ~np.isnan(scores)
    if groups is None:
        if valid.any():
            ranks[valid] = rankdata(scores[valid], method="max") / valid.sum()
        return ranks
    groups = np.asarray(groups)
    for group in np.unique(groups[valid]):
        rows = np.flatnonzero(valid & (groups == group))
        ranks[rows] = rankdata(scores[rows], method="max") / len(rows)
    return ranks


def combined_rank(ranks: list[np.ndarray]) -> np.ndarray:
    """The highest of several percentile ranks per row, NaN ones left out (NaN when all are)."""
    stacked = np.vstack(ranks)
    missing = np.isnan(stacked).all(axis=0)
    out = np.full(stacked.shape[1], np.nan)
    out[~missing] = np.nanmax(stacked[:, ~missing], axis=0)
    return out


def recall_at_k(scores: np.ndarray, positive: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Share of the positives among the ``k`` highest scores, for each k up to the number
    of rows (ties broken by row order, so a constant score is no better than the order)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    found = np.cumsum(positive[order])
    total = int(positive.sum())
    return {str(k): round(float(found[k - 1] / total), 4) for k in ks if 0 < k <= len(order)}


def ranking_measures(scores: np.ndarray, positive: np.ndarray, ks: list[int]) -> dict:
    """AUROC, average precision and recall in the top K of ``scores`` (higher = more
    anomalous; NaN ranks last) for the ``positive`` rows. None where a measure is
    undefined (no positive, or no negative)."""
    scores = np.asarray(scores, dtype=np.float64)
    missing = np.isnan(scores)
    if missing.any():  # unscored rows rank below every scored one
        floor = scores[~missing].min() - 1.0 if (~missing).any() else 0.0
        scores = np.where(missing, floor, scores)
    positive = np.asarray(positive, dtype=bool)
    both = positive.any() and not positive.all()
    return {
        "auroc": round(float(roc_auc_score(positive, scores)), 4) if both else None,
        "average_precision": round(float(average_precision_score(positive, scores)), 4)
        if both
        else None,
        "recall_at_k": recall_at_k(scores, positive, ks) if positive.any() else {},
    }


def random_ranking(positive: np.ndarray, ks: list[int]) -> dict:
    """What a random ranking gives in expectation: AUROC 0.5, average precision the
    positives' share, recall in the top K = K / rows."""
    positive = np.asarray(positive, dtype=bool)
    n = len(positive)
    return {
        "auroc": 0.5,
        "average_precision": round(float(positive.mean()), 4) if n else None,
        "recall_at_k": {str(k): round(k / n, 4) for k in ks if 0 < k <= n},
    }


def selection_recall(
    holding: int, selected_holding: int, pool: int, budget: int, draws: int, seed: int
) -> dict:
    """The selection's share of the ``holding`` samples (of ``pool``) that hold a category,
    against a uniform random selection of ``budget`` samples: the exact expected share
    (budget / pool) and the 5th and 95th percentiles of ``draws`` seeded draws (the
    number of holding samples in a random selection is hypergeometric)."""
    if holding == 0 or pool == 0:
        return {"samples": holding, "selected": selected_holding, "share": None}
    counts = np.random.default_rng(seed).hypergeometric(holding, pool - holding, budget, draws)
    low, high = np.percentile(counts / holding, [5, 95])
    return {
        "samples": int(holding),
        "selected": int(selected_holding),
        "share": round(selected_holding / holding, 4),
        "random_expected_share": round(budget / pool, 4),
        "random_p05": round(float(low), 4),
        "random_p95": round(float(high), 4),
    }
