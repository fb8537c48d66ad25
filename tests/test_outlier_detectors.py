"""The outlier detector registry: each detector against a direct reference, the score convention,
the OR-combination, the seed, and selection ranking by the convention."""

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor

from rare_objects.backends import outlier_detectors
from rare_objects.backends.outlier_detectors import isolation_forest, lof
from rare_objects.io import schemas
from rare_objects.neighbors import search as neighbors
from rare_objects.runtime.config import defaults, load_schema
from rare_objects.stages import selection
from rare_objects.stages.diversity import diversity_filter
from rare_objects.stages.outliers import OUTLIER_COLUMNS, class_aware_outliers
from tests.test_outliers import blobs

ALL = ["lof", "isolation_forest", "knn_distance"]


def outlier_config(**values) -> dict:
    """The schema's ``outliers`` section (defaults filled) with ``values`` changed."""
    return {**defaults()["outliers"], **values}


def settings(name: str, **values) -> dict:
    return outlier_detectors.settings_for(name, outlier_config(**values))


def brute_force_knn_distance(X, k):
    X = X.astype(np.float64)
    d = np.sqrt(np.maximum(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1), 0))
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, :k].mean(axis=1)


def planted_far_point(n=400, dim=16, seed=0):
    """Tight clusters on a few directions, plus row 0 pointing away from all of them."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, dim))
    centres = rng.integers(1, dim, n)
    X[np.arange(n), centres] = 1.0
    X += rng.standard_normal((n, dim)) * 0.05
    X[0] = -np.ones(dim)  # opposite to every cluster
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


# ----------------------------------------------------------------------------- registry


def test_registry_names_are_the_schema_enum_and_each_has_a_section():
    section = load_schema()["properties"]["outliers"]
    enum = section["properties"]["detectors"]["items"]["enum"]
    assert sorted(enum) == outlier_detectors.names() == sorted(ALL)
    for name in outlier_detectors.names():
        assert name in section["properties"], name
        assert section["properties"][name]["type"] == "object"
    assert defaults()["outliers"]["detectors"] == ["lof"]
    with pytest.raises(ValueError, match="unknown outlier detector 'nope'"):
        outlier_detectors.get("nope")


def test_settings_inherit_the_shared_keys_unless_the_section_sets_them():
    assert settings("lof")["n_neighbors"] == defaults()["outliers"]["n_neighbors"]
    assert settings("lof", n_neighbors=7)["n_neighbors"] == 7
    own = settings("knn_distance", n_neighbors=7, knn_distance={"n_neighbors": 3})
    assert own["n_neighbors"] == 3
    forest = settings("isolation_forest", contamination=0.1)
    assert forest["contamination"] == 0.1 and forest["n_estimators"] == 100
    # knn_distance has no "auto" rule: said before anything runs
    with pytest.raises(ValueError, match="outliers.knn_distance: contamination 'auto'"):
        settings("knn_distance", contamination="auto")
    with pytest.raises(ValueError, match="empty"):
        class_aware_outliers(
            np.zeros((3, 4), np.float32), ["a"] * 3, outlier_config(detectors=[]), 0
        )


# ----------------------------------------------------------------------------- each detector vs its reference


@pytest.mark.parametrize("contamination", [0.05, "auto"])
def test_lof_is_sklearn_with_the_sign_turned(contamination):
    X = blobs(n=500, seed=3)
    found = outlier_detectors.detect("lof", X, settings("lof", contamination=contamination), 0)
    ref = LocalOutlierFactor(n_neighbors=20, contamination=contamination)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = ref.fit_predict(X)
    np.testing.assert_array_equal(found.score, -ref.negative_outlier_factor_.astype(np.float32))
    np.testing.assert_array_equal(found.is_outlier, labels == -1)


@pytest.mark.parametrize("contamination", [0.05, "auto"])
def test_isolation_forest_is_sklearn_with_the_same_seed(contamination):
    X = blobs(n=700, seed=4)
    found = outlier_detectors.detect(
        "isolation_forest", X, settings("isolation_forest", contamination=contamination), seed=11
    )
    ref = IsolationForest(contamination=contamination, random_state=11).fit(X)
    np.testing.assert_array_equal(found.score, -ref.score_samples(X).astype(np.float32))
    np.testing.assert_array_equal(found.is_outlier, ref.predict(X) == -1)
    assert found.is_outlier.any()


def test_isolation_forest_seed_decides_its_result():
    X = blobs(n=700, seed=4)
    s = settings("isolation_forest")
    a = isolation_forest.detect(X, s, seed=1)
    b = isolation_forest.detect(X, s, seed=1)
    c = isolation_forest.detect(X, s, seed=2)
    np.testing.assert_array_equal(a.score, b.score)
    np.testing.assert_array_equal(a.is_outlier, b.is_outlier)
    assert not np.array_equal(a.score, c.score)


@pytest.mark.parametrize("contamination", [0.1, "auto"])
def test_isolation_forest_on_float16_rows_grows_its_trees_on_a_sample(contamination):
    # float16 rows above exact_max_samples: no float32 copy of them all; the trees grow on
    # a seeded sample of n_estimators x max_samples rows, every row is scored in blocks.
    X = blobs(n=6000, seed=4)
    X16 = X.astype(np.float16)
    s = settings(
        "isolation_forest",
        contamination=contamination,
        exact_max_samples=100,
        n_estimators=20,
        max_samples=64,
    )
    a = outlier_detectors.detect("isolation_forest", X16, s, seed=5)
    b = outlier_detectors.detect("isolation_forest", X16, s, seed=5)
    np.testing.assert_array_equal(a.score, b.score)
    assert a.score.shape == (6000,) and a.score.dtype == np.float32
    if contamination == "auto":  # scikit-learn's fixed offset
        np.testing.assert_array_equal(a.is_outlier, -a.score.astype(np.float64) + 0.5 < 0)
    else:  # the contamination share of all rows, not of the sample
        assert a.is_outlier.sum() == 600
    # the planted far rows (the first 30) are what it finds first
    assert set(np.argsort(-a.score)[:20]) <= set(range(30))
    # the same settings on the float32 rows: scikit-learn on all of them, about the same
    full = outlier_detectors.detect("isolation_forest", X, s, seed=5)
    assert np.corrcoef(full.score, a.score)[0, 1] > 0.9


@pytest.mark.parametrize("exact_max", [100_000, 10])  # exact, then the approximate search
def test_knn_distance_is_brute_force(exact_max):
    X = blobs(n=300, seed=5)
    s = settings("knn_distance", n_neighbors=8, contamination=0.1, exact_max_samples=exact_max)
    found = outlier_detectors.detect("knn_distance", X, s, seed=0)
    ref = brute_force_knn_distance(X, 8)
    np.testing.assert_allclose(found.score, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(found.is_outlier, found.score > np.quantile(found.score, 0.9))
    assert found.is_outlier.sum() == 30  # 10 % of 300, no ties
    tiny = outlier_detectors.detect("knn_distance", X[:1], s, seed=0)
    assert tiny.score.tolist() == [0.0] and not tiny.is_outlier.any()


@pytest.mark.parametrize("name", ALL)
def test_planted_far_point_has_the_highest_score(name):
    X = planted_far_point()
    found = outlier_detectors.detect(name, X, settings(name), seed=0)
    assert found.score.dtype == np.float32 and found.is_outlier.dtype == bool
    assert int(np.argmax(found.score)) == 0 and found.is_outlier[0]
    assert outlier_detectors.detect(name, X[:0], settings(name), seed=0).score.shape == (0,)


# ----------------------------------------------------------------------------- the seed reaches the ANN


@pytest.mark.parametrize("name,module", [("lof", lof), ("knn_distance", neighbors)])
def test_seed_reaches_the_approximate_search(monkeypatch, name, module):
    seen = []
    real = neighbors.approximate_knn

    def spy(X, k, ann=None, rows=None):
        seen.append(ann.seed)
        return real(X, k, ann, rows)

    monkeypatch.setattr(module, "approximate_knn", spy)
    X = blobs(n=200, seed=6)
    outlier_detectors.detect(name, X, settings(name, exact_max_samples=50), seed=123)
    assert seen == [123]


def test_approximate_candidates_depend_on_the_seed():
    X = blobs(n=3000, dim=16, seed=7)
    params = neighbors.AnnParams(cell_size=100, nprobe=2, candidates=10, pca_dims=8)
    a, _ = neighbors._ann_candidates(X, 10, 30, params)
    b, _ = neighbors._ann_candidates(X, 10, 30, params)
    c, _ = neighbors._ann_candidates(
        X, 10, 30, neighbors.AnnParams(**{**params.__dict__, "seed": 5})
    )
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ----------------------------------------------------------------------------- combination


def test_several_detectors_are_or_combined_globally_and_per_class():
    X = blobs(n=600, seed=8)
    names = np.array(["car"] * 350 + ["bus"] * 240 + ["train"] * 10, dtype=object)
    config = outlier_config(detectors=ALL, contamination=0.1, min_samples=11)
    frame = class_aware_outliers(X, names, config, seed=3)
    assert list(frame.columns) == OUTLIER_COLUMNS + [
        f"score_{scope}_{d}" for d in ALL for scope in ("global", "class")
    ]
    g_any = np.zeros(len(X), bool)
    c_any = np.zeros(len(X), bool)
    ranks = []
    for name in ALL:
        s = outlier_detectors.settings_for(name, config)
        glob = outlier_detectors.detect(name, X, s, seed=3)
        np.testing.assert_array_equal(frame[f"score_global_{name}"].to_numpy(), glob.score)
        g_any |= glob.is_outlier
        ranks.append(pd.Series(glob.score).rank(method="max").to_numpy() / len(X))
        for cls in ("car", "bus"):
            rows = names == cls
            own = outlier_detectors.detect(name, X[rows], s, seed=3)
            c_any[rows] |= own.is_outlier
            np.testing.assert_array_equal(
                frame[f"score_class_{name}"].to_numpy()[rows].astype(np.float32), own.score
            )
    np.testing.assert_array_equal(frame["global_outlier"].to_numpy(), g_any)
    np.testing.assert_array_equal(frame["class_outlier"].to_numpy(), c_any)
    np.testing.assert_array_equal(frame["is_outlier"].to_numpy(), g_any | c_any)
    np.testing.assert_array_equal(
        frame["outlier_code"].to_numpy(), g_any.astype(int) + 2 * c_any.astype(int)
    )
    # several scales: the combined score is the highest percentile rank
    np.testing.assert_allclose(frame["score_global"].to_numpy(), np.max(ranks, axis=0), rtol=1e-6)
    assert frame.loc[names == "train", "score_class"].isna().all()
    # each union is larger than any one detector's flags
    assert g_any.sum() > max(
        outlier_detectors.detect(
            d, X, outlier_detectors.settings_for(d, config), 3
        ).is_outlier.sum()
        for d in ALL
    )
    # the table with the extra columns fits its schema
    frame.insert(0, "object_id", [f"o{i}" for i in range(len(frame))])
    schema = schemas.outliers_schema(ALL)
    table = pa.Table.from_pandas(frame, preserve_index=False).select(schema.names).cast(schema)
    assert table.num_rows == len(X)


def test_without_lof_the_lof_columns_are_null():
    X = blobs(n=200, seed=9)
    frame = class_aware_outliers(
        X, ["a"] * 200, outlier_config(detectors=["isolation_forest"]), seed=0
    )
    assert frame["global_score"].isna().all() and frame["class_score"].isna().all()
    direct = outlier_detectors.detect("isolation_forest", X, settings("isolation_forest"), 0)
    np.testing.assert_array_equal(frame["score_global"].to_numpy(), direct.score)
    assert schemas.outliers_schema(["isolation_forest"]) == schemas.OUTLIERS


# ----------------------------------------------------------------------------- selection


def test_selection_order_is_the_lof_order_for_the_default_config():
    """Selecting by score_global keeps what the LOF's negative_outlier_factor_ used to keep."""
    X = blobs(n=400, seed=10)
    X[200:260] = X[100:160] + 1e-4  # near duplicates, so clusters get capped
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    frame = class_aware_outliers(X, ["car"] * 400, outlier_config(), seed=0)
    objects = pd.DataFrame(
        {
            "object_id": [f"o{i:03d}" for i in range(400)],
            "class_name": "car",
            "is_outlier": True,  # every object a candidate: the ranking decides
            "score_global": frame["score_global"],
            "image_id": [f"{i // 4:03d}" for i in range(400)],
            "image_path": [f"/images/{i // 4:03d}.jpg" for i in range(400)],
        }
    )
    table = selection.select_objects(
        objects, X, {}, ["outliers"], ["targets"], 0.99, 1, partitions=2, seed=0
    )
    # the original's ranking: lowest negative_outlier_factor_ kept first
    _, keep, _ = diversity_filter(X, frame["global_score"].to_numpy(np.float64), 0.99, 1)
    np.testing.assert_array_equal(table["selected"].to_numpy(), keep)
    assert (~keep).sum() >= 50
    np.testing.assert_array_equal(
        table["priority"].to_numpy(np.float32), frame["global_score"].to_numpy(np.float32)
    )
