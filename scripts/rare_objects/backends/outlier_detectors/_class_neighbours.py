"""The neighbour tables of the neighbour-based detectors (lof, knn_distance) on all rows and
within each big class from one search (:mod:`rare_objects.neighbors.groups`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rare_objects.neighbors.groups import GroupNeighbours, knn_with_groups
from rare_objects.neighbors.search import AnnParams, search_device


@dataclass(frozen=True)
class ClassNeighbours:
    """The ``k`` nearest other rows of every row (``dist``, ``ind``) and, for the classes
    ``derived`` (their numbers in the caller's list, each with its rows), within them."""

    dist: np.ndarray
    ind: np.ndarray
    derived: dict[int, np.ndarray]
    within: GroupNeighbours

    def class_tables(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``number``'s tables, row numbers as positions among its rows."""
        return self.within.tables(self.derived[number], self.dist, self.ind)

    def class_distances(self, number: int) -> np.ndarray:
        """Class ``number``'s neighbour distances alone (``class_tables(number)[0]``)."""
        return self.within.distances(self.derived[number], self.dist)


def class_neighbours(
    X: np.ndarray, k: int, settings: dict, seed: int, class_rows: list[np.ndarray]
) -> ClassNeighbours | None:
    """One search for all rows and the classes above ``exact_max_samples`` rows, or None
    where that does not apply and each scope is searched on its own: all rows within
    ``exact_max_samples`` (exact, scikit-learn), the search on a GPU (exact per class
    anyway), or no class above ``exact_max_samples`` with more than ``k`` rows."""
    exact_max = settings["exact_max_samples"]
    ann = AnnParams(seed=seed, device=settings.get("device", "cpu"))
    if X.shape[0] <= exact_max or search_device(ann.device) != "cpu":
        return None
    # a class at most exact_max is searched exactly on its own (scikit-learn, the original's
    # values); one of k rows or fewer uses fewer neighbours than k
    derived = {
        number: rows for number, rows in enumerate(class_rows) if rows.size > max(exact_max, k)
    }
    if not derived:
        return None
    dist, ind, within = knn_with_groups(X, k, list(derived.values()), ann)
    return ClassNeighbours(dist, ind, derived, within)
