"""Neighbour search: exact path = scikit-learn, approximate path close to it."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from rare_objects.neighbors.search import (
    AnnParams,
    approximate_knn,
    exact_knn,
    index_dtype,
    iter_similar_pairs,
    knn,
    normalised,
    similar_pairs,
    torch_knn,
)


def clustered(n=3000, dim=32, clusters=12, latent=6, seed=0, duplicates=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    bases = rng.standard_normal((clusters, latent, dim)).astype(np.float32) / np.sqrt(latent)
    c = rng.integers(0, clusters, n)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    X = (
        centres[c]
        + 0.5 * np.einsum("nl,nld->nd", z, bases[c])
        + 0.02 * rng.standard_normal((n, dim)).astype(np.float32)
    )
    if duplicates:
        X[n - duplicates :] = X[rng.integers(0, n - duplicates, duplicates)]
    return normalised(X.astype(np.float32))


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


def test_exact_knn_is_sklearn():
    X = clustered(500)
    dist, ind = exact_knn(X, 7)
    ref_d, ref_i = NearestNeighbors(n_neighbors=7).fit(X).kneighbors()
    assert dist.dtype == np.float32 and ind.dtype == np.int32
    np.testing.assert_array_equal(ind, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-6)
    assert not (ind == np.arange(500)[:, None]).any()


def test_knn_switches_at_exact_max():
    X = clustered(800)
    d1, i1 = knn(X, 5, exact_max=800)
    d2, i2 = exact_knn(X, 5)
    np.testing.assert_array_equal(i1, i2)
    d3, i3 = knn(
        X, 5, exact_max=799, ann=AnnParams(cell_size=100, nprobe=3, candidates=20, pca_dims=None)
    )
    d4, i4 = approximate_knn(X, 5, AnnParams(cell_size=100, nprobe=3, candidates=20, pca_dims=None))
    np.testing.assert_array_equal(i3, i4)
    np.testing.assert_array_equal(d3, d4)


@pytest.mark.parametrize("pca_dims", [None, 16])
def test_approximate_close_to_exact(pca_dims):
    X = clustered(4000, dim=32)
    k = 10
    _, truth = exact_knn(X, k)
    params = AnnParams(cell_size=200, nprobe=6, candidates=40, pca_dims=pca_dims)
    dist, ind = approximate_knn(X, k, params)
    assert dist.shape == (4000, k) and dist.dtype == np.float32 and ind.dtype == np.int32
    assert recall(ind, truth) >= 0.95
    assert not (ind == np.arange(4000)[:, None]).any()
    assert (np.diff(dist, axis=1) >= 0).all()
    # distances are the true ones for the neighbours found
    true_d = np.linalg.norm(X[ind] - X[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true_d, atol=1e-5)


# ----------------------------------------------------------------------------- the "pq" cell scan


PQ = dict(cell_size=200, nprobe=6, candidates=40, pca_dims=None, pq_subquantizers=16)


@pytest.mark.parametrize("residual", [False, True])
def test_pq_scan_uses_the_flat_scans_cells_and_finds_the_neighbours(residual, monkeypatch):
    from rare_objects.neighbors import search

    X = clustered(4000, dim=32, seed=7, duplicates=60)
    pq = AnnParams(**PQ, pq_residual=residual)
    flat = AnnParams(**PQ, cell_scan="flat")
    coded = search._cells(X, 20, 0, pq)
    plain = search._cells(X, 20, 0, flat)
    assert coded.codes is not None and plain.codes is None
    # the rows' cells come from adding them to the codes' index: the same k-means cells
    np.testing.assert_array_equal(coded.order, plain.order)
    np.testing.assert_array_equal(coded.bounds, plain.bounds)
    np.testing.assert_array_equal(coded.probes, plain.probes)

    k = 10
    _, truth = exact_knn(X, k)
    dist, ind = approximate_knn(X, k, pq)
    _, flat_ind = approximate_knn(X, k, flat)
    assert recall(ind, truth) >= 0.95
    assert recall(ind, truth) >= recall(flat_ind, truth) - 0.02
    assert not (ind == np.arange(4000)[:, None]).any()
    assert (np.diff(dist, axis=1) >= 0).all()
    # the codes only choose the candidates: the distances are the exact ones
    true_d = np.linalg.norm(X[ind] - X[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true_d, atol=1e-5)
    # duplicates are found at distance 0
    assert (dist[-60:, 0] == 0).all()
    # deterministic whatever the thread count (a speed setting must not change results),
    # and a query subset gets the rows of the whole search
    for threads in (1, 2):
        again = approximate_knn(X, k, AnnParams(**PQ, pq_residual=residual, threads=threads))
        np.testing.assert_array_equal(again[1], ind)
        np.testing.assert_array_equal(again[0], dist)
    # a cell's rows scanned in chunks (bounded lookup tables) give the same candidates
    monkeypatch.setattr(search, "SCAN_CHUNK", 7)
    chunked = approximate_knn(X, k, pq)
    np.testing.assert_array_equal(chunked[1], ind)
    np.testing.assert_array_equal(chunked[0], dist)
    queries = np.arange(5, 4000, 7)
    d_q, i_q = approximate_knn(X, k, pq, queries=queries)
    np.testing.assert_array_equal(i_q, ind[queries])
    np.testing.assert_array_equal(d_q, dist[queries])


def test_pq_scan_falls_back_to_the_flat_scan_where_codes_cannot_be_trained():
    from rare_objects.neighbors import search

    X = clustered(1500, dim=24)
    # 24 dimensions do not split into 16 parts; 900 rows are below pq_min_rows
    assert search._cells(X, 10, 0, AnnParams(**PQ)).codes is None
    few = AnnParams(**{**PQ, "pq_subquantizers": 8}, pq_min_rows=2000)
    assert search._cells(X[:900], 10, 0, few).codes is None
    assert search._cells(X, 10, 0, AnnParams(**{**PQ, "pq_subquantizers": 8})).codes is not None
    with pytest.raises(ValueError, match="cell_scan"):
        approximate_knn(X, 5, AnnParams(cell_size=100, cell_scan="ivf"))


def test_approximate_full_probe_is_exact():
    X = clustered(1500, dim=24)
    _, truth = exact_knn(X, 8)
    _, ind = approximate_knn(X, 8, AnnParams(nlist=1, pca_dims=None, candidates=1499))
    assert recall(ind, truth) == 1.0


def test_approximate_deterministic_and_partitions():
    X = clustered(3000, dim=32, seed=3)
    params = AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=12, partitions=2)
    a = approximate_knn(X, 6, params)
    b = approximate_knn(X, 6, params)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])
    _, truth = exact_knn(X, 6)
    one = approximate_knn(
        X, 6, AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=12, partitions=1)
    )
    assert recall(a[1], truth) >= recall(one[1], truth)


def test_duplicates_and_tiny_cells():
    X = clustered(600, dim=16, duplicates=150)
    dist, ind = approximate_knn(
        X, 5, AnnParams(cell_size=20, nprobe=2, candidates=6, pca_dims=None)
    )
    assert not (ind == np.arange(600)[:, None]).any()
    assert np.isfinite(dist).all()
    true_d = np.linalg.norm(X[ind] - X[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true_d, atol=1e-5)
    # a duplicated row finds its copy at distance exactly 0
    dup = np.flatnonzero((np.linalg.norm(X[:, None] - X[None], axis=2) == 0).sum(1) > 1)
    assert (dist[dup, 0] == 0).mean() > 0.9


def test_k_validation():
    X = clustered(10)
    with pytest.raises(ValueError):
        knn(X, 10)
    with pytest.raises(ValueError):
        approximate_knn(X, 0)


def dense_pairs(X, t):
    S = normalised(X) @ normalised(X).T
    i, j = np.nonzero(np.triu(S >= t, k=1))
    return set(zip(i.tolist(), j.tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_similar_pairs_exact_equals_dense(seed):
    X = clustered(700, dim=16, seed=seed, duplicates=50)
    t = 0.97
    i, j, s = similar_pairs(X, t, block_size=64)
    assert set(zip(i.tolist(), j.tolist())) == dense_pairs(X, t)
    assert (i < j).all() and (s >= t).all()
    chunks = list(iter_similar_pairs(X, t, block_size=1000))
    assert sum(c[0].size for c in chunks) == i.size


def test_similar_pairs_approximate_finds_near_duplicates():
    X = clustered(3000, dim=32, duplicates=300)
    t = 0.98
    truth = dense_pairs(X, t)
    i, j, s = similar_pairs(
        X,
        t,
        exact_max=0,
        max_neighbors=16,
        ann=AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=None),
    )
    found = set(zip(i.tolist(), j.tolist()))
    assert found <= truth
    assert len(found) >= 0.95 * len(truth)


def test_similar_pairs_approximate_are_the_same_whatever_the_pairs_step():
    # the pairs are made from the neighbour tables a few rows at a time (memory only)
    X = clustered(2000, dim=24, duplicates=200, seed=5)
    search = dict(exact_max=0, max_neighbors=8, ann=AnnParams(cell_size=100, pca_dims=None))
    whole = similar_pairs(X, 0.97, **search)
    assert whole[0].size > 100
    for step in (1, 37, 1999):
        chunked = similar_pairs(X, 0.97, pairs_step=step, **search)
        for a, b in zip(whole, chunked):
            np.testing.assert_array_equal(a, b)


def test_normalised_keeps_unit_input():
    X = clustered(50)
    assert normalised(X) is X
    Y = normalised(X * 3)
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("query_block, base_block", [(4096, 1 << 20), (700, 1000), (1, 333)])
def test_torch_brute_force_equals_the_exact_neighbours(query_block, base_block):
    # The GPU path of the search, run here on the CPU device: blocked over queries and over
    # rows, with duplicates (ties at distance 0) among the rows.
    X = clustered(n=2500, dim=48, duplicates=40, seed=3)
    dist, ind = torch_knn(X, 12, "cpu", query_block=query_block, base_block=base_block)
    d, exact_ind = exact_knn(X, 13)  # one more: the 12th may tie with the 13th
    np.testing.assert_allclose(dist, d[:, :12], atol=2e-6)
    # the same neighbours wherever the distances do not tie (ties: by row number here)
    tied = np.zeros_like(d, dtype=bool)
    tied[:, 1:] |= np.isclose(d[:, 1:], d[:, :-1], atol=1e-6)
    tied[:, :-1] |= np.isclose(d[:, :-1], d[:, 1:], atol=1e-6)
    tied, exact_ind = tied[:, :12], exact_ind[:, :12]
    assert (ind[~tied] == exact_ind[~tied]).all()
    assert tied.mean() < 0.05  # the comparison is not empty
    n = len(X)
    assert not (ind == np.arange(n)[:, None]).any()  # never a row's own neighbour
    twin = n - 1  # a duplicate row: its first neighbour is its twin, at distance 0
    assert dist[twin, 0] == 0.0


def test_torch_brute_force_sorts_ties_by_row_and_checks_k():
    X = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every row has two twins
    dist, ind = torch_knn(X, 2, "cpu", query_block=5, base_block=4)
    assert (dist == 0).all()
    for row in range(len(X)):
        twins = [r for r in range(3 * (row // 3), 3 * (row // 3) + 3) if r != row]
        assert ind[row].tolist() == twins
    with pytest.raises(ValueError):
        torch_knn(X, len(X), "cpu")


# ----------------------------------------------------------------------------- memory: float16 rows, row subsets


def test_one_partition_reranked_per_cell_equals_the_candidate_table_path():
    # The default (one partition) re-ranks each cell as soon as its candidates are found;
    # the table path (all candidates, then _rerank) must give the same result row by row.
    from rare_objects.neighbors import search

    X = clustered(3000, dim=32, seed=4, duplicates=100)
    params = AnnParams(cell_size=120, nprobe=3, candidates=25, pca_dims=12, seed=9)
    dist, ind = approximate_knn(X, 10, params)
    data = search._Rows(X, None)
    Z = search._pca_space(data, params)
    cand, order = search._ann_candidates(Z, 25, 25, params)
    ref_d, ref_i = search._rerank(data, cand, 10, params.rerank_block, order)
    np.testing.assert_array_equal(ind, ref_i)
    np.testing.assert_array_equal(dist, ref_d)


@pytest.mark.parametrize("pca_dims", [None, 12])
def test_a_row_subset_is_searched_as_its_copy(pca_dims):
    X = clustered(4000, dim=32, seed=5)
    rows = np.sort(np.random.default_rng(0).choice(4000, 1700, replace=False))
    params = AnnParams(cell_size=100, nprobe=4, candidates=30, pca_dims=pca_dims, seed=2)
    d1, i1 = approximate_knn(X, 8, params, rows=rows)
    d2, i2 = approximate_knn(X[rows], 8, params)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # the exact path and the torch path take the subset too
    for exact_max in (10_000, 0):
        d3, i3 = knn(X, 8, exact_max=exact_max, ann=params, rows=rows)
        d4, i4 = knn(X[rows], 8, exact_max=exact_max, ann=params)
        np.testing.assert_array_equal(i3, i4)
        np.testing.assert_array_equal(d3, d4)
    d5, i5 = torch_knn(X, 8, "cpu", rows=rows)
    d6, i6 = torch_knn(X[rows], 8, "cpu")
    np.testing.assert_array_equal(i5, i6)
    np.testing.assert_array_equal(d5, d6)
    with pytest.raises(ValueError, match="rows"):
        approximate_knn(X, 8, params, rows=np.array([0, 4000]))


def test_float16_rows_stay_float16_and_find_the_neighbours():
    X = clustered(4000, dim=32, seed=6, duplicates=50)
    X16 = X.astype(np.float16)
    wide = X16.astype(np.float32)  # float16 widens exactly
    # without a PCA the candidate space is the widened rows: the float32 result exactly
    params = AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=None, seed=1)
    d1, i1 = approximate_knn(X16, 10, params)
    d2, i2 = approximate_knn(wide, 10, params)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)
    # with a PCA the candidate space is float16: the re-ranking stays exact on the
    # widened rows, and the recall stays that of the float32 search
    params = AnnParams(cell_size=150, nprobe=4, candidates=30, pca_dims=12, seed=1)
    dist, ind = approximate_knn(X16, 10, params)
    _, truth = exact_knn(wide, 10)
    _, ind32 = approximate_knn(wide, 10, params)
    assert recall(ind, truth) >= recall(ind32, truth) - 0.005
    assert recall(ind, truth) >= 0.95
    true_d = np.linalg.norm(wide[ind] - wide[:, None, :], axis=2)
    np.testing.assert_allclose(dist, true_d, atol=1e-5)
    # a subset of float16 rows, with rows left to the exhaustive pass (tiny cells)
    rows = np.arange(0, 4000, 3)
    tiny = AnnParams(cell_size=20, nprobe=1, candidates=4, pca_dims=8)
    d3, i3 = approximate_knn(X16, 6, tiny, rows=rows)
    d4, i4 = approximate_knn(X16[rows], 6, tiny)
    np.testing.assert_array_equal(i3, i4)
    np.testing.assert_array_equal(d3, d4)
    true_d = np.linalg.norm(wide[rows][i3] - wide[rows][:, None, :], axis=2)
    np.testing.assert_allclose(d3, true_d, atol=1e-5)
    # the GPU path's torch search on float16 rows: the widened rows' neighbours
    d5, i5 = torch_knn(X16, 10, "cpu")
    d6, i6 = torch_knn(wide, 10, "cpu")
    np.testing.assert_array_equal(i5, i6)
    np.testing.assert_array_equal(d5, d6)


def test_neighbour_indices_are_int32_until_row_numbers_need_int64():
    # int32 halves the neighbour table (0.8 GB at 10,000,000 rows, k = 20)
    assert index_dtype(2**31 - 1) is np.int32 and index_dtype(2**31) is np.int64
    X = clustered(3000)
    _, ind = approximate_knn(X, 5, AnnParams(cell_size=150, nprobe=4, candidates=30, seed=1))
    _, exact = knn(X, 5)
    assert ind.dtype == exact.dtype == np.int32
    assert recall(ind, exact) > 0.95


def test_float16_widening_gives_numpys_values():
    # the re-ranking widens float16 candidates with torch (from TORCH_WIDEN_MIN values) into
    # a reused buffer: every float16 bit pattern (zeros, subnormals, infinities, NaNs)
    # comes out as numpy's cast gives it
    from rare_objects.neighbors import search

    every = np.arange(2**16, dtype=np.uint16).view(np.float16).reshape(-1, 512)
    scratch = np.full(every.size, 7.0, dtype=np.float32)
    for rows in (every, every[::3], every[:, ::2], every[:4]):  # strided views, a small one
        ref = rows.astype(np.float32)
        wide = search._widen_into(rows, scratch[: rows.size].reshape(rows.shape))
        assert wide.dtype == np.float32 and wide.shape == ref.shape
        # torch (installed here) widens into the buffer; small blocks get numpy's new array
        assert np.shares_memory(wide, scratch) == (rows.size >= search.TORCH_WIDEN_MIN)
        nan = np.isnan(ref)
        np.testing.assert_array_equal(np.isnan(wide), nan)
        np.testing.assert_array_equal(wide.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    # through _Rows.take, as the re-ranking calls it: gathered rows of any index shape
    data = search._Rows(every, None)
    idx = np.random.default_rng(0).integers(0, len(every), (6, 5))
    got = data.take(idx, scratch)
    np.testing.assert_array_equal(got, every[idx].astype(np.float32))
    assert got.shape == (6, 5, 512) and np.shares_memory(got, scratch)


def test_float16_widening_without_torch_casts_with_numpy(monkeypatch):
    # an environment without torch (looked up once per process): numpy's cast, a new array
    from rare_objects.neighbors import search

    assert search._torch() is not None  # torch is installed where the suite runs
    monkeypatch.setattr(search, "_torch", lambda: None)
    rows = np.random.default_rng(1).normal(size=(64, 512)).astype(np.float16)
    scratch = np.zeros(rows.size, dtype=np.float32)
    wide = search._widen_into(rows, scratch.reshape(rows.shape))
    np.testing.assert_array_equal(wide, rows.astype(np.float32))
    assert not np.shares_memory(wide, scratch)
