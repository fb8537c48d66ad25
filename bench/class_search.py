"""Bench: the outliers stage with the class neighbours taken from the global search against a search per class.

    .venv/bin/python bench/class_search.py                                 # 300,000 x 512, 2 seeds
    .venv/bin/python bench/class_search.py --rows 1000000 --seeds 0 --subset 0
    .venv/bin/python bench/class_search.py --rows 60000 --subset 20000 --subset-exact-max 5000   # quick

``outliers.class_search`` decides how LOF (and knn_distance) find the neighbours within
a class above ``exact_max_samples`` objects: ``per_class``, a search of its own for each
class (the baseline, what the stage did before), or ``from_global``, derived from the
candidates of the search over all objects (:mod:`rare_objects.neighbors.groups`).

For each seed, the shards of bench/gather.py (clustered float16 embeddings with the
near-copies of successive frames, detector classes skewed as on driving scenes), then,
each part in its own child process (its peak RSS its own):

1. the outliers stage as scripts/outliers.py runs it (``read_objects``,
   ``class_aware_outliers``, default configuration: LOF on all rows and per class) once
   per mode: time, peak RSS, outliers; the Jaccard index of the two modes' outlier sets;
2. on the first ``--subset`` rows: the exact stage (every scope within
   ``exact_max_samples``: scikit-learn's LOF itself) and each mode with
   ``exact_max_samples = --subset-exact-max`` (so the big classes take the approximate
   path): the Jaccard index of each mode's outlier set (and class flags) against the exact
   one, the stage's accuracy target (>= 0.97).

Printed per seed, then the mean and the worst over the seeds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, jaccard, machine, run_isolated  # noqa: E402
from gather import _paths, _write  # noqa: E402

MODES = ("per_class", "from_global")


def _stage(folder: str, mode: str, rows: int | None, exact_max: int | None, out: str) -> dict:
    """read_objects + class_aware_outliers with ``class_search = mode`` (on the first
    ``rows`` rows when given, with ``exact_max_samples`` when given); flags saved to ``out``."""
    from rare_objects.runtime.config import defaults
    from rare_objects.stages.outliers import class_aware_outliers, read_objects

    config = defaults()
    settings = {**config["outliers"], "device": "cpu", "class_search": mode}
    if exact_max is not None:
        settings["exact_max_samples"] = exact_max
    _, X, class_names = read_objects(_paths(folder, "embeddings"), _paths(folder, "detections"))
    if rows is not None:
        X, class_names = X[:rows], class_names[:rows]
    t0 = time.perf_counter()
    frame = class_aware_outliers(X, class_names, settings, seed=config["seed"])
    seconds = time.perf_counter() - t0
    np.savez(
        out,
        is_outlier=frame["is_outlier"].to_numpy(),
        global_outlier=frame["global_outlier"].to_numpy(),
        class_outlier=frame["class_outlier"].to_numpy(),
    )
    counts = np.unique(class_names.astype(str), return_counts=True)[1]
    above = int((counts > settings["exact_max_samples"]).sum())
    return {"search_s": round(seconds, 1), "outliers": int(frame["is_outlier"].sum()),
            "classes_above_exact_max": above}  # fmt: skip


def _flags(path: str) -> dict:
    with np.load(path) as saved:
        return {key: saved[key] for key in saved.files}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--subset", type=int, default=100_000, help="0: no comparison with exact LOF"
    )
    parser.add_argument("--subset-exact-max", type=int, default=10_000)
    parser.add_argument("--shard-rows", type=int, default=200_000)
    parser.add_argument("--workdir", help="where the shards go (default: a temporary folder)")
    args = parser.parse_args(argv)

    print(f"{machine()}; load average at start {os.getloadavg()[0]:.1f}")
    summary: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        summary.setdefault(key, []).append(value)

    for seed in args.seeds:
        folder = tempfile.mkdtemp(prefix=f"class-search-{seed}-", dir=args.workdir)
        try:
            planted = _write(folder, args.rows, args.dim, "float16", args.shard_rows, seed)
            print(
                f"\nseed {seed}: {args.rows:,} x {args.dim} float16, {planted:,} planted outliers"
            )
            flags, times = {}, {}
            for mode in MODES:
                out = os.path.join(folder, f"{mode}.npz")
                info, seconds, rss = run_isolated(_stage, folder, mode, None, None, out)
                flags[mode], times[mode] = _flags(out), seconds
                ratio = seconds / times[MODES[0]]
                print(
                    f"  {mode}: {seconds:.1f} s ({ratio:.2f}x per_class), peak RSS {rss / GIB:.2f} GiB; {info}"
                )
                record(f"{mode} time ratio", ratio)
            same = jaccard(flags["per_class"]["is_outlier"], flags["from_global"]["is_outlier"])
            same_class = jaccard(
                flags["per_class"]["class_outlier"], flags["from_global"]["class_outlier"]
            )
            print(
                f"  Jaccard from_global vs per_class: is_outlier {same:.4f}, class_outlier {same_class:.4f}"
            )
            record("Jaccard of the modes, is_outlier", same)
            if not args.subset:
                continue
            m = min(args.subset, args.rows)
            exact_out = os.path.join(folder, "exact.npz")
            _, seconds, _ = run_isolated(_stage, folder, "per_class", m, m, exact_out)
            exact = _flags(exact_out)
            print(f"  first {m:,} rows, exact LOF in every scope: {seconds:.1f} s")
            for mode in MODES:
                out = os.path.join(folder, f"{mode}-subset.npz")
                _, seconds, _ = run_isolated(_stage, folder, mode, m, args.subset_exact_max, out)
                found = _flags(out)
                j = {key: jaccard(found[key], exact[key]) for key in exact}
                print(
                    f"  {mode} (exact_max_samples {args.subset_exact_max:,}): {seconds:.1f} s;"
                    f" Jaccard against exact: is_outlier {j['is_outlier']:.4f},"
                    f" global {j['global_outlier']:.4f}, class {j['class_outlier']:.4f}"
                )
                for key, value in j.items():
                    record(f"{mode} Jaccard vs exact, {key}", value)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nover seeds {args.seeds}:")
    for key, values in summary.items():
        worst = max(values) if "time" in key else min(values)
        print(f"  {key}: mean {np.mean(values):.4f}, worst {worst:.4f}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
