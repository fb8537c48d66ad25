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
   compared with all rows of the ``nprobe`` cells nearest to it in one
   matrix product with fused top-k selection (``faiss.knn``, BLAS). Points
   near a cell boundary lose neighbours in one partition but rarely in all,
   so a few cheap partitions beat one expensive search.
3. **Exact re-ranking.** The union of every row's candidates is re-ranked
   with exact float32 distances in the original space (``|x - y|`` computed
   from the difference, so duplicates are at distance exactly 0).

Per-query IVF scanning (faiss ``IndexIVFFlat.search``) was measured first: on
2 cores it scans ~10 GFLOP/s (memory bound) and needed ~45 min for 1M x 512
at recall 0.97; the cell-blocked products run at BLAS speed.

With a GPU (``AnnParams.device``, the workflow's ``outliers.device``), the search is
exact brute force on it with torch instead (:func:`torch_knn`): no faiss build with GPU
support is needed.

All results are deterministic for a given input, parameters (``AnnParams.seed``
decides the PCA sample and the k-means; the workflow passes its ``seed``) and
thread count.
"""

from __future__ import annotations

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
    candidates: int = 80  # candidates per row and partition, re-ranked exactly
    pca_dims: int | None = 128  # candidate space dimensions; None = the original space
    pca_sample: int = 50_000  # rows used to fit the PCA
    train_per_cell: int = 40  # k-means training rows per cell
    niter: int = 10  # k-means iterations
    seed: int = 0  # the PCA sample and the k-means; the workflow passes its `seed`
    threads: int | None = None  # None = the cores this process may use
    device: str = "cpu"  # "cpu" (faiss), or "cuda", "cuda:N", "auto": torch_knn on that GPU
    rerank_block: int = 1024  # rows re-ranked at once (memory: block x candidates x dim x 8 bytes)


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
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {X.shape}")
    return X


def _search_device(device: str) -> str:
    """The torch device of the search for ``AnnParams.device`` (``cpu``: the faiss search;
    ``auto``, ``cuda``, ``cuda:N``: :func:`rare_objects.runtime.devices.resolve_device`)."""
    if device == "cpu":
        return "cpu"
    from rare_objects.runtime.devices import resolve_device

    return resolve_device(device)


# --------------------------------------------------------------------------- exact


def exact_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest other rows, exactly, as scikit-learn's LOF finds them."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k).fit(X)
    dist, ind = nn.kneighbors()
    return dist.astype(np.float32), ind.astype(np.int64)


# --------------------------------------------------------------------------- approximate


def _pca_space(X: np.ndarray, params: AnnParams) -> np.ndarray:
    """Rows in the candidate space: their first ``pca_dims`` principal components."""
    n, d = X.shape
    if params.pca_dims is None or params.pca_dims >= d:
        return X
    rng = np.random.default_rng(params.seed)
    sample = (
        X if n <= params.pca_sample else X[np.sort(rng.choice(n, params.pca_sample, replace=False))]
    )
    mean = sample.mean(axis=0, dtype=np.float64)
    centred = sample.astype(np.float64) - mean
    cov = centred.T @ centred / max(1, len(sample) - 1)
    from scipy.linalg import eigh

    _, vectors = eigh(cov, subset_by_index=[d - params.pca_dims, d - 1], driver="evr")
    W = np.ascontiguousarray(vectors[:, ::-1], dtype=np.float32)
    mean = mean.astype(np.float32)
    Z = np.empty((n, params.pca_dims), dtype=np.float32)
    step = 65536
    for start in range(0, n, step):
        np.matmul(X[start : start + step] - mean, W, out=Z[start : start + step])
    return Z


def _partition(
    Z: np.ndarray, nlist: int, seed: int, params: AnnParams
) -> tuple[np.ndarray, np.ndarray]:
    """k-means cells of the rows of Z: (centroids, assignment)."""
    import faiss

    n, d = Z.shape
    if nlist <= 1:
        return Z[:1].copy(), np.zeros(n, dtype=np.int64)
    kmeans = faiss.Kmeans(
        d,
        nlist,
        niter=params.niter,
        seed=seed,
        max_points_per_centroid=params.train_per_cell,
        min_points_per_centroid=1,
        verbose=False,
    )
    kmeans.train(Z)
    _, assign = kmeans.index.search(Z, 1)
    return kmeans.centroids.copy(), assign[:, 0].astype(np.int64)


def _cell_members(assign: np.ndarray, nlist: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
    return order, bounds


def _ann_candidates(
    X: np.ndarray, n_candidates: int, params: AnnParams
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, order)``: (n, partitions * n_candidates) candidate row
    numbers (-1 where none) and the rows sorted by their first-partition cell
    (re-ranking in that order finds most candidates in the CPU cache)."""
    import faiss

    n = X.shape[0]
    Z = _pca_space(X, params)
    nlist = params.nlist or max(1, int(round(n / params.cell_size)))
    nlist = min(nlist, n)
    itype = np.int32 if n < 2**31 else np.int64
    out = np.full((n, params.partitions * n_candidates), -1, dtype=itype)
    first_order = None
    for part in range(params.partitions):
        centroids, assign = _partition(Z, nlist, params.seed + 1000 * part, params)
        order, bounds = _cell_members(assign, nlist)
        if first_order is None:
            first_order = order
        nprobe = min(params.nprobe, nlist)
        if nlist > 1:
            _, probes = faiss.knn(centroids, centroids, nprobe)
        else:
            probes = np.zeros((1, 1), dtype=np.int64)
        col = part * n_candidates
        for cell in range(nlist):
            rows = order[bounds[cell] : bounds[cell + 1]]
            if rows.size == 0:
                continue
            cand = np.concatenate(
                [order[bounds[c] : bounds[c + 1]] for c in probes[cell] if c >= 0]
            )
            kk = min(n_candidates, cand.size)
            _, found = faiss.knn(Z[rows], Z[cand], kk)
            out[rows, col : col + kk] = np.where(found >= 0, cand[np.maximum(found, 0)], -1)
    return out, first_order


def _rerank(
    X: np.ndarray, cand: np.ndarray, k: int, block: int, order: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest among each row's candidates (self and duplicates dropped).

    Rows are processed in ``order`` (default: index order). Rows with fewer
    than k distinct candidates are searched exhaustively. Ties are broken by
    row number.
    """
    import faiss

    n = X.shape[0]
    if order is None:
        order = np.arange(n)
    dist = np.empty((n, k), dtype=np.float32)
    ind = np.empty((n, k), dtype=np.int64)
    short = []
    for start in range(0, n, block):
        rows = order[start : start + block]
        C = np.sort(cand[rows].astype(np.int64), axis=1)
        invalid = (C < 0) | (C == rows[:, None])
        invalid[:, 1:] |= C[:, 1:] == C[:, :-1]
        G = X[np.maximum(C, 0)]  # (b, m, d)
        G -= X[rows, None, :]
        d2 = np.einsum("bmd,bmd->bm", G, G)
        del G
        d2[invalid] = np.inf
        pick = np.argsort(d2, axis=1, kind="stable")[:, :k]
        best = np.take_along_axis(d2, pick, axis=1)
        dist[rows] = np.sqrt(best)
        ind[rows] = np.take_along_axis(C, pick, axis=1)
        bad = ~np.isfinite(best[:, -1])
        if bad.any():
            short.append(rows[bad])
    if short:
        rows = np.concatenate(short)
        d2, found = faiss.knn(X[rows], X, k + 1)
        for r, (drow, frow) in zip(rows, zip(d2, found)):
            keep = frow != r
            order = np.lexsort((frow[keep], drow[keep]))[:k]
            ind[r] = frow[keep][order]
            dist[r] = np.sqrt(np.maximum(drow[keep][order], 0.0))
    return dist, ind


def torch_knn(
    X: np.ndarray,
    k: int,
    device: str = "cpu",
    query_block: int = 4096,
    base_block: int = 1 << 18,
    margin: int = 16,
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
    takes about 35 GiB of GPU memory.
    """
    try:
        import torch
    except ImportError:  # the CPU rules' environment: the search stays on the CPU there
        raise RuntimeError(
            "the neighbour search on a GPU needs torch (envs/vision.yaml); use device cpu"
        ) from None

    X = _as_matrix(X)
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    dev = torch.device(device)
    low = torch.float16 if dev.type == "cuda" else torch.float32
    kept = min(n, k + 1 + margin)  # candidates per row, itself included
    dist = np.empty((n, k), dtype=np.float32)
    ind = np.empty((n, k), dtype=np.int64)
    with torch.inference_mode():
        full = torch.from_numpy(X).to(dev)
        base = full if low == torch.float32 else full.to(low)
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
            rows = torch.arange(start, stop, device=dev)
            # exact float32 distances of the candidates, from the differences
            diff = full[best_i] - full[start:stop, None, :]
            exact = (diff * diff).sum(dim=2)
            exact[best_i == rows[:, None]] = float("inf")
            # by distance, ties by row number: sort by row, then a stable sort by distance
            by_row = torch.argsort(best_i, dim=1)
            best_i = torch.gather(best_i, 1, by_row)
            exact = torch.gather(exact, 1, by_row)
            order = torch.argsort(exact, dim=1, stable=True)[:, :k]
            dist[start:stop] = torch.gather(exact, 1, order).sqrt().cpu().numpy()
            ind[start:stop] = torch.gather(best_i, 1, order).cpu().numpy()
    return dist, ind


def approximate_knn(
    X: np.ndarray, k: int, ann: AnnParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The approximate path of :func:`knn` (whatever the size of X)."""
    X = _as_matrix(X)
    ann = ann or AnnParams()
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    device = _search_device(ann.device)
    if device.startswith("cuda"):
        return torch_knn(X, k, device)
    _set_threads(ann.threads)
    n_candidates = max(ann.candidates, k + 1)
    cand, order = _ann_candidates(X, n_candidates, ann)
    return _rerank(X, cand, k, ann.rerank_block, order)


def knn(
    X: np.ndarray,
    k: int,
    exact_max: int = DEFAULT_EXACT_MAX,
    ann: AnnParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (Euclidean): ``(distances, indices)``.

    ``distances`` is float32 ``(n, k)``, ascending per row; ``indices`` int64.
    A row is never its own neighbour (duplicates of it are, at distance 0).
    Exact (scikit-learn) when ``n <= exact_max``, else :func:`approximate_knn`.
    """
    X = _as_matrix(X)
    n = X.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    if n <= exact_max:
        return exact_knn(X, k)
    return approximate_knn(X, k, ann)


# --------------------------------------------------------------------------- similarity pairs


def _is_normalised(X: np.ndarray, tol: float = 1e-3, step: int = 262144) -> bool:
    for start in range(0, X.shape[0], step):
        block = X[start : start + step]
        norms = np.einsum("ij,ij->i", block, block)
        if np.any(np.abs(norms - 1.0) > 2 * tol):
            return False
    return True


def normalised(X: np.ndarray) -> np.ndarray:
    """``X`` with unit rows (the input itself when it already has them; zero rows stay zero)."""
    X = _as_matrix(X)
    if _is_normalised(X):
        return X
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def iter_similar_pairs(
    X: np.ndarray,
    threshold: float,
    exact_max: int = DEFAULT_EXACT_MAX,
    block_size: int = 2048,
    max_neighbors: int = 32,
    ann: AnnParams | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks ``(i, j, similarity)`` of the pairs ``i < j`` with cosine similarity >= threshold.

    Exact up to ``exact_max`` rows: the upper triangle of ``X X^T`` in
    ``block_size`` x n blocks (never an n x n matrix). Above it: each row's
    ``max_neighbors`` approximate nearest neighbours (:func:`approximate_knn`),
    kept when similar enough; a row with more near duplicates than that is
    still linked to its ``max_neighbors`` nearest, which for connected
    components is what matters. Each pair is yielded once.
    """
    X = normalised(X)
    n = X.shape[0]
    if n < 2:
        return
    if n <= exact_max:
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
    sim = 1.0 - 0.5 * dist.astype(np.float64) ** 2
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = ind.ravel()
    sims = sim.ravel()
    keep = sims >= threshold
    i = np.minimum(rows[keep], cols[keep])
    j = np.maximum(rows[keep], cols[keep])
    s = sims[keep].astype(np.float32)
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
    "iter_similar_pairs",
    "knn",
    "normalised",
    "similar_pairs",
]
