"""LOF: exact path is scikit-learn bit for bit; approximate path close; class-aware logic; t-SNE plot.

The other detectors and the registry: tests/test_outlier_detectors.py.
"""

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.neighbors import LocalOutlierFactor

from rare_objects.backends.outlier_detectors.lof import lof_flags
from rare_objects.io import schemas
from rare_objects.neighbors.search import DEFAULT_EXACT_MAX, AnnParams
from rare_objects.report.tsne import draw_map, tsne_coordinates
from rare_objects.runtime.config import defaults
from rare_objects.stages.outliers import OUTLIER_COLUMNS, class_aware_outliers
from tests.test_neighbors import clustered


def blobs(n=1200, dim=16, seed=0, outliers=30):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, dim)) * 3
    X = centres[rng.integers(0, 5, n)] + rng.standard_normal((n, dim)) * rng.uniform(
        0.3, 1.0, (n, 1)
    )
    X[:outliers] = rng.standard_normal((outliers, dim)) * 6
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X.astype(np.float32)


def lof_settings(**values) -> dict:
    """The schema's outliers section with ``values`` changed."""
    return {**defaults()["outliers"], **values}


def sklearn_lof(X, n_neighbors, contamination):
    lof = LocalOutlierFactor(n_neighbors=n_neighbors, contamination=contamination)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = lof.fit_predict(X)
    return lof.negative_outlier_factor_, labels == -1


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("contamination", [0.05, 0.2, "auto"])
def test_exact_path_is_sklearn(seed, contamination):
    X = blobs(seed=seed)
    scores, flags = lof_flags(X, n_neighbors=20, contamination=contamination, exact_max=10_000)
    ref_scores, ref_flags = sklearn_lof(X, 20, contamination)
    assert scores.dtype == np.float32 and flags.dtype == bool
    np.testing.assert_array_equal(flags, ref_flags)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


def test_fewer_rows_than_neighbours():
    X = blobs(n=12, outliers=2)
    scores, flags = lof_flags(X, n_neighbors=20, contamination=0.1, exact_max=DEFAULT_EXACT_MAX)
    ref_scores, ref_flags = sklearn_lof(X, 11, 0.1)  # what scikit-learn falls back to
    np.testing.assert_array_equal(flags, ref_flags)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))
    for n in (0, 1, 2):
        scores, flags = lof_flags(X[:n], n_neighbors=20, contamination=0.5, exact_max=100)
        assert scores.shape == (n,) and not flags.any() and (scores == -1).all()
    scores, flags = lof_flags(X[:3], n_neighbors=20, contamination=0.5, exact_max=0)
    assert scores.shape == (3,)


def test_contamination_checked():
    X = blobs(n=50)
    for bad in (0, 0.6, -0.1, "sometimes"):
        with pytest.raises(ValueError):
            lof_flags(X, 20, bad, exact_max=100)


@pytest.mark.parametrize("contamination", [0.05, "auto"])
def test_precomputed_path_with_exact_neighbours_matches(contamination):
    """The approximate path with a search that finds everything = scikit-learn's flags."""
    X = blobs(n=900, seed=2)
    full = AnnParams(nlist=1, pca_dims=None, candidates=899)
    scores, flags = lof_flags(X, 20, contamination, exact_max=0, ann=full)
    ref_scores, ref_flags = sklearn_lof(X, 20, contamination)
    np.testing.assert_array_equal(flags, ref_flags)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


@pytest.mark.parametrize("pca_dims", [None, 16])
def test_approximate_path_close_to_exact(pca_dims):
    X = clustered(3000, dim=32, seed=4)  # low intrinsic dimension, like image embeddings
    rng = np.random.default_rng(0)
    X[:60] = rng.standard_normal((60, 32))  # planted outliers
    X[:60] /= np.linalg.norm(X[:60], axis=1, keepdims=True)
    params = AnnParams(cell_size=250, nprobe=5, candidates=40, pca_dims=pca_dims)
    _, approx = lof_flags(X, 20, 0.05, exact_max=0, ann=params)
    _, exact = lof_flags(X, 20, 0.05, exact_max=DEFAULT_EXACT_MAX)
    jaccard = (approx & exact).sum() / (approx | exact).sum()
    assert jaccard >= 0.9
    assert approx[:60].all()


def test_approximate_path_with_duplicates():
    X = blobs(n=800, seed=5)
    X[400:600] = X[200:400]  # every row of 200..599 has a copy
    scores, flags = lof_flags(
        X, 10, 0.05, exact_max=0, ann=AnnParams(cell_size=100, nprobe=4, candidates=20)
    )
    assert np.isfinite(scores).all() and flags.sum() > 0


def test_class_aware_logic():
    X = blobs(n=600, seed=6)
    names = np.array(["car"] * 400 + ["bus"] * 190 + ["train"] * 10, dtype=object)
    names[:30] = "car"
    frame = class_aware_outliers(
        X, names, lof_settings(n_neighbors=10, contamination=0.1, min_samples=11), seed=0
    )
    assert list(frame.columns) == OUTLIER_COLUMNS
    g_scores, g_flags = sklearn_lof(X, 10, 0.1)
    np.testing.assert_array_equal(frame["global_outlier"].to_numpy(), g_flags)
    np.testing.assert_array_equal(frame["global_score"].to_numpy(), g_scores.astype(np.float32))
    # the detectors' convention: higher = more anomalous, the LOF itself
    np.testing.assert_array_equal(frame["score_global"].to_numpy(), -g_scores.astype(np.float32))
    car = names == "car"
    c_scores, c_flags = sklearn_lof(X[car], 10, 0.1)
    np.testing.assert_array_equal(frame["class_outlier"].to_numpy()[car], c_flags)
    np.testing.assert_array_equal(
        frame["class_score"].to_numpy()[car].astype(np.float32), c_scores.astype(np.float32)
    )
    np.testing.assert_array_equal(
        frame["score_class"].to_numpy()[car].astype(np.float32), -c_scores.astype(np.float32)
    )
    train = names == "train"  # 10 rows < min_samples 11: no class LOF
    assert frame["class_score"][train].isna().all() and not frame["class_outlier"][train].any()
    assert frame["score_class"][train].isna().all()
    assert frame["class_score"][~train].notna().all()
    code = frame["outlier_code"].to_numpy()
    g, c = frame["global_outlier"].to_numpy(), frame["class_outlier"].to_numpy()
    np.testing.assert_array_equal(code, np.where(g & c, 3, np.where(g, 1, np.where(c, 2, 0))))
    np.testing.assert_array_equal(frame["is_outlier"].to_numpy(), g | c)
    assert {1, 2, 3} <= set(code.tolist())
    # the table fits the parquet contract once the caller adds object_id
    frame.insert(0, "object_id", [f"o{i}" for i in range(len(frame))])
    table = (
        pa.Table.from_pandas(frame, preserve_index=False)
        .select(schemas.OUTLIERS.names)
        .cast(schemas.OUTLIERS)
    )
    assert table.column("class_score").null_count == 10
    assert table.column("score_class").null_count == 10
    assert table.column("global_score").null_count == 0


def test_class_aware_small_and_empty():
    X = blobs(n=5, outliers=1)
    settings = lof_settings(contamination=0.2, min_samples=3)
    frame = class_aware_outliers(X, ["a", "a", "b", "b", "b"], settings, seed=0)
    assert frame["class_score"].isna().tolist() == [True, True, False, False, False]
    empty = class_aware_outliers(np.zeros((0, 16), np.float32), [], settings, seed=0)
    assert len(empty) == 0 and list(empty.columns) == OUTLIER_COLUMNS
    with pytest.raises(ValueError):
        class_aware_outliers(X, ["a"], settings, seed=0)


# ----------------------------------------------------------------------------- t-SNE


@pytest.mark.parametrize("n,classes", [(1, 1), (2, 1), (7, 2), (60, 3)])
def test_tsne_map_of_small_inputs(tmp_path, n, classes):
    X = blobs(n=max(n, 3), outliers=1)[:n]
    coords = tsne_coordinates(X, perplexity=30, seed=0, threads=1)
    assert coords.shape == (n, 2) and np.isfinite(coords).all()
    frame = pd.DataFrame(
        {
            "class_name": [f"c{i % classes}" for i in range(n)],
            "is_outlier": np.arange(n) == 0,
            "x": coords[:, 0],
            "y": coords[:, 1],
        }
    )
    png = tmp_path / "t.png"
    draw_map(frame, png, "t-SNE of object embeddings", total_objects=n)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- memory: blockwise LOF, float16, rows


def sklearn_precomputed_lof(dist, ind, contamination):
    """scikit-learn's LocalOutlierFactor on the same neighbours, as a sparse graph."""
    from scipy.sparse import csr_matrix

    n, k = ind.shape
    indices = np.concatenate([np.arange(n)[:, None], ind], axis=1)  # each row itself first
    data = np.concatenate([np.zeros((n, 1), np.float32), dist], axis=1)
    graph = csr_matrix(
        (data.ravel(), indices.ravel(), np.arange(0, n * (k + 1) + 1, k + 1)), shape=(n, n)
    )
    lof = LocalOutlierFactor(n_neighbors=k, contamination=contamination, metric="precomputed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        labels = lof.fit_predict(graph)
    return lof.negative_outlier_factor_, labels == -1


@pytest.mark.parametrize("contamination", [0.05, 0.3, "auto"])
def test_blockwise_lof_arithmetic_is_sklearns(monkeypatch, contamination):
    from rare_objects.backends.outlier_detectors import lof
    from rare_objects.neighbors.search import approximate_knn

    X = clustered(5000, dim=24, seed=8, duplicates=400)  # ties and duplicates at 0
    dist, ind = approximate_knn(X, 15, AnnParams(cell_size=200, pca_dims=8))
    ref_factor, ref_flags = sklearn_precomputed_lof(dist, ind, contamination)
    monkeypatch.setattr(lof, "BLOCK_ROWS", 777)  # several blocks, a ragged last one
    factor, flags = lof.lof_from_neighbors(dist, ind, 15, contamination)
    assert factor.dtype == np.float32
    np.testing.assert_array_equal(factor, ref_factor)
    np.testing.assert_array_equal(flags, ref_flags)
    assert flags.any()


def test_float16_embeddings_give_the_float32_outliers():
    X = blobs(n=3000, dim=32, seed=4)
    X16 = X.astype(np.float16)
    names = np.array([f"c{i % 3}" for i in range(len(X))], dtype=object)
    # exact path: scikit-learn on the widened rows, so the same table as float32 input
    settings = lof_settings(min_samples=10)
    pd.testing.assert_frame_equal(
        class_aware_outliers(X16, names, settings, seed=0),
        class_aware_outliers(X16.astype(np.float32), names, settings, seed=0),
    )
    # approximate path (classes and the whole set above exact_max): the same outliers
    # within the float16 candidate space's effect
    settings = lof_settings(min_samples=10, exact_max_samples=500)
    a = class_aware_outliers(X16, names, settings, seed=0)["is_outlier"].to_numpy()
    b = class_aware_outliers(X, names, settings, seed=0)["is_outlier"].to_numpy()
    assert (a & b).sum() / (a | b).sum() >= 0.97


@pytest.mark.parametrize("name", ["lof", "knn_distance", "isolation_forest"])
@pytest.mark.parametrize("exact_max", [10_000, 300])
def test_a_class_is_run_on_its_rows_as_on_their_copy(name, exact_max):
    from rare_objects.backends import outlier_detectors

    X = blobs(n=2000, dim=16, seed=9)
    rows = np.flatnonzero(np.arange(2000) % 3 != 1)
    settings = outlier_detectors.settings_for(
        name, lof_settings(detectors=[name], exact_max_samples=exact_max)
    )
    # isolation_forest above exact_max: its trees grow on a seeded sample of
    # n_estimators x max_samples rows, which here is every row, so the copy's result too
    on_rows = outlier_detectors.detect(name, X, settings, seed=3, rows=rows)
    on_copy = outlier_detectors.detect(name, X[rows], settings, seed=3)
    np.testing.assert_array_equal(on_rows.score, on_copy.score)
    np.testing.assert_array_equal(on_rows.is_outlier, on_copy.is_outlier)


def test_classes_of_at_least_groups_the_rows_of_each_big_class():
    from rare_objects.stages.outliers import classes_of_at_least

    rng = np.random.default_rng(3)
    pool = np.array(["car", "truck", "bus", "trailer", None, np.nan], dtype=object)
    names = pool[rng.integers(0, len(pool), 1000)]
    groups = classes_of_at_least(names, 150)
    missing = np.flatnonzero(pd.isna(names))
    expected = [np.flatnonzero(names == c) for c in ("bus", "car", "trailer", "truck")]
    expected = [rows for rows in [*expected, missing] if rows.size >= 150]
    assert sorted(map(tuple, groups)) == sorted(map(tuple, expected))
    assert len(groups) >= 3  # the draw gives about 167 rows per name, 333 missing
    for rows in groups:
        assert (np.diff(rows) > 0).all()
    assert classes_of_at_least(names, 1001) == []
    assert classes_of_at_least(np.array([], dtype=object), 1) == []
