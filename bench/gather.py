"""Bench: the gather stages that read every object's embedding, at 1 to 10 million objects.

    .venv/bin/python bench/gather.py                                  # 1M, 2M, 5M, 10M x 512
    .venv/bin/python bench/gather.py --sizes 200000 400000 --dim 128  # quick
    .venv/bin/python bench/gather.py --sizes 5000000 --stages selection    # stand-in flags

For each size, synthetic clustered embeddings (``iter_synthetic_embeddings`` of
bench/_common.py: object kinds of Zipf-like sizes, planted outliers, near-copies of
the preceding rows as in successive frames) are written as the embed stage writes
them (``embedder.storage``, float16 by default: at 10,000,000 x 512 the float32 matrix
alone is 20 GB) in shards of ``--shard-rows``, with detection shards whose classes are
skewed like a driving dataset's (the biggest class about a third of the objects).
Then, each in its own child process (so each peak RSS is that part alone):

1. the baseline: reading the whole embedding matrix as stored (what every gather
   stage held before it read in blocks);
2. the outliers stage as scripts/outliers.py runs it (``read_objects``,
   ``class_aware_outliers`` with the default configuration: LOF, global and per class;
   the table written);
3. the selection stage as scripts/select_objects.py runs it (the outliers table and the
   boxes; only the candidates' embeddings read, by id; the diversity filter). With
   ``--stages selection`` alone, the outliers table is a stand-in (the classes, and
   5.4 % of the objects flagged at random, the share the outliers stage flags on these
   rows), so that the selection can be measured at sizes where the outliers stage would
   take hours.

Printed: time and peak RSS per stage and size, the ratio to the baseline of the same
size, and the growth from the smallest size to each larger one.
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
from _common import GIB, iter_synthetic_embeddings, machine, run_isolated  # noqa: E402

# Detector classes a COCO YOLO gives on driving scenes, most frequent first; the targets
# of the default configuration (truck, bus, bicycle, ...) are among them.
CLASSES = ["car", "person", "truck", "traffic light", "bus", "bicycle", "motorcycle",
           "stop sign", "train", "boat"]  # fmt: skip


def _write(folder: str, n: int, dim: int, storage: str, shard_rows: int, seed: int) -> int:
    """Embedding and detection shards of ``n`` objects; returns the planted outliers."""
    import pandas as pd

    from rare_objects.io import schemas
    from rare_objects.stages.embedding import _embedding_table

    rng = np.random.default_rng(seed + 1)
    weights = 1.0 / np.arange(1, len(CLASSES) + 1) ** 1.2
    # each object kind (cluster) belongs to one class; planted outliers to any
    kind_class = rng.choice(len(CLASSES), size=10_000, p=weights / weights.sum())
    for kind in ("embeddings", "detections"):
        os.makedirs(os.path.join(folder, kind), exist_ok=True)
    planted_total, start = 0, 0
    chunks = iter_synthetic_embeddings(n, dim=dim, chunk=shard_rows, seed=seed)
    for s, (X, cluster, planted) in enumerate(chunks):
        stop = start + len(X)
        ids = [f"scene-{i // 240:05d}/{i:09d}" for i in range(start, stop)]
        table = _embedding_table([(ids, X, None)], dim, storage)
        schemas.write_embeddings(
            table, os.path.join(folder, "embeddings", f"{s:05d}.parquet"),
            model="synthetic", dim=dim, storage=storage,
        )  # fmt: skip
        classes = np.where(
            cluster >= 0,
            kind_class[cluster % len(kind_class)],
            rng.integers(0, len(CLASSES), len(X)),
        )
        m = len(X)
        pd.DataFrame(
            {
                "object_id": ids,
                "class_name": np.array(CLASSES, dtype=object)[classes],
                "image_id": [f"{i // 8:016x}" for i in range(start, stop)],
                "image_path": [f"/data/samples/{i // 8:09d}.jpg" for i in range(start, stop)],
                "confidence": rng.uniform(0.25, 1.0, m).astype(np.float32),
                "x1": np.zeros(m, np.float32),
                "y1": np.zeros(m, np.float32),
                "x2": np.full(m, 64.0, np.float32),
                "y2": np.full(m, 48.0, np.float32),
            }
        ).to_parquet(os.path.join(folder, "detections", f"{s:05d}.parquet"))
        planted_total += int(planted.sum())
        start = stop
    return planted_total


def _paths(folder: str, kind: str) -> list[str]:
    return sorted(str(p) for p in Path(folder, kind).glob("*.parquet"))


def _read_matrix(folder: str) -> tuple[int, str]:
    """The baseline: the whole matrix, as stored."""
    from rare_objects.io.embeddings import read_embedding_matrix, stored_dtype_of

    paths = _paths(folder, "embeddings")
    _, X = read_embedding_matrix(paths, dtype=stored_dtype_of(paths))
    return X.shape[0], str(X.dtype)


def _outliers(folder: str) -> dict:
    """scripts/outliers.py with the default configuration."""
    from rare_objects.io import schemas
    from rare_objects.runtime.config import defaults
    from rare_objects.stages.outliers import class_aware_outliers, read_objects

    config = defaults()
    settings = {**config["outliers"], "device": "cpu"}
    t0 = time.perf_counter()
    object_ids, X, class_names = read_objects(
        _paths(folder, "embeddings"), _paths(folder, "detections")
    )
    read = time.perf_counter() - t0
    result = class_aware_outliers(X, class_names, settings, seed=config["seed"])
    result.insert(0, "object_id", object_ids)
    schemas.write_table(
        result,
        schemas.outliers_schema(settings["detectors"]),
        os.path.join(folder, "outliers.parquet"),
    )
    counts = dict(zip(*np.unique(class_names.astype(str), return_counts=True)))
    return {
        "read_s": read,
        "outliers": int(result["is_outlier"].sum()),
        "largest_class": int(max(counts.values())),
        "classes": len(counts),
    }


# The share of objects that the outliers stage flagged on these rows at 1,000,000 (53,983
# with the default LOF, global and per class): the stand-in flags' share.
STAND_IN_OUTLIER_SHARE = 0.054


def _stand_in_flags(folder: str, seed: int) -> int:
    """An outliers table for the selection stage where the outliers stage is not run
    (``--stages selection`` alone: at 5 and 10 million the outliers stage takes hours on
    2 cores): each object's class from its detection, STAND_IN_OUTLIER_SHARE of them
    flagged at random (seeded), ``score_global`` higher for the flagged. The selection's
    work depends on its candidates (targets and outliers), not on which objects are
    flagged. Returns the objects flagged."""
    from rare_objects.io import schemas

    detections = schemas.read_parts(_paths(folder, "detections"), ["object_id", "class_name"])
    rng = np.random.default_rng(seed + 2)
    flagged = rng.random(len(detections)) < STAND_IN_OUTLIER_SHARE
    detections["is_outlier"] = flagged
    detections["score_global"] = (rng.normal(1.0, 0.05, len(flagged)) + flagged).astype(np.float32)
    detections.to_parquet(os.path.join(folder, "outliers.parquet"))
    return int(flagged.sum())


def _selection(folder: str) -> dict:
    """scripts/select_objects.py with the default configuration."""
    import pandas as pd

    from rare_objects.io import schemas
    from rare_objects.io.embeddings import read_embeddings_of
    from rare_objects.runtime.config import defaults
    from rare_objects.stages.selection import select_objects

    config = defaults()
    embeddings = _paths(folder, "embeddings")
    columns = ["object_id", "image_id", "image_path", "confidence", "x1", "y1", "x2", "y2"]
    boxes = schemas.read_parts(_paths(folder, "detections"), columns)
    flags = pd.read_parquet(
        os.path.join(folder, "outliers.parquet"),
        columns=["object_id", "class_name", "is_outlier", "score_global"],
    )
    table = select_objects(
        flags.merge(boxes, on="object_id", how="left"),
        lambda object_ids: read_embeddings_of(embeddings, object_ids),
        config["targets"],
        include=config["selection"]["include"],
        vlm_for=config["captions"]["vlm_for"],
        similarity_threshold=config["selection"]["similarity_threshold"],
        max_per_cluster=config["selection"]["max_per_cluster"],
        partitions=config["captions"]["partitions"],
        seed=config["seed"],
        exact_max=config["outliers"]["exact_max_samples"],
    )
    return {"candidates": int(table["candidate"].sum()), "selected": int(table["selected"].sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 2_000_000, 5_000_000, 10_000_000]
    )
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--storage", choices=["float16", "float32"], default="float16")
    parser.add_argument("--shard-rows", type=int, default=200_000)
    parser.add_argument(
        "--stages", nargs="+", default=["outliers", "selection"], choices=["outliers", "selection"]
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="where the shards go (default: a temporary folder)")
    args = parser.parse_args(argv)

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    first: dict[str, tuple[float, float]] = {}
    for n in sorted(args.sizes):
        folder = tempfile.mkdtemp(prefix=f"gather-{n}-", dir=args.workdir)
        try:
            t0 = time.perf_counter()
            planted = _write(folder, n, args.dim, args.storage, args.shard_rows, args.seed)
            print(
                f"\n{n:,} x {args.dim} {args.storage} in {len(_paths(folder, 'embeddings'))} shards,"
                f" {planted:,} planted outliers (written in {time.perf_counter() - t0:.0f} s)"
            )
            (rows, dtype), base_s, base_rss = run_isolated(_read_matrix, folder)
            print(
                f"  baseline read of the whole matrix ({rows:,} rows, {dtype}): {base_s:.1f} s, peak RSS {base_rss / GIB:.2f} GiB"
            )
            if "selection" in args.stages and "outliers" not in args.stages:
                flagged = _stand_in_flags(folder, args.seed)
                print(
                    f"  (outliers stage not run: stand-in flags, {flagged:,} objects flagged at"
                    " random, for the selection stage)"
                )
            for stage in args.stages:
                info, seconds, rss = run_isolated(
                    {"outliers": _outliers, "selection": _selection}[stage], folder
                )
                growth = ""
                if stage in first:
                    s0, r0, n0 = first[stage]
                    growth = (
                        f"; x{n / n0:.0f} rows: time x{seconds / s0:.2f}, memory x{rss / r0:.2f}"
                    )
                else:
                    first[stage] = (seconds, rss, n)
                print(
                    f"  {stage}: {seconds:.1f} s ({seconds / base_s:.1f}x the read), peak RSS {rss / GIB:.2f} GiB"
                    f" ({rss / base_rss:.2f}x the read){growth}; {info}"
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
