"""Diversity filter: near-duplicate clusters by cosine similarity, capped per cluster.

Objects whose embeddings have cosine similarity >= ``threshold`` are linked;
the clusters are the connected components of that graph (so similarity is
chained: A~B and B~C put A, B and C in one cluster even when A and C differ
more). In each cluster at most ``max_per_cluster`` objects are kept, by
ascending ``priority`` (selection passes the negated anomaly score: most
anomalous first), ties by row.

The similar pairs come from :func:`rare_objects.neighbors.search.iter_similar_pairs`:
exact blocked products up to ``exact_max`` rows, each row's approximate
``max_neighbors`` nearest neighbours above. The graph is never dense: edges
are folded into a spanning forest whenever more than ``edge_budget``
accumulate, so memory stays O(n + edge_budget) even for a set of identical
images.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rare_objects.neighbors.search import AnnParams, iter_similar_pairs

KEPT = "kept"
CLUSTER_CAP = "cluster_cap"

# Near-duplicate search above exact_max: pairs at cosine >= 0.9 are close, so
# fewer cells and candidates than the LOF's search find them. The exact cell scan, as
# measured in bench/diversity.py (the product-code scan was measured for the LOF only).
DIVERSITY_ANN = AnnParams(nprobe=6, candidates=48, cell_scan="flat")


def _labels(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    graph = coo_matrix((np.ones(i.size, dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _forest(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edges linking every row to the first row of its component (a spanning forest)."""
    n = labels.size
    first = np.full(labels.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    root = first[labels]
    nontrivial = root != np.arange(n)
    return root[nontrivial], np.flatnonzero(nontrivial)


def similarity_clusters(
    X: np.ndarray,
    threshold: float,
    ann: AnnParams | None = None,
    edge_budget: int = 20_000_000,
    **search,
) -> np.ndarray:
    """Cluster label (int64, 0..c-1, numbered by first row) of each row.

    ``search``: the other keywords of :func:`rare_objects.neighbors.search.iter_similar_pairs`
    (``exact_max``, ``block_size``, ``max_neighbors``); ``ann`` defaults to :data:`DIVERSITY_ANN`.
    """
    n = len(X)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    held = 0
    for i, j, _ in iter_similar_pairs(X, threshold, ann=ann or DIVERSITY_ANN, **search):
        rows.append(i)
        cols.append(j)
        held += i.size
        if held > edge_budget:
            labels = _labels(n, np.concatenate(rows), np.concatenate(cols))
            a, b = _forest(labels)
            rows, cols, held = [a], [b], a.size
    if not rows:
        return np.arange(n, dtype=np.int64)
    return _labels(n, np.concatenate(rows), np.concatenate(cols))


def cap_clusters(
    labels: np.ndarray, priority: np.ndarray | None, max_per_cluster: int
) -> np.ndarray:
    """Keep mask: the ``max_per_cluster`` lowest-priority rows of each cluster (ties: lower row)."""
    n = labels.size
    if priority is None:
        priority = np.zeros(n)
    priority = np.asarray(priority, dtype=np.float64)
    if priority.shape != (n,):
        raise ValueError(f"priority has shape {priority.shape}, expected ({n},)")
    priority = np.where(np.isnan(priority), np.inf, priority)  # unknown priority: last
    order = np.lexsort((np.arange(n), priority, labels))
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.arange(n) - group_start
    keep = np.empty(n, dtype=bool)
    keep[order] = rank < max_per_cluster
    return keep


def diversity_filter(
    X: np.ndarray,
    priority=None,
    threshold: float = 0.95,
    max_per_cluster: int = 3,
    **search,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cluster near-duplicates and cap each cluster.

    Returns ``(cluster_id int64, keep bool, reason)``: ``reason[i]`` is
    ``"kept"`` or ``"cluster_cap"`` (the cluster already has
    ``max_per_cluster`` objects of lower priority; ``cluster_id`` says which).
    ``priority``: lower is kept first (NaN last); None keeps by row order.
    ``search``: how the similar pairs are found (:func:`similarity_clusters`'s
    keywords: ``exact_max``, ``block_size``, ``max_neighbors``, ``ann``).
    """
    if max_per_cluster < 1:
        raise ValueError("max_per_cluster must be >= 1")
    X = np.asarray(X)
    n = len(X)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), []
    labels = similarity_clusters(X, threshold, **search)
    keep = cap_clusters(labels, priority, max_per_cluster)
    reason = np.where(keep, KEPT, CLUSTER_CAP).tolist()
    return labels, keep, reason
