"""Bench: each outlier detector on all rows and per class, above the exact threshold, against exact scikit-learn LOF.

    .venv/bin/python bench/outliers.py                 # 1,000,000 x 512, baseline on 100,000
    .venv/bin/python bench/outliers.py --n 200000 --subset 20000 --dim 128 --exact-max 20000   # quick

Synthetic clustered, L2-normalised float32 embeddings with planted outliers
(bench/_common.py); each row's class is its cluster folded into ``--classes``
classes (so the big classes are above ``--exact-max`` rows too, the small ones
below). Every measured part runs in its own child process, so each peak-RSS
figure is that part alone (interpreter + its data + the call):

1. the baseline: exact scikit-learn ``LocalOutlierFactor`` on the first
   ``--subset`` rows (global only);
2. each detector of ``--detectors`` as the outliers stage runs it
   (:func:`rare_objects.stages.outliers.class_aware_outliers`: all n rows,
   then every class with at least ``min_samples`` rows), with
   ``exact_max_samples = --exact-max``: time and its ratio to the baseline,
   peak RSS, outliers flagged, planted outliers caught;
3. for the neighbour-based detectors (lof, knn_distance), the approximate
   path forced on the subset, for the Jaccard index of its outlier set
   against the exact one.

Optionally (``--recall-sample``) the recall@k of the approximate neighbours of
the full LOF run, on sampled rows, against exact brute force.
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

NEIGHBOUR_BASED = ("lof", "knn_distance")


def _generate(path: str, n: int, dim: int, classes: int, seed: int) -> tuple[int, int]:
    X, cluster, planted = synthetic_embeddings(n, dim=dim, duplicate_fraction=0.02, seed=seed)
    np.save(path, X)
    # Planted outliers (cluster -1) fall into the classes like everyone else.
    names = np.array([f"class{c:02d}" for c in range(classes)], dtype=object)
    np.save(path.replace(".npy", "_classes.npy"), names[np.abs(cluster) % classes])
    np.save(path.replace(".npy", "_planted.npy"), planted)
    return int(planted.sum()), int(X.shape[0])


def _config(detectors, exact_max: int, k: int, contamination) -> dict:
    from rare_objects.runtime.config import defaults

    return {
        **defaults()["outliers"],
        "detectors": list(detectors),
        "exact_max_samples": exact_max,
        "n_neighbors": k,
        "contamination": contamination,
    }


def _stage(path: str, out: str, detector: str, exact_max, k, contamination, sample, seed):
    """The outliers stage with one detector on all rows and per class."""
    X = np.load(path)
    names = np.load(path.replace(".npy", "_classes.npy"), allow_pickle=True)
    from rare_objects.backends.outlier_detectors import lof
    from rare_objects.stages.outliers import class_aware_outliers

    captured = {}
    real = lof.approximate_knn

    def capture(X_, k_, ann=None, rows_=None):
        dist, ind = real(X_, k_, ann, rows_)
        if sample and "rows" not in captured and rows_ is None:  # the global run
            rows = np.sort(np.random.default_rng(seed).choice(len(X_), sample, replace=False))
            captured["rows"], captured["ind"] = rows, ind[rows].copy()
        return dist, ind

    lof.approximate_knn = capture
    t0 = time.perf_counter()
    frame = class_aware_outliers(X, names, _config([detector], exact_max, k, contamination), seed)
    seconds = time.perf_counter() - t0
    np.savez(
        out,
        flags=frame["is_outlier"].to_numpy(),
        global_flags=frame["global_outlier"].to_numpy(),
        **captured,
    )
    return seconds


def _global_subset(path: str, out: str, m: int, detector: str, k, contamination, exact: bool):
    """One detector on the first m rows, exact or with the approximate search forced."""
    X = np.ascontiguousarray(np.load(path, mmap_mode="r")[:m])
    from rare_objects.backends import outlier_detectors

    config = _config([detector], m if exact else 0, k, contamination)
    settings = outlier_detectors.settings_for(detector, config)
    t0 = time.perf_counter()
    found = outlier_detectors.detect(detector, X, settings, seed=0)
    seconds = time.perf_counter() - t0
    np.savez(out, flags=found.is_outlier)
    return seconds


def _sklearn_lof(path: str, out: str, m: int, k: int, contamination):
    X = np.ascontiguousarray(np.load(path, mmap_mode="r")[:m])
    from sklearn.neighbors import LocalOutlierFactor

    t0 = time.perf_counter()
    labels = LocalOutlierFactor(n_neighbors=k, contamination=contamination).fit_predict(X)
    seconds = time.perf_counter() - t0
    np.savez(out, flags=labels == -1)
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
    parser.add_argument("--classes", type=int, default=10, help="classes the clusters fold into")
    parser.add_argument(
        "--exact-max", type=int, default=50_000, help="outliers.exact_max_samples of the stage runs"
    )
    parser.add_argument(
        "--detectors", default="lof,isolation_forest,knn_distance", help="comma-separated"
    )
    parser.add_argument("--k", type=int, default=20, help="n_neighbors")
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
    detectors = [d for d in args.detectors.split(",") if d]

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        data = os.path.join(tmp, "X.npy")
        (n_planted, n), gen_s, _ = run_isolated(
            _generate, data, args.n, args.dim, args.classes, args.seed
        )
        planted = np.load(data.replace(".npy", "_planted.npy"))
        names = np.load(data.replace(".npy", "_classes.npy"), allow_pickle=True)
        _, sizes = np.unique(names, return_counts=True)
        print(
            f"data: {n:,} x {args.dim} float32, 200 clusters in {len(sizes)} classes"
            f" ({sizes.max():,} to {sizes.min():,} rows; {int((sizes > args.exact_max).sum())} above"
            f" exact_max {args.exact_max:,}), {n_planted:,} planted outliers (generated in {gen_s:.0f} s)"
        )

        baseline = os.path.join(tmp, "baseline.npz")
        _, base_s, base_rss = run_isolated(
            _sklearn_lof, data, baseline, subset, args.k, contamination
        )
        print(
            f"baseline exact scikit-learn LOF (global), n={subset:,}: {base_s:.1f} s,"
            f" peak RSS {base_rss / GIB:.2f} GiB"
        )

        sample = min(args.recall_sample, n)
        for detector in detectors:
            out = os.path.join(tmp, f"{detector}.npz")
            _, stage_s, stage_rss = run_isolated(
                _stage,
                data,
                out,
                detector,
                args.exact_max,
                args.k,
                contamination,
                sample if detector == "lof" else 0,
                args.seed,
            )
            f = np.load(out)
            print(
                f"{detector}, global + per class, n={n:,}: {stage_s:.1f} s"
                f" ({stage_s / base_s:.2f}x baseline), peak RSS {stage_rss / GIB:.2f} GiB;"
                f" {int(f['flags'].sum()):,} outliers ({int(f['global_flags'].sum()):,} global),"
                f" planted caught {int((f['flags'] & planted).sum()):,} of {int(planted.sum()):,}"
            )
            if detector in NEIGHBOUR_BASED:
                exact, approx = (os.path.join(tmp, f"{detector}_{p}.npz") for p in ("e", "a"))
                _, exact_s, _ = run_isolated(
                    _global_subset, data, exact, subset, detector, args.k, contamination, True
                )
                _, approx_s, _ = run_isolated(
                    _global_subset, data, approx, subset, detector, args.k, contamination, False
                )
                a, e = np.load(approx)["flags"], np.load(exact)["flags"]
                print(
                    f"  {detector} global on the n={subset:,} subset: exact {exact_s:.1f} s"
                    f" ({exact_s / base_s:.2f}x baseline), approximate forced {approx_s:.1f} s"
                    f" ({approx_s / base_s:.2f}x); Jaccard of outlier sets approximate vs exact:"
                    f" {jaccard(a, e):.4f}; {int(a.sum()):,} vs {int(e.sum()):,} outliers"
                )
            if detector == "lof" and sample and "rows" in f.files:
                rows_path = os.path.join(tmp, "rows.npy")
                np.save(rows_path, f["rows"])
                truth, _, _ = run_isolated(_exact_neighbours, data, rows_path, args.k)
                recall = np.mean(
                    [len(set(a_) & set(b_)) / args.k for a_, b_ in zip(f["ind"], truth)]
                )
                print(
                    f"  recall@{args.k} of the approximate neighbours, {sample:,} sampled rows"
                    f" of n={n:,}: {recall:.4f}"
                )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
