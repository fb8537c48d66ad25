"""Diversity filter: near-duplicate clusters by cosine similarity, capped per cluster."""

from __future__ import annotations

import numpy as np
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import radius_neighbors_graph


def diversity_filter(X, priority, threshold, max_per_cluster, exact_max=200_000):
    n = len(X)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, bool), []
    radius = float(np.sqrt(max(0.0, 2.0 - 2.0 * threshold)))
    graph = radius_neighbors_graph(X, radius=radius, mode="connectivity", include_self=False)
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((np.arange(n), np.asarray(priority, dtype=np.float64), labels))
    keep = np.zeros(n, dtype=bool)
    reason = ["kept"] * n
    seen: dict[int, int] = {}
    for i in order:
        count = seen.get(labels[i], 0)
        if count < max_per_cluster:
            keep[i] = True
        else:
            reason[i] = f"cluster_cap:{labels[i]}"
        seen[labels[i]] = count + 1
    return labels.astype(np.int64), keep, reason
