"""Bench: memory and time of the export gather, streaming against in-memory.

    .venv/bin/python bench/export.py                     # 1,000,000 objects in 139 shards
    .venv/bin/python bench/export.py --n 100000          # quick
    .venv/bin/python bench/export.py --n 1000000 10000000 --in-memory-up-to 1000000

Synthetic gathered tables shaped like a full nuScenes run (bench/_common.py
style: generated, no pixels): detection shards of 240 images with about 30
objects each, an outlier table for every object (5 % outliers), a selection
table for every object and captions and concepts for 2,000 selected ones.
Per-object files are off, as in a full run; the original images are linked
(``link_mode: symlink``, to paths that need not exist). Each part runs in its
own child process, so each peak-RSS figure is that part alone:

1. the baseline: the in-memory export (every shard concatenated into one shard
   beforehand, then assembled and written as one frame: what export_results did
   before it streamed);
2. :func:`rare_objects.export.export_shards`, one shard at a time.

Both must write byte-identical detection_results.json and target files. With several
sizes, each is generated and exported in turn, and the growth of the streaming export
from the smallest size is printed; ``--in-memory-up-to`` skips the in-memory baseline
above that size (at 10,000,000 objects it would need 17 to 25 GB), so that the growth
line is then the comparison.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, machine, run_isolated  # noqa: E402

TARGETS = {
    "trailer": ["truck"],
    "construction_vehicle": ["truck", "bus"],
    "bicycle": ["bicycle", "motorcycle"],
}
CLASSES = ["car", "truck", "bus", "person", "bicycle", "motorcycle", "traffic light", "stop sign"]
# The tree's settings: no per-object files, as in a full run; originals linked.
TREE = {
    "save_crops": False,
    "save_descriptions": False,
    "save_probability_plots": False,
    "keep_cropped_objects": False,
    "link_mode": "symlink",
    "max_inliers": 200,
    "seed": 0,
}
IMAGES_PER_SHARD = 240


def _generate(root: str, n: int, seed: int) -> int:
    import pandas as pd
    import pyarrow as pa

    from rare_objects.demo.synthetic_nuscenes import CAMERAS
    from rare_objects.io import schemas

    rng = np.random.default_rng(seed)
    root = Path(root)
    per_image = rng.integers(0, 61, size=n // 30 + 1)
    per_image[np.cumsum(per_image) > n] = 0
    n = int(per_image.sum())
    image_of = np.repeat(np.arange(len(per_image)), per_image)
    rank = np.concatenate([np.arange(k) for k in per_image]).astype(np.int16)
    image_id = np.char.add("img", np.char.zfill(image_of.astype(str), 9))
    cameras = np.array(CAMERAS)
    camera = cameras[image_of % 6]
    folder = np.char.add("/data/nuscenes/samples/", camera)
    image_path = np.char.add(folder, np.char.add("/n015-2018__", np.char.add(image_id, ".jpg")))
    object_id = np.char.add(np.char.add(image_id, "-"), np.char.zfill(rank.astype(str), 2))
    x1 = rng.uniform(0, 1400, n).astype(np.float32)
    y1 = rng.uniform(0, 700, n).astype(np.float32)
    frame = pd.DataFrame(
        {
            "object_id": object_id,
            "image_id": image_id,
            "shard": (image_of // IMAGES_PER_SHARD).astype(str),
            "image_path": image_path,
            "sample_token": np.char.add("token", (image_of // 6).astype(str)),
            "camera": camera,
            "rank": rank,
            "class_id": rng.integers(0, len(CLASSES), n).astype(np.int16),
            "confidence": rng.uniform(0.25, 1, n).astype(np.float32),
            "x1": x1,
            "y1": y1,
            "x2": x1 + 120,
            "y2": y1 + 90,
            "image_width": 1600,
            "image_height": 900,
            "crop_width": 120,
            "crop_height": 90,
        }
    )
    frame["class_name"] = np.array(CLASSES)[frame["class_id"]]
    shards = 0
    for shard, rows in frame.groupby((image_of // IMAGES_PER_SHARD), sort=True):
        table = pa.Table.from_pandas(rows, preserve_index=False)
        schemas.write_table(table, schemas.DETECTIONS, root / "detections" / f"{shard:06d}.parquet")
        shards += 1
    codes = rng.choice([0, 1, 2, 3], size=n, p=[0.95, 0.02, 0.02, 0.01]).astype(np.int8)
    pd.DataFrame(
        {
            "object_id": object_id,
            "class_name": frame["class_name"],
            "global_score": rng.normal(-1.2, 0.2, n).astype(np.float32),
            "class_score": rng.normal(-1.2, 0.2, n).astype(np.float32),
            "global_outlier": codes & 1 > 0,
            "class_outlier": codes & 2 > 0,
            "outlier_code": codes,
            "is_outlier": codes > 0,
        }
    ).assign(  # the detectors' scores (higher = more anomalous): LOF's, negated
        score_global=lambda f: -f["global_score"], score_class=lambda f: -f["class_score"]
    ).to_parquet(root / "outliers.parquet")
    picked = rng.choice(
        np.flatnonzero(codes > 0), size=min(2000, int((codes > 0).sum())), replace=False
    )
    selected = np.zeros(n, dtype=bool)
    selected[picked] = True
    pd.DataFrame(
        {
            "object_id": object_id,
            "selected": selected,
            "reason": np.where(selected, "outlier", "not a candidate"),
        }
    ).to_parquet(root / "selection.parquet")
    ids = object_id[picked]
    pd.DataFrame(
        {
            "object_id": ids,
            "description": [f"an unusual vehicle, number {i}" for i in range(len(ids))],
            "error": None,
        }
    ).to_parquet(root / "captions.parquet")
    pd.DataFrame(
        {
            "object_id": ids,
            "top_concept": rng.choice(["trailer", "car", "crane", "cone"], len(ids)),
            "top_concept_is_common": rng.random(len(ids)) < 0.5,
            "is_final_outlier": rng.random(len(ids)) < 0.5,
            "concepts": [["trailer", "car", "crane"]] * len(ids),
            "probabilities": [np.array([0.5, 0.3, 0.2], np.float32)] * len(ids),
        }
    ).to_parquet(root / "concepts.parquet")
    return n, shards


def _inputs(root: Path):
    detections = sorted((root / "detections").glob("*.parquet"))
    return detections, {
        name: root / f"{name}.parquet" for name in ("outliers", "selection", "captions", "concepts")
    }


def export_writers(out: Path) -> list:
    """The rule's writers of the tree, detection_results.json and the target files."""
    from rare_objects.export.json_writers import (
        ResultsWriter,
        target_results_name,
        target_results_writers,
    )
    from rare_objects.export.tree import TreeSettings, TreeWriter

    return [
        TreeWriter(out, TARGETS, TreeSettings(**TREE)),
        ResultsWriter(out / "detection_results.json"),
        *target_results_writers(TARGETS, [out / target_results_name(t) for t in TARGETS]),
    ]


def _one_shard(root: str) -> None:
    """Every detection shard in one shard file (the in-memory baseline's input)."""
    import pandas as pd

    from rare_objects.io import schemas

    detections, _ = _inputs(Path(root))
    frame = pd.concat([pd.read_parquet(p) for p in detections], ignore_index=True)
    schemas.write_table(frame, schemas.DETECTIONS, Path(root) / "whole" / "all.parquet")


def _export(detections: list, root: str, out: str) -> None:
    from rare_objects.export import export_shards
    from rare_objects.export.rows import read_object_tables

    _, paths = _inputs(Path(root))
    tables = read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    export_shards(detections, tables, targets=TARGETS, writers=export_writers(Path(out)))


def _in_memory(root: str, out: str) -> None:
    _export([Path(root) / "whole" / "all.parquet"], root, out)


def _streaming(root: str, out: str) -> None:
    _export(_inputs(Path(root))[0], root, out)


def _run_size(n_asked: int, seed: int, in_memory: bool) -> tuple[int, float, int]:
    """Generate ``n_asked`` objects, export them (streaming, and in memory when asked);
    returns the objects, the streaming export's time and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (n, shards), seconds, _ = run_isolated(_generate, str(tmp / "in"), n_asked, seed)
        size = sum(p.stat().st_size for p in (tmp / "in").rglob("*.parquet")) / GIB
        print(
            f"data: {n:,} objects in {shards} detection shards, 5% outliers; parquet {size:.2f} GiB "
            f"(generated in {seconds:.0f} s)"
        )
        if in_memory:
            run_isolated(_one_shard, str(tmp / "in"))
            _, base_s, base_rss = run_isolated(_in_memory, str(tmp / "in"), str(tmp / "memory"))
            print(
                f"baseline in-memory export: {base_s:.1f} s, peak RSS {base_rss / GIB:.2f} GiB "
                f"({base_rss / n:,.0f} bytes per object)"
            )
        _, stream_s, stream_rss = run_isolated(_streaming, str(tmp / "in"), str(tmp / "stream"))
        print(
            f"export_shards (streaming): {stream_s:.1f} s, peak RSS {stream_rss / GIB:.2f} GiB "
            f"({stream_rss / n:,.0f} bytes per object)"
        )
        results_gib = (tmp / "stream" / "detection_results.json").stat().st_size / GIB
        if in_memory:
            print(
                f"ratio streaming / in-memory: time {stream_s / base_s:.2f}, peak RSS {stream_rss / base_rss:.2f}"
            )
            names = ["detection_results.json", *(f"{t}_results.json" for t in TARGETS)]
            same = all(
                filecmp.cmp(tmp / "memory" / name, tmp / "stream" / name, shallow=False)
                for name in names
            )
            print(f"outputs identical: {same} (detection_results.json {results_gib:.2f} GiB)")
        else:
            print(f"(in-memory baseline skipped; detection_results.json {results_gib:.2f} GiB)")
    return n, stream_s, stream_rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    parser.add_argument(
        "--in-memory-up-to",
        type=int,
        default=None,
        help="run the in-memory baseline only at sizes up to this (default: every size)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    first = None
    for n_asked in sorted(args.n):
        in_memory = args.in_memory_up_to is None or n_asked <= args.in_memory_up_to
        n, seconds, rss = _run_size(n_asked, args.seed, in_memory)
        if first is None:
            first = (n, seconds, rss)
        else:
            n0, s0, r0 = first
            print(
                f"streaming export, x{n / n0:.1f} objects: time x{seconds / s0:.2f},"
                f" peak RSS x{rss / r0:.2f}"
            )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
