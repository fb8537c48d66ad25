"""Neighbours within a group (a detector class) derived from the search over all rows, and the
outliers stage's use of them (``outliers.class_search``)."""

import warnings

import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from rare_objects.backends import outlier_detectors
from rare_objects.backends.outlier_detectors import lof
from rare_objects.neighbors import groups as groups_module
from rare_objects.neighbors import search
from rare_objects.neighbors.groups import knn_with_groups
from rare_objects.neighbors.search import AnnParams, approximate_knn, exact_knn, exhaustive_knn
from rare_objects.runtime.config import defaults
from rare_objects.stages.outliers import class_aware_outliers
from tests.test_neighbors import clustered, recall


def labelled(n=4000, seed=0, shares=(0.6, 0.25, 0.1)):
    """Clustered rows and three groups drawn at random (so many rows sit among another
    group's rows), the rest of the rows in no group."""
    X = clustered(n, dim=32, clusters=10, seed=seed)
    label = np.random.default_rng(seed).choice(4, size=n, p=[*shares, 1 - sum(shares)])
    return X, [np.flatnonzero(label == g) for g in range(3)]


def check_group_tables(X, members, dist, ind, k):
    """Ascending, no row itself, every neighbour in the group and its true distance."""
    assert dist.shape == ind.shape == (members.size, k)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert not (ind == np.arange(members.size)[:, None]).any()
    assert ind.min() >= 0 and ind.max() < members.size
    rows = X[members]
    true = np.linalg.norm(rows[ind] - rows[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true, atol=1e-5)


def test_group_neighbours_are_exact_when_every_row_is_a_candidate():
    X, group_rows = labelled(1500, seed=1)
    k = 8
    everything = AnnParams(nlist=1, pca_dims=None, candidates=1499)
    dist, ind, within = knn_with_groups(X, k, group_rows, everything)
    _, truth = exact_knn(X, k)
    np.testing.assert_array_equal(ind, truth)
    for members in group_rows:
        group_dist, group_ind = within.tables(members, dist, ind)
        ref_dist, ref_ind = exact_knn(X[members], k)
        np.testing.assert_array_equal(group_ind, ref_ind)
        np.testing.assert_allclose(group_dist, ref_dist, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_group_neighbours_close_to_a_search_of_each_group(dtype):
    X, group_rows = labelled(4000, seed=2)
    X = X.astype(dtype)
    k = 10
    params = AnnParams(cell_size=200, nprobe=6, candidates=40, pca_dims=16)
    dist, ind, within = knn_with_groups(X, k, group_rows, params)
    # the global tables are the plain search's
    plain_dist, plain_ind = approximate_knn(X, k, params)
    np.testing.assert_array_equal(ind, plain_ind)
    np.testing.assert_array_equal(dist, plain_dist)
    assert 0 < within.rows.size < len(X)  # stored: only rows whose neighbours differ
    wide = X.astype(np.float32)
    for members in group_rows:
        group_dist, group_ind = within.tables(members, dist, ind)
        check_group_tables(wide, members, group_dist, group_ind, k)
        # the distances alone (kNN distance reads no ids) are the tables' distances
        np.testing.assert_array_equal(within.distances(members, dist), group_dist)
        _, truth = exact_knn(wide[members], k)
        _, separate = approximate_knn(X, k, params, rows=members)
        assert recall(group_ind, truth) >= min(0.98, recall(separate, truth) - 0.01)


@pytest.mark.parametrize("expected", ["exhaustive", "approximate"])
def test_rows_short_of_group_candidates_are_searched_within_their_group(monkeypatch, expected):
    # a group of 5 % of rows drawn at random: most of its rows have fewer than k
    # candidates of their own group among 30
    X, group_rows = labelled(3000, seed=3, shares=(0.05, 0.5, 0.2))
    k = 6
    calls = []

    def spy(name, real):
        def wrapped(*args, **kwargs):
            if "queries" in kwargs:  # not the search over all rows
                calls.append((name, kwargs["queries"].size))
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(groups_module, "exhaustive_knn", spy("exhaustive", exhaustive_knn))
    monkeypatch.setattr(groups_module, "approximate_knn", spy("approximate", approximate_knn))
    monkeypatch.setattr(groups_module, "_few", lambda *args: expected == "exhaustive")
    params = AnnParams(cell_size=50, nprobe=4, candidates=30, pca_dims=None)
    dist, ind, within = knn_with_groups(X, k, group_rows, params)
    assert calls and all(name == expected and size for name, size in calls), calls
    small = group_rows[0]
    group_dist, group_ind = within.tables(small, dist, ind)
    check_group_tables(X, small, group_dist, group_ind, k)
    _, truth = exact_knn(X[small], k)
    assert recall(group_ind, truth) >= (1.0 if expected == "exhaustive" else 0.9)


def test_queries_and_the_exhaustive_search():
    X = clustered(3000, dim=24, seed=4)
    members = np.flatnonzero(np.arange(3000) % 3 != 0)
    queries = np.array([0, 5, 17, 400, 1999])
    params = AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=12)
    full_dist, full_ind = approximate_knn(X, 7, params, rows=members)
    dist, ind = approximate_knn(X, 7, params, rows=members, queries=queries)
    np.testing.assert_array_equal(ind, full_ind[queries])
    np.testing.assert_array_equal(dist, full_dist[queries])
    exact_dist, exact_ind = exact_knn(X[members], 7)
    dist, ind = exhaustive_knn(X, 7, rows=members, queries=queries)
    np.testing.assert_array_equal(ind, exact_ind[queries])
    np.testing.assert_allclose(dist, exact_dist[queries], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="queries must be positions"):
        approximate_knn(X, 7, params, rows=members, queries=np.array([members.size]))


def test_groups_must_be_disjoint_ascending_and_bigger_than_k():
    X = clustered(200, dim=8)
    with pytest.raises(ValueError, match="shares rows"):
        knn_with_groups(X, 3, [np.arange(0, 50), np.arange(40, 90)])
    with pytest.raises(ValueError, match="ascending"):
        knn_with_groups(X, 3, [np.arange(50)[::-1]])
    with pytest.raises(ValueError, match="k = 3 needs more"):
        knn_with_groups(X, 3, [np.arange(3)])


# ----------------------------------------------------------------------------- the stage


def stage_config(class_search, **values):
    return {
        **defaults()["outliers"],
        "class_search": class_search,
        "contamination": 0.05,
        "n_neighbors": 10,
        **values,
    }


def sklearn_lof_flags(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LocalOutlierFactor(n_neighbors=10, contamination=0.05).fit_predict(X) == -1


def jaccard(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.mark.parametrize("detectors", [["lof"], ["lof", "knn_distance", "isolation_forest"]])
def test_from_global_searches_once_and_finds_the_class_outliers(monkeypatch, detectors):
    X, group_rows = labelled(5000, seed=5, shares=(0.55, 0.3, 0.15))
    names = np.full(len(X), "train", dtype=object)
    for number, members in enumerate(group_rows):
        names[members] = ["car", "truck", "bus"][number]
    # car and truck above exact_max (derived), bus and train below it (scikit-learn)
    config = dict(exact_max_samples=1000, min_samples=10, detectors=detectors)
    searches = []
    real = search.approximate_knn

    def counting(X, k, ann=None, rows=None, queries=None, within=None):
        searches.append("all" if rows is None else "queries" if queries is not None else "class")
        return real(X, k, ann, rows, queries, within)

    # knn_distance calls it through search.knn; lof and the groups import it
    for module in (search, groups_module, lof):
        monkeypatch.setattr(module, "approximate_knn", counting)
    shared = class_aware_outliers(X, names, stage_config("from_global", **config), seed=0)
    shared_searches, searches[:] = list(searches), []
    own = class_aware_outliers(X, names, stage_config("per_class", **config), seed=0)
    neighbour_based = len([d for d in detectors if d != "isolation_forest"])
    # one search over all rows per neighbour-based detector, no search of a whole class
    assert shared_searches.count("all") == neighbour_based
    assert "class" not in shared_searches
    assert searches.count("class") == 2 * neighbour_based  # car and truck searched again
    # the same global results; the class results of the classes below exact_max identical
    for column in ("global_outlier", "score_global", "global_score"):
        np.testing.assert_array_equal(shared[column].to_numpy(), own[column].to_numpy())
    small = np.isin(names, ["bus", "train"])
    np.testing.assert_array_equal(
        shared["class_outlier"].to_numpy()[small], own["class_outlier"].to_numpy()[small]
    )
    # the derived classes: as close to exact LOF in the class as the separate search
    if detectors == ["lof"]:
        for cls in ("car", "truck"):
            rows = names == cls
            exact = sklearn_lof_flags(X[rows])
            j_shared = jaccard(shared["class_outlier"].to_numpy()[rows], exact)
            j_own = jaccard(own["class_outlier"].to_numpy()[rows], exact)
            assert j_shared >= min(0.9, j_own - 0.05), (cls, j_shared, j_own)


def test_detect_with_classes_declines_where_it_saves_nothing():
    X, group_rows = labelled(1200, seed=6)
    settings = outlier_detectors.settings_for("lof", stage_config("from_global"))
    # everything within exact_max: scikit-learn on each scope, the original's values
    assert outlier_detectors.detect_with_classes("lof", X, settings, 0, group_rows) is None
    assert outlier_detectors.detect_with_classes("isolation_forest", X, settings, 0, []) is None
    small = {**settings, "exact_max_samples": 100}
    overall, per_class = outlier_detectors.detect_with_classes("lof", X, small, 0, group_rows)
    assert overall.score.shape == (1200,)
    assert [d.score.size for d in per_class] == [m.size for m in group_rows]
