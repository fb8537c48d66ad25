"""Bench: embeddings stored in float16 (``embedder.storage: float16``) against float32.

    .venv/bin/python bench/storage.py                          # 200,000 x 512, seeds 0 1 2
    .venv/bin/python bench/storage.py --rows 1000000 --seeds 0
    .venv/bin/python bench/storage.py --rows 1000000 --seeds 0 --no-outliers   # sizes, reads
    .venv/bin/python bench/storage.py --quick                  # 20,000 rows, one seed

For each seed of the synthetic data (bench/_common.py: clustered, L2-normalised
embeddings with planted outliers and 2 % near-duplicates; each row's class is
its cluster folded into ``--classes`` classes) the embeddings are written as
the embed stage writes them (``_embedding_table``, ``schemas.write_embeddings``, in
shards of ``--shard-rows``), once per storage, with detection shards holding
each object's class. Every measured part runs in its own child process, so
each peak-RSS figure is that part alone (interpreter, imports, its data):

1. the shards' size on disk, float32 and float16;
2. reading the whole matrix (``read_embedding_matrix``): float32 shards as
   float32 (the baseline: the gather stages today), float16 shards as float32,
   float16 shards as float16 (``dtype=np.float16``), and the blocked reader
   (``iter_embedding_blocks``) over the float16 shards: time, peak RSS, ratios
   to the baseline;
3. the outliers stage with the default configuration (LOF, on all rows and per
   class, ``read_objects`` + ``class_aware_outliers`` as scripts/outliers.py
   runs them) on the float32 and on the float16 shards: the Jaccard index of
   the outlier sets (global, per class, combined), the target being >= 0.99;
4. exact scikit-learn LOF (global) on the first ``--exact-rows`` rows of both,
   to tell the rounding's own effect from the approximate search's;
5. with ``--ann-seed-check``, the stage once more on the float32 shards with the
   workflow's seed + 1 (the approximate search's PCA sample and k-means): the
   Jaccard index of two float32 runs, the scale the float16 figure compares with.

Mean and worst over the seeds at the end.
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

STORAGES = ("float32", "float16")


def _write(folder: str, n: int, dim: int, classes: int, shard_rows: int, seed: int) -> int:
    """Both storages' embedding shards and the detection shards (object_id, class_name)."""
    import pandas as pd

    from rare_objects.io import schemas
    from rare_objects.stages.embedding import _embedding_table

    X, cluster, _ = synthetic_embeddings(n, dim=dim, duplicate_fraction=0.02, seed=seed)
    names = np.array([f"class{c:02d}" for c in range(classes)], dtype=object)
    class_names = names[np.abs(cluster) % classes]
    for storage in (*STORAGES, "detections"):
        os.makedirs(os.path.join(folder, storage), exist_ok=True)
    for s, start in enumerate(range(0, n, shard_rows)):
        stop = min(start + shard_rows, n)
        ids = [f"{seed}-{i:08d}" for i in range(start, stop)]
        for storage in STORAGES:
            table = _embedding_table([(ids, X[start:stop], None)], dim, storage)
            path = os.path.join(folder, storage, f"{s:04d}.parquet")
            schemas.write_embeddings(table, path, model="synthetic", dim=dim, storage=storage)
        pd.DataFrame({"object_id": ids, "class_name": class_names[start:stop]}).to_parquet(
            os.path.join(folder, "detections", f"{s:04d}.parquet")
        )
    return int((cluster < 0).sum())


def _paths(folder: str, kind: str) -> list[str]:
    return sorted(str(p) for p in Path(folder, kind).glob("*.parquet"))


def _read_whole(folder: str, storage: str, dtype: str) -> tuple[int, int]:
    from rare_objects.io.embeddings import read_embedding_matrix

    _, X = read_embedding_matrix(_paths(folder, storage), dtype=dtype)
    return X.shape[0], X.nbytes


def _read_blocked(folder: str, storage: str, dtype: str, block_rows: int) -> tuple[int, int]:
    from rare_objects.io.embeddings import iter_embedding_blocks

    rows, largest = 0, 0
    for _, X in iter_embedding_blocks(_paths(folder, storage), block_rows=block_rows, dtype=dtype):
        rows += len(X)
        largest = max(largest, X.nbytes)
    return rows, largest


def _stage(folder: str, storage: str, out: str, seed_offset: int = 0) -> float:
    """The outliers stage with the default configuration, as scripts/outliers.py runs it
    (``seed_offset``: another seed for the approximate search, for its own variation)."""
    from rare_objects.runtime.config import defaults
    from rare_objects.stages.outliers import class_aware_outliers, read_objects

    config = defaults()
    _, X, class_names = read_objects(_paths(folder, storage), _paths(folder, "detections"))
    seed = config["seed"] + seed_offset
    t0 = time.perf_counter()
    frame = class_aware_outliers(X, class_names, config["outliers"], seed=seed)
    seconds = time.perf_counter() - t0
    np.savez(
        out,
        global_outlier=frame["global_outlier"].to_numpy(),
        class_outlier=frame["class_outlier"].to_numpy(),
        is_outlier=frame["is_outlier"].to_numpy(),
    )
    return seconds


def _exact_lof(folder: str, storage: str, rows: int) -> np.ndarray:
    from rare_objects.backends import outlier_detectors
    from rare_objects.io.embeddings import iter_embedding_blocks
    from rare_objects.runtime.config import defaults

    blocks, got = [], 0
    for _, X in iter_embedding_blocks(_paths(folder, storage)):
        blocks.append(X[: rows - got])
        got += len(blocks[-1])
        if got >= rows:
            break
    X = np.concatenate(blocks)
    config = defaults()
    settings = outlier_detectors.settings_for(
        "lof", {**config["outliers"], "exact_max_samples": len(X)}
    )
    return outlier_detectors.detect("lof", X, settings, config["seed"]).is_outlier


def _size(folder: str, kind: str) -> int:
    return sum(os.path.getsize(p) for p in _paths(folder, kind))


def _one_seed(args, seed: int, workdir: str | None) -> dict:
    figures: dict = {}
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        n_planted, gen_s, _ = run_isolated(
            _write, folder, args.rows, args.dim, args.classes, args.shard_rows, seed
        )
        shards = len(_paths(folder, "float32"))
        print(
            f"seed {seed}: {args.rows:,} x {args.dim}, {n_planted:,} planted outliers,"
            f" {shards} shards of up to {args.shard_rows:,} rows, written both ways"
            f" in {gen_s:.0f} s"
        )
        f32, f16 = _size(folder, "float32"), _size(folder, "float16")
        figures["size32"], figures["size16"] = f32, f16
        print(
            f"  files: float32 {f32 / GIB:.3f} GiB, float16 {f16 / GIB:.3f} GiB"
            f" ({f16 / f32:.2f} of float32)"
        )

        reads = [
            ("float32 shards -> float32 matrix (baseline)", _read_whole, ("float32", "float32")),
            ("float16 shards -> float32 matrix", _read_whole, ("float16", "float32")),
            ("float16 shards -> float16 matrix", _read_whole, ("float16", "float16")),
            ("float32 shards -> float16 matrix", _read_whole, ("float32", "float16")),
            (
                f"float16 shards, blocked ({args.block_rows:,} rows, float32)",
                _read_blocked,
                ("float16", "float32", args.block_rows),
            ),
        ]
        base_s = base_rss = None
        for label, func, extra in reads:
            (rows, nbytes), seconds, rss = run_isolated(func, folder, *extra)
            if base_s is None:
                base_s, base_rss = seconds, rss
            held = "largest block" if func is _read_blocked else "matrix"
            print(
                f"  read {label}: {seconds:.2f} s ({seconds / base_s:.2f}x),"
                f" peak RSS {rss / GIB:.2f} GiB ({rss / base_rss:.2f}x),"
                f" {held} {nbytes / GIB:.3f} GiB, {rows:,} rows"
            )
            figures[f"read {label}"] = (seconds, rss)

        if args.no_outliers:
            return figures
        flags = {}
        for storage in STORAGES:
            out = os.path.join(folder, f"flags_{storage}.npz")
            stage_s, _, rss = run_isolated(_stage, folder, storage, out)
            flags[storage] = np.load(out)
            print(
                f"  outliers stage (default LOF, global + per class) on {storage} shards:"
                f" {stage_s:.0f} s, peak RSS {rss / GIB:.2f} GiB,"
                f" {int(flags[storage]['is_outlier'].sum()):,} outliers"
            )
        for column in ("global_outlier", "class_outlier", "is_outlier"):
            value = jaccard(flags["float32"][column], flags["float16"][column])
            figures[f"jaccard {column}"] = value
            print(f"  Jaccard float16 vs float32, {column}: {value:.4f}")
        if args.ann_seed_check:
            out = os.path.join(folder, "flags_float32_seed.npz")
            stage_s, _, _ = run_isolated(_stage, folder, "float32", out, 1)
            other = np.load(out)
            print(f"  outliers stage on float32 shards with seed + 1: {stage_s:.0f} s")
            for column in ("global_outlier", "class_outlier", "is_outlier"):
                value = jaccard(flags["float32"][column], other[column])
                figures[f"jaccard float32 seed vs seed + 1, {column}"] = value
                print(
                    f"  Jaccard float32 seed vs seed + 1 (the search's own), {column}: {value:.4f}"
                )

        exact_rows = min(args.exact_rows, args.rows)
        if exact_rows:
            exact = {s: run_isolated(_exact_lof, folder, s, exact_rows)[0] for s in STORAGES}
            value = jaccard(exact["float32"], exact["float16"])
            figures["jaccard exact"] = value
            print(
                f"  Jaccard float16 vs float32, exact scikit-learn LOF on the first"
                f" {exact_rows:,} rows (global): {value:.4f}"
            )
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--classes", type=int, default=10, help="classes the clusters fold into")
    parser.add_argument("--shard-rows", type=int, default=50_000)
    parser.add_argument("--block-rows", type=int, default=65_536)
    parser.add_argument(
        "--exact-rows", type=int, default=20_000, help="rows of the exact LOF check (0: skip)"
    )
    parser.add_argument(
        "--no-outliers", action="store_true", help="sizes and reads only (no LOF, no Jaccard)"
    )
    parser.add_argument(
        "--ann-seed-check",
        action="store_true",
        help="the stage once more on float32 with the seed + 1: the approximate search's own"
        " variation, for scale",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 rows, seed 0")
    parser.add_argument("--workdir", default=None, help="where the shards are written")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seeds, args.exact_rows = 20_000, [0], 5_000

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    runs = [_one_seed(args, seed, args.workdir) for seed in args.seeds]
    print(f"over {len(runs)} seed(s) ({time.perf_counter() - t0:.0f} s in all):")
    for key in runs[0]:
        if key.startswith("jaccard") and len(runs) > 1:
            values = [run[key] for run in runs]
            print(f"  {key}: mean {np.mean(values):.4f}, worst {min(values):.4f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
