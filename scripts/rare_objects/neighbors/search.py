"""Nearest-neighbour search over the embeddings: exact when small, approximate when big.

:func:`knn` gives each row's ``k`` nearest other rows (Euclidean), the input of
the LOF; :func:`similar_pairs` the pairs whose cosine similarity reaches a
threshold, the input of the diversity filter.

Up to ``exact_max`` rows the search is exact (scikit-learn, the neighbours its
``LocalOutlierFactor`` would use). Above it, an approximate all-pairs search
built for the case "every row queries the whole set", on CPU:

1. **Candidate space.** A PCA (fitted on a seeded sample) maps the rows to
   ``pca_dims`` dimensions: 4x fewer flops for the candidate search, whose
   ranking errors the exact re-ranking (3.) corrects. (Adding the norm of
   the PCA residual as an extra coordinate was tried: it lowers recall,
   neighbours' residuals being correlated.)
2. **Partitions.** ``partitions`` independent k-means partitions (faiss,
   seeded) of that space into ``nlist`` cells. For every cell, its rows are
   compared with all rows of the ``nprobe`` cells nearest to it. By default
   (``cell_scan="pq"``) the rows are stored as 4-bit product codes of their
   residuals from their cell's centroid (faiss ``IndexIVFPQFastScan`` over the
   same cells, 32 bytes a row at 128 dimensions) and each cell's rows scan the
   probed cells' codes in SIMD registers (``search_preassigned``);
   ``cell_scan="flat"`` compares them exactly in one matrix product with
   fused top-k selection (``faiss.knn``, BLAS). The codes rank less exactly,
   so they hand more candidates (120) to the re-ranking; on
   bench/search_params.py's 100,000 rows they reach the flat scan's recall in
   about 0.4x its time (see bench/README.md). Points near a cell boundary
   lose neighbours in one partition but rarely in all, so a few cheap
   partitions beat one expensive search.
3. **Exact re-ranking.** The union of every row's candidates is re-ranked
   with exact float32 distances in the original space (``|x - y|`` computed
   from the difference, so duplicates are at distance exactly 0).

Per-query IVF scanning (faiss ``IndexIVFFlat.search``) was measured first: on
2 cores it scans ~10 GFLOP/s (memory bound) and needed ~45 min for 1M x 512
at recall 0.97; the cell-blocked products run at BLAS speed.

Each row's nearest within its own class can be derived from the same re-ranked candidates
(``within``, :mod:`rare_objects.neighbors.groups`) instead of a search per class.

With a GPU (``AnnParams.device``, the workflow's ``outliers.device``), the search is
exact brute force on it with torch instead (:func:`torch_knn`): no faiss build with GPU
support is needed.

**Memory.** The rows may be float16 (``embedder.storage: float16``, read as stored
by the outliers stage): they stay float16 and are widened to float32 block by block
where they are computed with; the candidate space is then float16 too. A search
may run on a subset of the rows (``rows``, e.g. one detector class) without copying
them out of ``X``. With one partition (the default) each cell's candidates are
re-ranked as soon as they are found, so no ``n x candidates`` table is held: at
10,000,000 x 512 in float16 the search holds the rows (10 GB), the candidate space
(2.6 GB) and the result (1.6 GB at k = 20: float32 distances, int32 row numbers).

All results are deterministic for a given input, parameters (``AnnParams.seed``
decides the PCA sample and the k-means; the workflow passes its ``seed``) and
thread count.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_EXACT_MAX = 50_000


@dataclass(frozen=True)
class AnnParams:
    """Parameters of the approximate search (used above ``exact_max`` rows)."""

    cell_size: int = 1000  # mean rows per k-means cell (nlist = n / cell_size)
    nlist: int | None = None  # cells per partition; overrides cell_size
    nprobe: int = 24  # cells compared with each cell (itself included)
    partitions: int = 1  # independent k-means partitions whose candidates are merged
    candidates: int = 120  # candidates per row and partition, re-ranked exactly
    cell_scan: str = "pq"  # "pq": cells scanned as 4-bit product codes; "flat": exact products
    pq_subquantizers: int = 64  # "pq": product-code parts (must divide the candidate space's dims)
    pq_min_rows: int = 1000  # "pq" below this many rows falls back to "flat" (too few to train)
    pq_train_rows: int = 65_536  # "pq": rows (a seeded sample) the product codes are fitted on
    pq_residual: bool = True  # "pq": code each row's residual from its cell's centroid
    pca_dims: int | None = 128  # candidate space dimensions; None = the original space
    pca_sample: int = 50_000  # rows used to fit the PCA
    train_per_cell: int = 40  # k-means training rows per cell
    niter: int = 10  # k-means iterations
    seed: int = 0  # the PCA sample and the k-means; the workflow passes its `seed`
    threads: int | None = None  # None = the cores this process may use
    device: str = "cpu"  # "cpu" (faiss), or "cuda", "cuda:N", "auto": torch_knn on that GPU
    # rows re-ranked at once (memory: block x candidates x dim x 8 bytes); small enough for
    # the gathered candidates to stay in the CPU cache: 64 took 0.63-0.70x the time of 1024
    rerank_block: int = 64


def available_cores() -> int:
    """Cores this process may run on (affinity mask, e.g. a Slurm or cgroup cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _set_threads(threads: int | None) -> int:
    import faiss

    n = threads or available_cores()
    faiss.omp_set_num_threads(n)
    return n


def _as_matrix(X) -> np.ndarray:
    """``X`` as a C-contiguous float32 matrix, or float16 when it is float16 (kept so: half
    the memory; the search widens it block by block)."""
    X = np.asarray(X)
    X = np.ascontiguousarray(X, dtype=np.float16 if X.dtype == np.float16 else np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {X.shape}")
    return X


def _as_rows(rows, n_total: int) -> np.ndarray | None:
    if rows is None:
        return None
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (rows.size and (rows.min() < 0 or rows.max() >= n_total)):
        raise ValueError(f"rows must be a 1-D array of row numbers in [0, {n_total})")
    return rows


def index_dtype(n: int) -> type:
    """The dtype of row numbers among ``n`` rows: int32 while they fit (half the memory of
    the neighbour table: 0.8 GB less at 10,000,000 rows and k = 20), else int64."""
    return np.int32 if n < 2**31 else np.int64


class _Rows:
    """The rows a search runs on, numbered 0..n-1: all rows of ``X``, or the rows
    ``rows`` of it, read through the index instead of copied out; float32 on the way out."""

    def __init__(self, X: np.ndarray, rows: np.ndarray | None):
        self.X = X
        self.rows = rows
        self.n = X.shape[0] if rows is None else len(rows)
        self.dim = X.shape[1]

    @property
    def whole_float32(self) -> bool:
        """All of a float32 ``X``: it can be handed to faiss and numpy as it is."""
        return self.rows is None and self.X.dtype == np.float32

    def take(self, idx, scratch: np.ndarray | None = None) -> np.ndarray:
        """Rows ``idx`` (any shape of row numbers) as float32: a new array, or float16 rows
        widened into the front of ``scratch`` (a flat float32 buffer at least that big)."""
        found = self.X[idx if self.rows is None else self.rows[idx]]
        if scratch is None or found.dtype == np.float32:
            return _float32(found)
        return _widen_into(found, scratch[: found.size].reshape(found.shape))

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as float32 (a view of ``X`` where no copy is needed)."""
        if self.rows is not None:
            return self.take(np.arange(start, min(stop, self.n)))
        return _float32(self.X[start:stop])

    def matrix(self) -> np.ndarray:
        """All of them as one float32 matrix (``X`` itself when it already is one)."""
        return self.X if self.whole_float32 else self.block(0, self.n)


def search_device(device: str) -> str:
    """The torch device of the search for ``AnnParams.device`` (``cpu``: the faiss search;
    ``auto``, ``cuda``, ``cuda:N``: :func:`rare_objects.runtime.devices.resolve_device`)."""
    if device == "cpu":
        return "cpu"
    from rare_objects.runtime.devices import resolve_device

    return resolve_device(device)


def rows_float32(X: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """The rows ``rows`` of ``X`` (all when None) as one float32 matrix: ``X`` itself when
    it is a float32 matrix and all rows are asked for, else a copy (for the exact paths,
    which only run on small inputs)."""
    X = _as_matrix(X)
    return _Rows(X, _as_rows(rows, X.shape[0])).matrix()


# --------------------------------------------------------------------------- exact


def exact_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows, exactly, as scikit-learn's LOF finds them."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k).fit(X)
    dist, ind = nn.kneighbors()
    return dist.astype(np.float32), ind.astype(index_dtype(len(X)))


# --------------------------------------------------------------------------- approximate


def _pca_space(data: _Rows, params: AnnParams) -> np.ndarray:
    """Rows in the candidate space: their first ``pca_dims`` principal components
    (float16 when ``X`` is float16, else float32; the rows themselves, as float32,
    without a PCA)."""
    n, d = data.n, data.dim
    if params.pca_dims is None or params.pca_dims >= d:
        return data.matrix()
    rng = np.random.default_rng(params.seed)
    sample = (
        data.matrix()
        if n <= params.pca_sample
        else data.take(np.sort(rng.choice(n, params.pca_sample, replace=False)))
    )
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = sample.astype(np.float64) - mean
    cov = centred.T @ centred / max(1, len(sample) - 1)
    from scipy.linalg import eigh

    _, vectors = eigh(cov, subset_by_index=[d - params.pca_dims, d - 1], driver="evr")
    W = np.ascontiguousarray(vectors[:, ::-1], dtype=np.float32)
    mean = mean.astype(np.float32)
    Z = np.empty((n, params.pca_dims), dtype=data.X.dtype)
    step = 65536
    for start in range(0, n, step):
        if Z.dtype == np.float32:
            np.matmul(data.block(start, start + step) - mean, W, out=Z[start : start + step])
        else:
            Z[start : start + step] = (data.block(start, start + step) - mean) @ W
    return Z


def _float32(Z: np.ndarray) -> np.ndarray:
    return Z if Z.dtype == np.float32 else Z.astype(np.float32)


# float16 blocks from this many values up are widened by torch (below, numpy's cast costs
# less than torch's call overhead)
TORCH_WIDEN_MIN = 4096


def _widen_into(rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """float16 ``rows`` widened to float32: into ``out`` (the same shape), which is
    returned, or without torch a new array (numpy's cast into ``out`` measured slower than
    its cast into new memory).

    By torch where it is installed (the environments of the rules that search, and the test
    suite's): numpy casts float16 at about 2 ns a value, torch at about 0.15 ns into memory
    already touched. The re-ranking widens each candidate row it gathers, 120 per row, into
    one reused buffer; numpy's cast was 30 % of the outliers stage at 1,000,000 rows
    (bench/README.md). The values are the same: every float16 is exactly a float32."""
    torch = _torch() if rows.size >= TORCH_WIDEN_MIN else None
    if torch is not None:
        torch.from_numpy(out).copy_(torch.from_numpy(np.ascontiguousarray(rows)))
        return out
    return rows.astype(np.float32)


@functools.cache
def _torch():
    """torch, or None in an environment without it (numpy's cast then, the same values).
    Looked up once: a failed import searches the path again each time, and the
    re-ranking widens about 15,000 blocks per 1,000,000 rows."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def _kmeans(Z: np.ndarray, nlist: int, seed: int, params: AnnParams):
    """A trained faiss k-means of the rows of Z into ``nlist`` cells (seeded)."""
    import faiss

    kmeans = faiss.Kmeans(
        Z.shape[1],
        nlist,
        niter=params.niter,
        seed=seed,
        max_points_per_centroid=params.train_per_cell,
        min_points_per_centroid=1,
        verbose=False,
    )
    if Z.dtype == np.float32:
        kmeans.train(Z)
    else:
        # A float16 space: faiss takes float32, so k-means trains on a seeded sample of
        # the size it would sample itself, widened.
        kmeans.train(_float32(Z[_training_sample(Z.shape[0], params.train_per_cell * nlist, seed)]))
    return kmeans


def _training_sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, min(n, size), replace=False))


def _partition(
    Z: np.ndarray, nlist: int, seed: int, params: AnnParams
) -> tuple[np.ndarray, np.ndarray]:
    """k-means cells of the rows of Z: (centroids, assignment)."""
    n = Z.shape[0]
    if nlist <= 1:
        return Z[:1].copy(), np.zeros(n, dtype=np.int64)
    kmeans = _kmeans(Z, nlist, seed, params)
    if Z.dtype == np.float32:
        _, assign = kmeans.index.search(Z, 1)
        return kmeans.centroids.copy(), assign[:, 0].astype(np.int64)
    assign = np.empty(n, dtype=np.int64)
    step = 262144
    for start in range(0, n, step):
        _, found = kmeans.index.search(_float32(Z[start : start + step]), 1)
        assign[start : start + step] = found[:, 0]
    return kmeans.centroids.copy(), assign


def _cell_members(assign: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
    return order, bounds


SCAN_CHUNK = 1024  # query rows per product-code scan (see _cell_candidates)


@dataclass
class _Cells:
    """One k-means partition of the candidate space: the rows sorted by cell (``order``),
    each cell's slice of them (``bounds``), the ``nprobe`` cells nearest to each
    (``probes``) and, for the "pq" scan, the cells' ``centroids`` and a faiss IVF index
    of the rows' product codes over the same cells (``codes``)."""

    order: np.ndarray
    bounds: np.ndarray
    probes: np.ndarray
    centroids: np.ndarray | None = None
    codes: object = None


def _scans_codes(Z: np.ndarray, nlist: int, params: AnnParams) -> bool:
    """Whether the cells are scanned as product codes ("pq") rather than exactly."""
    if params.cell_scan not in ("pq", "flat"):
        raise ValueError(f"cell_scan must be 'pq' or 'flat', got {params.cell_scan!r}")
    n, d = Z.shape
    return (
        params.cell_scan == "pq"
        and nlist > 1
        and n >= params.pq_min_rows
        and d % params.pq_subquantizers == 0
    )


def _coded_cells(Z: np.ndarray, nlist: int, seed: int, params: AnnParams):
    """The k-means cells of Z with the rows stored as 4-bit product codes (of their
    residuals with ``pq_residual``) in a faiss ``IndexIVFPQFastScan`` over those cells:
    ``(centroids, index, order, bounds)``. Adding the rows to the index assigns them to
    their cells, so the assignment is not computed twice."""
    import faiss

    n, d = Z.shape
    kmeans = _kmeans(Z, nlist, seed, params)
    centroids = kmeans.centroids.copy()
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(centroids)
    index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, params.pq_subquantizers, 4)
    index.by_residual = params.pq_residual  # set, not left to the faiss version's default
    # The quantizer holds the centroids already (trained, nlist rows), so train() fits
    # the product codes only, on a seeded sample (of the residuals with pq_residual).
    index.train(_float32(Z[_training_sample(n, params.pq_train_rows, seed)]))
    step = 262144
    for start in range(0, n, step):
        stop = min(n, start + step)
        index.add_with_ids(_float32(Z[start:stop]), np.arange(start, stop, dtype=np.int64))
    invlists = index.invlists
    sizes = np.array([invlists.list_size(c) for c in range(nlist)], dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    bounds = np.zeros(nlist + 1, dtype=np.int64)
    np.cumsum(sizes, out=bounds[1:])
    for c in np.flatnonzero(sizes):
        ids = faiss.rev_swig_ptr(invlists.get_ids(int(c)), int(sizes[c]))
        order[bounds[c] : bounds[c + 1]] = np.sort(ids)
    return centroids, index, order, bounds


def _cells(Z: np.ndarray, nlist: int, seed: int, params: AnnParams) -> _Cells:
    """One k-means partition of the candidate space (:class:`_Cells`)."""
    import faiss

    if _scans_codes(Z, nlist, params):
        centroids, index, order, bounds = _coded_cells(Z, nlist, seed, params)
        index.nprobe = min(params.nprobe, nlist)
    else:
        centroids, assign = _partition(Z, nlist, seed, params)
        order, bounds = _cell_members(assign, nlist)
        index = None
    nprobe = min(params.nprobe, nlist)
    if nlist > 1:
        _, probes = faiss.knn(centroids, centroids, nprobe)
    else:
        probes = np.zeros((1, 1), dtype=np.int64)
    return _Cells(order, bounds, probes, centroids if index is not None else None, index)


def _scan_codes(cells: _Cells, cell: int, queries: np.ndarray, n_candidates: int) -> np.ndarray:
    """The ``n_candidates`` nearest rows of the cells probed from ``cell`` to each query
    row (float32, candidate space), by their product codes (-1 where fewer)."""
    probes = cells.probes[cell]
    lists = np.ascontiguousarray(np.broadcast_to(probes, (len(queries), probes.size)), np.int64)
    # the rows' distances to the probed centroids, which faiss takes with the lists
    centroids = cells.centroids[probes]
    coarse = (
        (queries * queries).sum(axis=1, keepdims=True)
        - 2.0 * queries @ centroids.T
        + (centroids * centroids).sum(axis=1)
    ).astype(np.float32)
    _, found = cells.codes.search_preassigned(queries, n_candidates, lists, coarse)
    return found


def _cell_candidates(
    Z: np.ndarray, cells: _Cells, n_candidates: int, wanted: np.ndarray | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows, candidates)`` for each non-empty cell: its rows and their
    ``(len(rows), n_candidates)`` nearest rows of the probed cells in the candidate
    space (-1 where there are fewer), by exact products or by product codes.
    ``wanted`` (a mask of the rows): only those rows' candidates, from all rows."""
    import faiss

    order, bounds, probes = cells.order, cells.bounds, cells.probes
    for cell in range(len(bounds) - 1):
        rows = order[bounds[cell] : bounds[cell + 1]]
        if wanted is not None:
            rows = rows[wanted[rows]]
        if rows.size == 0:
            continue
        if cells.codes is not None:
            # in chunks: for residual codes faiss builds a lookup table per query and probed
            # cell (4 KB each at 64 parts): 2.2 GB for a cell of 24,000 rows at once
            found = np.empty((rows.size, n_candidates), dtype=np.int64)
            for start in range(0, rows.size, SCAN_CHUNK):
                chunk = rows[start : start + SCAN_CHUNK]
                found[start : start + chunk.size] = _scan_codes(
                    cells, cell, _float32(Z[chunk]), n_candidates
                )
            yield rows, found
            continue
        cand = np.concatenate([order[bounds[c] : bounds[c + 1]] for c in probes[cell] if c >= 0])
        kk = min(n_candidates, cand.size)
        _, found = faiss.knn(_float32(Z[rows]), _float32(Z[cand]), kk)
        out = np.full((rows.size, n_candidates), -1, dtype=np.int64)
        out[:, :kk] = np.where(found >= 0, cand[np.maximum(found, 0)], -1)
        yield rows, out


def _ann_candidates(
    Z: np.ndarray, n_candidates: int, nlist: int, params: AnnParams
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, order)`` of several partitions: (n, partitions * n_candidates)
    candidate row numbers (-1 where none) and the rows sorted by their first-partition
    cell (re-ranking in that order finds most candidates in the CPU cache)."""
    n = Z.shape[0]
    out = np.full((n, params.partitions * n_candidates), -1, dtype=index_dtype(n))
    first_order = None
    for part in range(params.partitions):
        cells = _cells(Z, nlist, params.seed + 1000 * part, params)
        if first_order is None:
            first_order = cells.order
        col = part * n_candidates
        for rows, found in _cell_candidates(Z, cells, n_candidates):
            out[rows, col : col + n_candidates] = found
    return out, first_order


def _rerank_scratch(data: _Rows, block: int, width: int) -> np.ndarray | None:
    """A buffer for ``block`` rows' ``width`` candidates widened from float16 (None for
    float32 rows, which need no widening). Reused, its pages are touched once: widening
    into new memory costs more in page faults than the widening itself."""
    if data.X.dtype != np.float16:
        return None
    return np.empty(block * width * data.dim, dtype=np.float32)


def _rerank_rows(
    data: _Rows,
    rows: np.ndarray,
    cand: np.ndarray,
    k: int,
    dist: np.ndarray,
    ind: np.ndarray,
    slots: np.ndarray | None = None,
    within=None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Exact k nearest of ``rows`` among their candidates ``cand`` (self and duplicates
    dropped, ties by row number), written into ``dist`` and ``ind`` (at ``slots``, default
    ``rows``); returns the rows with fewer than k distinct candidates (left for
    :func:`_exhaustive`). ``within``: also handed the re-ranked candidates, to derive
    each row's nearest of its own group from them
    (:class:`rare_objects.neighbors.groups.WithinGroups`). ``scratch``: the buffer float16
    candidates are widened into (:func:`_rerank_scratch`), reused from block to block."""
    C = np.sort(cand.astype(np.int64), axis=1)
    invalid = (C < 0) | (C == rows[:, None])
    invalid[:, 1:] |= C[:, 1:] == C[:, :-1]
    G = data.take(np.maximum(C, 0), scratch)  # (b, m, d)
    G -= data.take(rows)[:, None, :]
    d2 = np.einsum("bmd,bmd->bm", G, G)
    del G
    d2[invalid] = np.inf
    pick = np.argsort(d2, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(d2, pick, axis=1)
    found = np.take_along_axis(C, pick, axis=1)
    slots = rows if slots is None else slots
    dist[slots] = np.sqrt(best)
    ind[slots] = found
    complete = np.isfinite(best[:, -1])
    if within is not None:
        within.add(rows, C, d2, found, complete)
    return rows[~complete]


def _exhaustive_tables(
    data: _Rows, rows: np.ndarray, k: int, step: int = 262144
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of ``rows`` against every row of ``data``, exactly
    (float32, ties by row number): ``(len(rows), k)`` tables; ``step`` rows of the base
    at a time."""
    import faiss

    dist = np.empty((rows.size, k), dtype=np.float32)
    ind = np.empty((rows.size, k), dtype=index_dtype(data.n))
    if rows.size == 0:
        return dist, ind
    queries = data.take(rows)
    found_d, found_i = [], []
    for start in range(0, data.n, step):
        base = data.block(start, start + step)
        d2, found = faiss.knn(queries, base, min(k + 1, len(base)))
        found_d.append(d2)
        found_i.append(np.where(found >= 0, found + start, -1))
    d2, found = np.concatenate(found_d, axis=1), np.concatenate(found_i, axis=1)
    for slot, (r, drow, frow) in enumerate(zip(rows, d2, found)):
        keep = (frow != r) & (frow >= 0)
        order = np.lexsort((frow[keep], drow[keep]))[:k]
        ind[slot] = frow[keep][order]
        dist[slot] = np.sqrt(np.maximum(drow[keep][order], 0.0))
    return dist, ind


def _exhaustive(
    data: _Rows, rows: np.ndarray, k: int, dist, ind, slots: np.ndarray | None = None
) -> None:
    """:func:`exhaustive_knn` of ``rows`` (rows whose candidates were too few), written
    into ``dist`` and ``ind`` at ``slots`` (default ``rows``)."""
    if rows.size == 0:
        return
    slots = rows if slots is None else slots
    dist[slots], ind[slots] = _exhaustive_tables(data, rows, k)


def exhaustive_knn(
    X: np.ndarray, k: int, rows: np.ndarray | None = None, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The exact k nearest other rows of ``queries`` (positions among the searched rows;
    default all) by brute force against every searched row (``rows`` of ``X``, default
    all; numbered as in :func:`approximate_knn`): for a few queries among many rows."""
    X = _as_matrix(X)
    data = _Rows(X, _as_rows(rows, X.shape[0]))
    if not 1 <= k < data.n:
        raise ValueError(f"k must be in [1, n-1] = [1, {data.n - 1}], got {k}")
    queries = np.arange(data.n) if queries is None else np.asarray(queries, dtype=np.int64)
    return _exhaustive_tables(data, queries, k)


def _rerank(
    data: _Rows, cand: np.ndarray, k: int, block: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest among each row's candidates (self and duplicates dropped).

    Rows are processed in ``order`` (default: index order), ``block`` at a time. Rows
    with fewer than k distinct candidates are searched exhaustively. Ties are broken by
    row number.
    """
    n = data.n
    if order is None:
        order = np.arange(n)
    dist = np.empty((n, k), dtype=np.float32)
    ind = np.empty((n, k), dtype=index_dtype(n))
    scratch = _rerank_scratch(data, block, cand.shape[1])
    short = [
        _rerank_rows(
            data,
            order[start : start + block],
            cand[order[start : start + block]],
            k,
            dist,
            ind,
            scratch=scratch,
        )
        for start in range(0, n, block)
    ]
    _exhaustive(data, np.concatenate(short), k, dist, ind)
    return dist, ind


def torch_knn(
    X: np.ndarray,
    k: int,
    device: str = "cpu",
    query_block: int = 4096,
    base_block: int = 1 << 18,
    margin: int = 16,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest other rows by blocked brute force with torch on ``device`` (self excluded).

    Each block of ``query_block`` rows is compared with every row, ``base_block`` rows at
    a time, by one matrix product: in float16 on a GPU (tensor cores), float32 on the CPU.
    The ``k + margin`` best of each row by that product's distance are then re-ranked
    with float32 distances computed from the differences (duplicates at exactly 0, ties
    broken by row number, as :func:`_rerank`), so the rounding of the half-precision
    product only has to keep the true neighbours among the candidates. Needs no faiss
    build with GPU support: torch, with CUDA, is already there for the models.
    Memory on the device: the rows in float32 and in the product's precision, plus one
    ``query_block x base_block`` float32 block (4 GiB at the defaults): 10,000,000 x 512
    takes about 35 GiB of GPU memory. ``rows``: search among these rows of ``X`` only
    (numbered 0..len(rows)-1 in the result), as :func:`approximate_knn`.
    """
    try:
        import torch
    except ImportError:  # the CPU rules' environment: the search stays on the CPU there
        raise RuntimeError(
            "the neighbour search on a GPU needs torch (envs/vision.yaml); use device cpu"
        ) from None

    X = _as_matrix(X)
    rows = _as_rows(rows, X.shape[0])
    n = X.shape[0] if rows is None else len(rows)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    dev = torch.device(device)
    low = torch.float16 if dev.type == "cuda" else torch.float32
    kept = min(n, k + 1 + margin)  # candidates per row, itself included
    dist = np.empty((n, k), dtype=np.float32)
    ind = np.empty((n, k), dtype=index_dtype(n))
    with torch.inference_mode():
        stored = torch.from_numpy(X).to(dev)
        if rows is not None:
            stored = stored[torch.from_numpy(rows).to(dev)]
        full = stored.float()
        base = full if low == torch.float32 else stored.to(low)
        del stored
        squares = (full * full).sum(dim=1)
        for start in range(0, n, query_block):
            stop = min(start + query_block, n)
            query = base[start:stop]
            best_d = best_i = None
            for first in range(0, n, base_block):
                last = min(first + base_block, n)
                # |q|^2 + |x|^2 - 2 q.x, in place on the product (one block-sized buffer)
                d2 = (query @ base[first:last].T).float().mul_(-2)
                d2.add_(squares[None, first:last]).add_(squares[start:stop, None])
                d2, found = torch.topk(d2, min(kept, last - first), dim=1, largest=False)
                found += first
                if best_d is not None:
                    d2, found = torch.cat([best_d, d2], 1), torch.cat([best_i, found], 1)
                    d2, pick = torch.topk(d2, min(kept, d2.shape[1]), dim=1, largest=False)
                    found = torch.gather(found, 1, pick)
                best_d, best_i = d2, found
            itself = torch.arange(start, stop, device=dev)
            # exact float32 distances of the candidates, from the differences
            diff = full[best_i] - full[start:stop, None, :]
            exact = (diff * diff).sum(dim=2)
            exact[best_i == itself[:, None]] = float("inf")
            # by distance, ties by row number: sort by row, then a stable sort by distance
            by_row = torch.argsort(best_i, dim=1)
            best_i = torch.gather(best_i, 1, by_row)
            exact = torch.gather(exact, 1, by_row)
            order = torch.argsort(exact, dim=1, stable=True)[:, :k]
            dist[start:stop] = torch.gather(exact, 1, order).sqrt().cpu().numpy()
            ind[start:stop] = torch.gather(best_i, 1, order).cpu().numpy()
    return dist, ind


def approximate_knn(
    X: np.ndarray,
    k: int,
    ann: AnnParams | None = None,
    rows: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    within=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The approximate path of :func:`knn` (whatever the size of X).

    ``rows``: search among these rows of ``X`` only (e.g. one class), read through the
    index instead of copied; the result's row numbers are then positions in ``rows``.
    ``queries``: the neighbours of these rows (positions among the searched rows,
    ascending) only, one result row each; with one partition on the CPU only their cells
    are searched. ``within``: a :class:`rare_objects.neighbors.groups.WithinGroups`
    that derives each row's nearest of its own group from its candidates (CPU only).
    """
    X = _as_matrix(X)
    rows = _as_rows(rows, X.shape[0])
    ann = ann or AnnParams()
    data = _Rows(X, rows)
    n = data.n
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if queries is not None:
        queries = np.asarray(queries, dtype=np.int64)
        if queries.size and (queries.min() < 0 or queries.max() >= n):
            raise ValueError(f"queries must be positions in [0, {n})")
    device = search_device(ann.device)
    if device.startswith("cuda"):
        if within is not None:
            raise ValueError("the group neighbours are derived on the CPU search only")
        dist, ind = torch_knn(X, k, device, rows=rows)
        return (dist, ind) if queries is None else (dist[queries], ind[queries])
    _set_threads(ann.threads)
    n_candidates = max(ann.candidates, k + 1)
    Z = _pca_space(data, ann)
    nlist = min(n, ann.nlist or max(1, int(round(n / ann.cell_size))))
    if ann.partitions > 1:
        if within is not None:
            raise ValueError("the group neighbours are derived with one partition only")
        cand, order = _ann_candidates(Z, n_candidates, nlist, ann)
        del Z
        dist, ind = _rerank(data, cand, k, ann.rerank_block, order)
        return (dist, ind) if queries is None else (dist[queries], ind[queries])
    # One partition: each cell's rows are re-ranked as soon as their candidates are
    # found (row by row the same result as _rerank, without an n x candidates table).
    wanted = slot_of = None
    size = n
    if queries is not None:
        wanted = np.zeros(n, dtype=bool)
        wanted[queries] = True
        slot_of = np.full(n, -1, dtype=np.int64)
        slot_of[queries] = np.arange(queries.size)
        size = queries.size
    dist = np.empty((size, k), dtype=np.float32)
    ind = np.empty((size, k), dtype=index_dtype(n))
    short = []
    cells = _cells(Z, nlist, ann.seed, ann)
    scratch = _rerank_scratch(data, ann.rerank_block, n_candidates)
    for cell_rows, cand in _cell_candidates(Z, cells, n_candidates, wanted):
        for start in range(0, cell_rows.size, ann.rerank_block):
            block = cell_rows[start : start + ann.rerank_block]
            slots = None if slot_of is None else slot_of[block]
            found = cand[start : start + ann.rerank_block]
            short.append(_rerank_rows(data, block, found, k, dist, ind, slots, within, scratch))
    del Z
    short = np.concatenate(short) if short else np.empty(0, dtype=np.int64)
    _exhaustive(data, short, k, dist, ind, None if slot_of is None else slot_of[short])
    return dist, ind


def knn(
    X: np.ndarray,
    k: int,
    exact_max: int = DEFAULT_EXACT_MAX,
    ann: AnnParams | None = None,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (Euclidean): ``(distances, indices)``.

    ``distances`` is float32 ``(n, k)``, ascending per row; ``indices`` int32
    (:func:`index_dtype`: int64 from 2**31 rows).
    A row is never its own neighbour (duplicates of it are, at distance 0).
    Exact (scikit-learn) when ``n <= exact_max``, else :func:`approximate_knn`.
    ``rows``: among these rows of ``X`` only (``n = len(rows)``; indices are positions
    in ``rows``).
    """
    X = _as_matrix(X)
    rows = _as_rows(rows, X.shape[0])
    n = X.shape[0] if rows is None else len(rows)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if n <= exact_max:
        return exact_knn(rows_float32(X, rows), k)
    return approximate_knn(X, k, ann, rows)


# --------------------------------------------------------------------------- similarity pairs


def _is_normalised(X: np.ndarray, tol: float = 1e-3, step: int = 262144) -> bool:
    for start in range(0, X.shape[0], step):
        block = X[start : start + step].astype(np.float32, copy=False)
        norms = np.einsum("ij,ij->i", block, block)
        if np.any(np.abs(norms - 1.0) > 2 * tol):
            return False
    return True


def normalised(X: np.ndarray) -> np.ndarray:
    """``X`` with unit rows (the input itself when it already has them; zero rows stay zero)."""
    X = _as_matrix(X)
    if _is_normalised(X):
        return X
    X = X.astype(np.float32, copy=False)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def iter_similar_pairs(
    X: np.ndarray,
    threshold: float,
    exact_max: int = DEFAULT_EXACT_MAX,
    block_size: int = 2048,
    max_neighbors: int = 32,
    ann: AnnParams | None = None,
    pairs_step: int = 262144,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks ``(i, j, similarity)`` of the pairs ``i < j`` with cosine similarity >= threshold.

    Exact up to ``exact_max`` rows: the upper triangle of ``X X^T`` in
    ``block_size`` x n blocks (never an n x n matrix). Above it: each row's
    ``max_neighbors`` approximate nearest neighbours (:func:`approximate_knn`),
    kept when similar enough; a row with more near duplicates than that is
    still linked to its ``max_neighbors`` nearest, which for connected
    components is what matters. Each pair is yielded once. ``pairs_step``: rows whose
    neighbours are turned into pairs at once (memory only).
    """
    X = normalised(X)
    n = X.shape[0]
    if n < 2:
        return
    if n <= exact_max:
        X = X.astype(np.float32, copy=False)
        for start in range(0, n, block_size):
            stop = min(start + block_size, n)
            S = X[start:stop] @ X[start:].T
            # keep the strict upper triangle: column (start + c) > row (start + r)
            r, c = np.nonzero(S >= threshold)
            upper = c > r
            r, c = r[upper], c[upper]
            if r.size:
                yield (
                    (r + start).astype(np.int64),
                    (c + start).astype(np.int64),
                    S[r, c].astype(np.float32),
                )
        return
    k = min(max_neighbors, n - 1)
    dist, ind = approximate_knn(X, k, ann)
    # The similar pairs of `pairs_step` rows at a time: the (n, k) temporaries in float64 and
    # int64 (a gigabyte each at 3,000,000 rows and k = 32) are never made whole.
    found_i, found_j, found_s = [], [], []
    for start in range(0, n, pairs_step):
        sim = 1.0 - 0.5 * dist[start : start + pairs_step].astype(np.float64) ** 2
        r, c = np.nonzero(sim >= threshold)
        rows = r + start
        cols = ind[start : start + pairs_step][r, c].astype(np.int64)
        found_i.append(np.minimum(rows, cols))
        found_j.append(np.maximum(rows, cols))
        found_s.append(sim[r, c].astype(np.float32))
    del dist, ind
    i, j, s = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    if i.size:
        key = i * n + j
        _, first = np.unique(key, return_index=True)
        yield i[first], j[first], s[first]


def similar_pairs(
    X: np.ndarray, threshold: float, **search
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All of :func:`iter_similar_pairs` at once: ``(i, j, similarity)``, sorted by (i, j).

    ``search``: the search's keywords of :func:`iter_similar_pairs` (``exact_max``,
    ``block_size``, ``max_neighbors``, ``ann``).
    """
    chunks = list(iter_similar_pairs(X, threshold, **search))
    if not chunks:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    i = np.concatenate([c[0] for c in chunks])
    j = np.concatenate([c[1] for c in chunks])
    s = np.concatenate([c[2] for c in chunks])
    order = np.lexsort((j, i))
    return i[order], j[order], s[order]


__all__ = [
    "AnnParams",
    "DEFAULT_EXACT_MAX",
    "approximate_knn",
    "available_cores",
    "exact_knn",
    "exhaustive_knn",
    "index_dtype",
    "iter_similar_pairs",
    "knn",
    "normalised",
    "rows_float32",
    "similar_pairs",
]
