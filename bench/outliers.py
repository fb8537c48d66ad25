"""Bench: LOF on a million embeddings (approximate path) against exact scikit-learn.

    .venv/bin/python bench/outliers.py                 # 1,000,000 x 512, baseline on 100,000
    .venv/bin/python bench/outliers.py --n 200000 --subset 20000 --dim 128   # quick

Synthetic clustered, L2-normalised float32 embeddings with planted outliers
(bench/_common.py). Every measured part runs in its own child process, so each
peak-RSS figure is that part alone (interpreter + its data + the call):

1. ``lof_flags`` on all n rows (the approximate path, n > exact_max);
2. the baseline: exact scikit-learn ``LocalOutlierFactor`` on the first
   ``--subset`` rows (what ``lof_flags`` does below ``exact_max``);
3. the approximate path forced on the same subset, for the Jaccard index of
   its outlier set against the exact one.

Optionally (``--recall-sample``) the recall@k of the approximate neighbours of
the full run, on sampled rows, against exact brute force.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, jaccard, machine, run_isolated, synthetic_embeddings  # noqa: E402


def _generate(path: str, n: int, dim: int, seed: int) -> tuple[int, int]:
    X, _, planted = synthetic_embeddings(n, dim=dim, duplicate_fraction=0.02, seed=seed)
    np.save(path, X)
    np.save(path.replace(".npy", "_planted.npy"), planted)
    return int(planted.sum()), int(X.shape[0])


def _lof_full(path: str, out: str, k: int, contamination, sample: int, seed: int):
    """lof_flags on everything (approximate path); keep sampled neighbour lists for the recall."""
    X = np.load(path)
    import rare_objects.stages.outliers as outliers

    captured = {}
    real = outliers.approximate_knn

    def capture(X_, k_, ann=None):
        dist, ind = real(X_, k_, ann)
        if sample:
            rows = np.sort(np.random.default_rng(seed).choice(len(X_), sample, replace=False))
            captured["rows"], captured["ind"] = rows, ind[rows].copy()
        return dist, ind

    outliers.approximate_knn = capture
    t0 = time.perf_counter()
    scores, flags = outliers.lof_flags(X, n_neighbors=k, contamination=contamination, exact_max=0)
    seconds = time.perf_counter() - t0
    np.savez(out, scores=scores, flags=flags, **captured)
    return seconds


def _lof_subset(path: str, out: str, m: int, k: int, contamination, exact: bool):
    X = np.ascontiguousarray(np.load(path, mmap_mode="r")[:m])
    from rare_objects.stages.outliers import lof_flags

    t0 = time.perf_counter()
    scores, flags = lof_flags(
        X, n_neighbors=k, contamination=contamination, exact_max=m if exact else 0
    )
    seconds = time.perf_counter() - t0
    np.savez(out, scores=scores, flags=flags)
    return seconds


def _exact_neighbours(path: str, rows_path: str, k: int):
    import faiss

    X = np.load(path)
    rows = np.load(rows_path)
    _, found = faiss.knn(X[rows], X, k + 1)
    result = np.empty((len(rows), k), dtype=np.int64)
    for i, (r, f) in enumerate(zip(rows, found)):
        result[i] = f[f != r][:k]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--subset", type=int, default=100_000, help="rows of the exact baseline")
    parser.add_argument("--k", type=int, default=20, help="LOF n_neighbors")
    parser.add_argument("--contamination", default="0.05")
    parser.add_argument(
        "--recall-sample", type=int, default=2000, help="rows checked against brute force (0: skip)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default=None, help="where the generated matrix is kept (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    contamination = (
        args.contamination if args.contamination == "auto" else float(args.contamination)
    )
    subset = min(args.subset, args.n)

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data = os.path.join(tmp, "X.npy")
        (n_planted, n), gen_s, _ = run_isolated(_generate, data, args.n, args.dim, args.seed)
        print(
            f"data: {n:,} x {args.dim} float32, 200 clusters, {n_planted:,} planted outliers (generated in {gen_s:.0f} s)"
        )

        full = os.path.join(tmp, "full.npz")
        sample = min(args.recall_sample, n)
        _, full_s, full_rss = run_isolated(
            _lof_full, data, full, args.k, contamination, sample, args.seed
        )
        print(
            f"lof_flags approximate, n={n:,}: {full_s:.1f} s, peak RSS {full_rss / GIB:.2f} GiB"
            f" (targets: <= 300 s, <= 8 GiB)"
        )

        exact = os.path.join(tmp, "exact.npz")
        _, exact_s, exact_rss = run_isolated(
            _lof_subset, data, exact, subset, args.k, contamination, True
        )
        print(
            f"baseline exact scikit-learn LOF, n={subset:,}: {exact_s:.1f} s, peak RSS {exact_rss / GIB:.2f} GiB"
        )
        print(f"time ratio approximate n={n:,} / exact n={subset:,}: {full_s / exact_s:.2f}")

        approx = os.path.join(tmp, "approx.npz")
        _, approx_s, approx_rss = run_isolated(
            _lof_subset, data, approx, subset, args.k, contamination, False
        )
        a, e = np.load(approx), np.load(exact)
        print(
            f"approximate path forced on the n={subset:,} subset: {approx_s:.1f} s ({approx_s / exact_s:.2f}x exact),"
            f" peak RSS {approx_rss / GIB:.2f} GiB; Jaccard of outlier sets vs exact:"
            f" {jaccard(a['flags'], e['flags']):.4f} (target >= 0.95);"
            f" {int(a['flags'].sum()):,} vs {int(e['flags'].sum()):,} outliers"
        )

        f = np.load(full)
        planted = np.load(data.replace(".npy", "_planted.npy"))
        print(
            f"planted outliers flagged in the n={n:,} run: {int((f['flags'] & planted).sum()):,} of {int(planted.sum()):,};"
            f" {int(f['flags'].sum()):,} flagged in all"
        )
        if sample and "rows" in f.files:
            rows_path = os.path.join(tmp, "rows.npy")
            np.save(rows_path, f["rows"])
            truth, _, _ = run_isolated(_exact_neighbours, data, rows_path, args.k)
            found = f["ind"]
            recall = np.mean([len(set(a_) & set(b_)) / args.k for a_, b_ in zip(found, truth)])
            print(
                f"recall@{args.k} of the approximate neighbours, {sample:,} sampled rows of n={n:,}: {recall:.4f}"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
