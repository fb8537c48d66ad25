"""Diversity filter: same as a dense brute force on small data; threshold and cap honoured."""

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from rare_objects.neighbors.search import AnnParams, normalised
from rare_objects.stages.diversity import (
    CLUSTER_CAP,
    KEPT,
    cap_clusters,
    diversity_filter,
    similarity_clusters,
)


def brute_force_diversity(X, priority, threshold, max_per_cluster):
    """Reference: dense similarity matrix, components, then a Python loop over the ranking."""
    Xn = normalised(X)
    S = Xn @ Xn.T
    _, labels = connected_components(S >= threshold, directed=False)
    n = len(X)
    prio = np.zeros(n) if priority is None else np.where(np.isnan(priority), np.inf, priority)
    keep = np.zeros(n, dtype=bool)
    taken = {}
    for i in sorted(range(n), key=lambda r: (prio[r], r)):
        if taken.get(labels[i], 0) < max_per_cluster:
            keep[i] = True
            taken[labels[i]] = taken.get(labels[i], 0) + 1
    return labels, keep


def canonical(labels):
    """Relabel by first occurrence, so that two labelings of the same partition compare equal."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse]


def near_duplicate_data(n=600, dim=24, groups=40, seed=0, exact_copies=20):
    """Random directions, plus groups of near copies (cos ~0.99) and some exact copies."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    owner = rng.integers(0, groups, n // 2)
    X[n // 2 :] = X[owner] + 0.08 * rng.standard_normal((n - n // 2, dim)).astype(np.float32)
    X[n - exact_copies :] = X[rng.integers(0, n // 2, exact_copies)]
    return normalised(X)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("cap", [1, 3])
def test_exact_path_equals_brute_force(seed, cap):
    X = near_duplicate_data(seed=seed)
    rng = np.random.default_rng(seed)
    priority = rng.standard_normal(len(X))
    priority[::7] = np.round(priority[::7])  # ties, broken by row
    priority[::11] = np.nan
    labels, keep, reason = diversity_filter(
        X, priority, threshold=0.97, max_per_cluster=cap, block_size=97
    )
    ref_labels, ref_keep = brute_force_diversity(X, priority, 0.97, cap)
    np.testing.assert_array_equal(labels, ref_labels)  # both numbered by first row
    np.testing.assert_array_equal(keep, ref_keep)
    assert labels.dtype == np.int64 and keep.dtype == bool
    assert reason == [KEPT if k else CLUSTER_CAP for k in keep]
    assert len(np.unique(labels)) < len(X)  # there are real clusters


def test_threshold_and_cap_honoured():
    X = near_duplicate_data(seed=5)
    labels, keep, _ = diversity_filter(X, None, threshold=0.95, max_per_cluster=2)
    counts = np.bincount(labels[keep])
    assert counts.max() <= 2
    assert (np.bincount(labels) >= 2).any()
    S = X @ X.T
    # objects in different clusters are never similar enough to be linked
    different = labels[:, None] != labels[None, :]
    assert (S[different] < 0.95).all()
    # each cluster keeps min(size, cap) objects
    np.testing.assert_array_equal(
        np.bincount(labels[keep], minlength=labels.max() + 1), np.minimum(np.bincount(labels), 2)
    )
    # no priority: the first rows of each cluster are kept
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        assert keep[rows[:2]].all() and not keep[rows[2:]].any()


def test_deterministic_and_order_of_priority():
    X = near_duplicate_data(seed=7)
    priority = np.random.default_rng(0).random(len(X))
    a = diversity_filter(X, priority, 0.96, 1)
    b = diversity_filter(X, priority, 0.96, 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for c in np.unique(a[0]):
        rows = np.flatnonzero(a[0] == c)
        assert a[1][rows[np.argmin(priority[rows])]]


def test_unnormalised_input_uses_cosine():
    X = near_duplicate_data(seed=8)
    scale = np.random.default_rng(1).uniform(0.5, 5, (len(X), 1)).astype(np.float32)
    a = diversity_filter(X, None, 0.97, 2)
    b = diversity_filter(X * scale, None, 0.97, 2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_edge_budget_folding_keeps_components():
    X = near_duplicate_data(n=500, groups=5, seed=9)
    full = similarity_clusters(X, 0.9)
    folded = similarity_clusters(X, 0.9, block_size=50, edge_budget=100)
    np.testing.assert_array_equal(full, folded)


@pytest.mark.parametrize("seed", [0, 1])
def test_approximate_path_matches_exact(seed):
    X = near_duplicate_data(n=2000, dim=32, groups=120, seed=seed, exact_copies=60)
    priority = np.random.default_rng(seed).random(len(X))
    ann = AnnParams(cell_size=100, nprobe=4, candidates=40, pca_dims=None)
    exact = diversity_filter(X, priority, 0.97, 2)
    approx = diversity_filter(X, priority, 0.97, 2, exact_max=0, ann=ann)
    # approximate clusters refine the exact ones (only true pairs are found) ...
    for c in np.unique(approx[0]):
        assert len(np.unique(exact[0][approx[0] == c])) == 1
    # ... and nearly all rows end up in the same cluster and with the same decision
    assert (canonical(approx[0]) == canonical(exact[0])).mean() >= 0.99
    assert (approx[1] == exact[1]).mean() >= 0.99
    assert approx[2] == [KEPT if k else CLUSTER_CAP for k in approx[1]]


def test_small_inputs():
    labels, keep, reason = diversity_filter(np.zeros((0, 8), np.float32), [], 0.9, 3)
    assert labels.shape == (0,) and keep.shape == (0,) and reason == []
    one = diversity_filter(np.ones((1, 8), np.float32), [0.0], 0.9, 3)
    assert one[0].tolist() == [0] and one[1].tolist() == [True] and one[2] == [KEPT]
    same = diversity_filter(np.ones((5, 8), np.float32), None, 0.9, 2)
    assert same[0].tolist() == [0] * 5 and same[1].tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError):
        diversity_filter(np.ones((2, 8), np.float32), None, 0.9, 0)
    with pytest.raises(ValueError):
        cap_clusters(np.zeros(3, np.int64), np.zeros(2), 1)
