"""Bench: the approximate neighbour search's settings, time against recall.

    .venv/bin/python bench/search_params.py --rows 100000 "pca_dims=96,candidates=120"

Rows drawn as bench/gather.py draws them (``iter_synthetic_embeddings``: Zipf-sized
object kinds, planted outliers, near-copies of earlier rows), stored as ``--dtype``
(float16 by default, as the workflow stores them). The baseline is the search with the
default ``AnnParams``; each argument is a set of overrides (``key=value,...``) run on the
same rows. Printed per run: time and its ratio to the baseline, recall@k of
``--queries`` rows against their exact neighbours, the share of those rows with all k
found, and the cells' balance (the work of the cell search against cells of equal size).
With ``--lof``, also the LOF (k neighbours, contamination 0.05) of every row from each
run's neighbours against the LOF from the exact neighbours of every row (brute force):
the Jaccard index of the outlier sets and the correlation of the factors.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import iter_synthetic_embeddings, machine  # noqa: E402


def _overrides(text: str) -> dict:
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {key.strip(): ast.literal_eval(value.strip()) for key, value in pairs}


def _cell_work(X: np.ndarray, params) -> float:
    """The cell search's work (rows x probed rows) against cells of equal size."""
    from rare_objects.neighbors import search

    data = search._Rows(X, None)
    Z = search._pca_space(data, params)
    nlist = max(1, int(round(len(X) / params.cell_size)))
    cells = search._cells(Z, nlist, params.seed, params)
    sizes = np.diff(cells.bounds)
    probed = np.array([sizes[p[p >= 0]].sum() for p in cells.probes])
    return float((sizes * probed).sum() / (len(X) * min(params.nprobe, nlist) * len(X) / nlist))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="overrides of AnnParams, e.g. pca_dims=96")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lof", action="store_true", help="LOF against exact LOF (slow)")
    args = parser.parse_args()

    import faiss

    from rare_objects.neighbors.search import AnnParams, approximate_knn

    print(machine())
    X = np.concatenate(
        [
            x.astype(args.dtype)
            for x, _, _ in iter_synthetic_embeddings(args.rows, args.dim, seed=args.seed)
        ]
    )
    queries = np.random.default_rng(args.seed + 5).choice(args.rows, args.queries, replace=False)
    wide = X.astype(np.float32)
    _, truth = faiss.knn(wide[queries], wide, args.k + 1)
    del wide
    truth = [t[t != q][: args.k] for t, q in zip(truth, queries)]
    print(f"{args.rows:,} x {args.dim} {args.dtype}, k = {args.k}, {args.queries} query rows")
    if args.lof:
        from rare_objects.backends.outlier_detectors.lof import lof_from_neighbors
        from rare_objects.neighbors.search import exhaustive_knn

        start = time.perf_counter()
        exact_factor, exact_flags = lof_from_neighbors(*exhaustive_knn(X, args.k), args.k, 0.05)
        print(
            f"exact neighbours of every row: {time.perf_counter() - start:.1f} s; LOF percentiles"
            f" 50/90/95/99: {np.round(np.percentile(-exact_factor, [50, 90, 95, 99]), 3).tolist()}"
        )

    baseline = None
    for text in ["", *args.runs]:
        params = AnnParams(seed=args.seed, **_overrides(text))
        start = time.perf_counter()
        dist, ind = approximate_knn(X, args.k, params)
        seconds = time.perf_counter() - start
        agreement = ""
        if args.lof:
            factor, flags = lof_from_neighbors(dist, ind, args.k, 0.05)
            union = np.count_nonzero(flags | exact_flags)
            agreement = (
                f", LOF outliers Jaccard {np.count_nonzero(flags & exact_flags) / union:.4f},"
                f" factor correlation {np.corrcoef(factor, exact_factor)[0, 1]:.4f}"
            )
        baseline = baseline or seconds
        found = np.array([len(set(t) & set(ind[q])) / args.k for t, q in zip(truth, queries)])
        changed = {
            f.name: getattr(params, f.name)
            for f in dataclasses.fields(params)
            if getattr(params, f.name) != getattr(AnnParams(seed=args.seed), f.name)
        }
        print(
            f"{changed or 'defaults (baseline)'}: {seconds:.1f} s ({seconds / baseline:.2f}x), "
            f"recall@{args.k} {found.mean():.4f}, all found {np.mean(found == 1):.3f}, "
            f"cell work {_cell_work(X, params):.2f}x equal cells{agreement}"
        )


if __name__ == "__main__":
    main()
