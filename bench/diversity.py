"""Bench: the diversity filter on a million selected objects.

    .venv/bin/python bench/diversity.py                      # 1,000,000 x 512, baseline on 50,000
    .venv/bin/python bench/diversity.py --n 100000 --subset 10000   # quick

Synthetic clustered, L2-normalised float32 embeddings with 2 % near-copies
(one object seen in successive frames; bench/_common.py). Each measured part
runs in its own child process, so each peak-RSS figure is that part alone:

1. ``diversity_filter`` on all n rows (approximate neighbour graph, n > exact_max);
2. the baseline: the exact blocked path on the first ``--subset`` rows;
3. the approximate path forced on the same subset, for the agreement of its
   clusters (pairs of rows put together) and kept set with the exact ones.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, jaccard, machine, run_isolated, synthetic_embeddings  # noqa: E402


def _generate(path: str, n: int, dim: int, seed: int) -> int:
    X, _, _ = synthetic_embeddings(n, dim=dim, duplicate_fraction=0.02, seed=seed)
    np.save(path, X)
    return int(X.shape[0])


def _filter(path: str, out: str, m: int | None, threshold: float, cap: int, exact: bool):
    X = np.load(path, mmap_mode="r")
    X = np.ascontiguousarray(X if m is None else X[:m])
    from rare_objects.stages.diversity import diversity_filter

    # Priority as the workflow passes it: the LOF score; any fixed numbers do here.
    priority = np.random.default_rng(1).random(len(X)).astype(np.float32)
    exact_max = len(X) if exact else 0
    labels, keep, _ = diversity_filter(
        X, priority, threshold=threshold, max_per_cluster=cap, exact_max=exact_max
    )
    np.savez(out, labels=labels, keep=keep)


def _pair_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of same-cluster pairs of either labelling that the other also joins (pair Jaccard)."""
    from scipy.sparse import coo_matrix

    n = a.size
    table = coo_matrix((np.ones(n), (a, b))).tocsr()
    table.sum_duplicates()
    both = float((table.data * (table.data - 1) / 2).sum())
    in_a = float((np.bincount(a) * (np.bincount(a) - 1) / 2).sum())
    in_b = float((np.bincount(b) * (np.bincount(b) - 1) / 2).sum())
    union = in_a + in_b - both
    return 1.0 if union == 0 else both / union


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--subset", type=int, default=50_000, help="rows of the exact baseline")
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine similarity threshold")
    parser.add_argument("--cap", type=int, default=3, help="max_per_cluster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", default=None, help="where the generated matrix is kept (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    subset = min(args.subset, args.n)

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data = os.path.join(tmp, "X.npy")
        n, gen_s, _ = run_isolated(_generate, data, args.n, args.dim, args.seed)
        print(f"data: {n:,} x {args.dim} float32, 2% near-copies (generated in {gen_s:.0f} s)")
        print(f"threshold {args.threshold}, max_per_cluster {args.cap}")

        full = os.path.join(tmp, "full.npz")
        _, full_s, full_rss = run_isolated(
            _filter, data, full, None, args.threshold, args.cap, False
        )
        f = np.load(full)
        print(
            f"diversity_filter approximate, n={n:,}: {full_s:.1f} s, peak RSS {full_rss / GIB:.2f} GiB;"
            f" {int(f['labels'].max()) + 1:,} clusters, {int(f['keep'].sum()):,} kept"
        )

        exact = os.path.join(tmp, "exact.npz")
        _, exact_s, exact_rss = run_isolated(
            _filter, data, exact, subset, args.threshold, args.cap, True
        )
        print(
            f"baseline exact blocked path, n={subset:,}: {exact_s:.1f} s, peak RSS {exact_rss / GIB:.2f} GiB"
        )
        print(f"time ratio approximate n={n:,} / exact n={subset:,}: {full_s / exact_s:.2f}")

        approx = os.path.join(tmp, "approx.npz")
        _, approx_s, _ = run_isolated(
            _filter, data, approx, subset, args.threshold, args.cap, False
        )
        a, e = np.load(approx), np.load(exact)
        print(
            f"approximate path forced on the n={subset:,} subset: {approx_s:.1f} s ({approx_s / exact_s:.2f}x exact);"
            f" pair Jaccard of clusters vs exact {_pair_agreement(a['labels'], e['labels']):.4f};"
            f" Jaccard of kept sets {jaccard(a['keep'], e['keep']):.4f}"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
