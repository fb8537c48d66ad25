"""Each row's nearest neighbours within its group (its detector class), derived from the search over all rows.

The outliers stage runs LOF on all rows and again within each big class. Searching
every class on its own repeats, for the rows of the big classes, most of the work of
the search over all rows: on 1,000,000 objects whose biggest class holds a third, the
per-class searches cost about as much as the global one.

The global search already re-ranks each row's ``candidates`` (80) nearest rows with
exact distances. The ``k`` nearest of them *of the row's own group* are the row's
``k`` nearest within its group whenever the candidates are its true nearest rows: any
closer row of its group would be among them. So the group neighbours come from the
same candidates, as exact as the global ones, at the cost of a mask and a sort:

- most rows' ``k`` nearest overall already all belong to their group; their group
  neighbours are the global ones, and nothing is stored for them;
- the others (a row of one class among another's, e.g. a planted outlier) keep their
  group's ``k`` nearest among their candidates, stored apart (:class:`GroupNeighbours`),
  when the ``k``-th of them is in the nearer half of the candidates;
- a row with fewer (or a ``k``-th further out) is searched within its group
  afterwards: exactly when few rows need it, else by the approximate search of the
  group restricted to those rows' cells.

Memory: the group array (4 bytes a row) and the stored rows; no second ``n x k`` table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rare_objects.neighbors.search import (
    AnnParams,
    approximate_knn,
    exhaustive_knn,
    index_dtype,
)


class WithinGroups:
    """Collects, while the global search re-ranks, each row's nearest of its own group.

    ``groups``: each row's group number (-1: no group search for that row). The search
    calls :meth:`add` with every block it re-ranks.
    """

    def __init__(self, groups: np.ndarray, k: int):
        self.groups = groups
        self.k = k
        self._rows, self._dist, self._ind, self._short = [], [], [], []

    def add(
        self,
        rows: np.ndarray,
        candidates: np.ndarray,
        d2: np.ndarray,
        found: np.ndarray,
        complete: np.ndarray,
    ) -> None:
        """One re-ranked block: ``rows``, their sorted ``candidates`` (-1: none), the
        squared distances to them (inf where not valid), the ``k`` nearest ``found`` and
        whether they are ``complete`` (k valid ones)."""
        group = self.groups[rows]
        searched = group >= 0
        if not searched.any():
            return
        # Rows whose k nearest overall are all of their group: those are their group's k
        # nearest too (the same candidates in the same order), nothing to store.
        same = np.zeros(len(rows), dtype=bool)
        same[complete] = (self.groups[found[complete]] == group[complete, None]).all(axis=1)
        differs = searched & ~same
        if not differs.any():
            return
        rows, group = rows[differs], group[differs]
        candidates, all_d2 = candidates[differs], d2[differs]
        of_group = (candidates >= 0) & (self.groups[np.maximum(candidates, 0)] == group[:, None])
        d2 = np.where(of_group, all_d2, np.inf)
        pick = np.argsort(d2, axis=1, kind="stable")[:, : self.k]
        best = np.take_along_axis(d2, pick, axis=1)
        # Trusted only when the group's k-th nearest is in the nearer half of the row's
        # candidates: the candidate search ranks the far end of its list least well, so a
        # nearer row of the group may have been left out there (rows of a group scattered
        # among another's, a quarter of all rows drawn at random: recall@10 0.943 without
        # this rule, 0.9998 with it, in tests/test_neighbor_groups.py).
        ahead = (all_d2 < best[:, -1:]).sum(axis=1)
        ok = np.isfinite(best[:, -1]) & (ahead < all_d2.shape[1] // 2)
        self._rows.append(rows[ok])
        self._dist.append(np.sqrt(best[ok]))
        self._ind.append(np.take_along_axis(candidates, pick, axis=1)[ok])
        self._short.append(rows[~ok])

    def short_rows(self) -> np.ndarray:
        """The rows with fewer than ``k`` candidates of their group (ascending)."""
        return np.sort(np.concatenate(self._short)) if self._short else np.empty(0, np.int64)

    def stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, dist, ind)`` of the rows whose group neighbours differ from their global ones."""
        if not self._rows:
            k = self.k
            return np.empty(0, np.int64), np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate(self._rows), np.concatenate(self._dist), np.concatenate(self._ind)


@dataclass(frozen=True)
class GroupNeighbours:
    """The group neighbours of the rows where they differ from the global ones: ``rows``
    (ascending), their ``dist`` (float32, ascending per row) and ``ind`` (row numbers of
    the whole matrix); every other searched row's group neighbours are its global ones."""

    rows: np.ndarray
    dist: np.ndarray
    ind: np.ndarray

    def _stored(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which of ``members`` (ascending) have neighbours stored here, and where."""
        pos = np.searchsorted(self.rows, members)
        hit = pos < self.rows.size
        hit[hit] = self.rows[pos[hit]] == members[hit]
        return hit, pos[hit]

    def distances(self, members: np.ndarray, dist: np.ndarray) -> np.ndarray:
        """One group's neighbour distances alone, ``tables(...)[0]``, from the global
        ``dist``: for a score that needs no neighbour ids (kNN distance), without the
        positions' table."""
        group_dist = dist[members]
        hit, where = self._stored(members)
        group_dist[hit] = self.dist[where]
        return group_dist

    def tables(
        self, members: np.ndarray, dist: np.ndarray, ind: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The neighbour tables of one group, ``members`` (ascending row numbers), from
        the global ``dist`` and ``ind``: ``(dist, ind)`` with ``ind`` as positions in
        ``members``, as :func:`rare_objects.neighbors.search.knn` with ``rows=members``
        returns them."""
        group_dist = self.distances(members, dist)
        group_ind = ind[members]
        hit, where = self._stored(members)
        group_ind[hit] = self.ind[where]
        local = np.searchsorted(members, group_ind)
        outside = (local >= members.size) | (
            members[np.minimum(local, members.size - 1)] != group_ind
        )
        if outside.any():  # a bug, not bad input: every neighbour kept is of the group
            raise RuntimeError(
                f"{int(outside.any(axis=1).sum())} rows have neighbours outside their group"
            )
        return group_dist, local.astype(index_dtype(members.size))


def _search_in_group(
    X: np.ndarray, members: np.ndarray, queries: np.ndarray, k: int, ann: AnnParams
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of ``queries`` (positions in ``members``) within ``members``: exact
    brute force when there are few of them (fewer than half the group's cells: cheaper
    than the group's k-means), else the approximate search restricted to their cells."""
    if _few(queries.size, members.size, ann):
        return exhaustive_knn(X, k, rows=members, queries=queries)
    return approximate_knn(X, k, ann, rows=members, queries=queries)


def _few(queries: int, rows: int, ann: AnnParams) -> bool:
    """Whether brute force for ``queries`` rows among ``rows`` costs less than the
    approximate search's k-means of them: fewer queries than half its cells."""
    cells = ann.nlist or max(1, int(round(rows / ann.cell_size)))
    return queries <= cells // 2


def knn_with_groups(
    X: np.ndarray, k: int, group_rows: list[np.ndarray], ann: AnnParams | None = None
) -> tuple[np.ndarray, np.ndarray, GroupNeighbours]:
    """The approximate ``k`` nearest other rows of every row of ``X`` (as
    :func:`rare_objects.neighbors.search.approximate_knn`) and, for the rows of each
    group of ``group_rows`` (disjoint, ascending row numbers, each of more than ``k``
    rows), their ``k`` nearest within their group: ``(dist, ind, within)``, the group's
    tables being ``within.tables(group_rows[g], dist, ind)``. CPU, one partition.
    """
    ann = ann or AnnParams()
    n = np.asarray(X).shape[0]
    groups = np.full(n, -1, dtype=np.int32)
    for number, members in enumerate(group_rows):
        if members.size <= k:
            raise ValueError(f"group {number} has {members.size} rows, k = {k} needs more")
        if members.size > 1 and not (np.diff(members) > 0).all():
            raise ValueError(f"group {number}: row numbers must be ascending and distinct")
        if (groups[members] >= 0).any():
            raise ValueError(f"group {number} shares rows with an earlier group")
        groups[members] = number
    collector = WithinGroups(groups, k)
    dist, ind = approximate_knn(X, k, ann, within=collector)
    rows, group_dist, group_ind = collector.stored()
    parts = [(rows, group_dist, group_ind)]
    short = collector.short_rows()
    for number in np.unique(groups[short]):
        members = group_rows[number]
        wanted = short[groups[short] == number]
        found_dist, found_ind = _search_in_group(
            X, members, np.searchsorted(members, wanted), k, ann
        )
        parts.append((wanted, found_dist, members[found_ind]))
    rows = np.concatenate([p[0] for p in parts])
    order = np.argsort(rows, kind="stable")
    within = GroupNeighbours(
        rows[order],
        np.concatenate([p[1] for p in parts])[order],
        np.concatenate([p[2] for p in parts]).astype(np.int64)[order],
    )
    return dist, ind, within


__all__ = ["GroupNeighbours", "WithinGroups", "knn_with_groups"]
