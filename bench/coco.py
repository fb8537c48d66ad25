"""Bench: the COCO writer and the training-selection list at 1,000,000 objects.

    .venv/bin/python bench/coco.py                     # 1,000,000 objects in 139 shards
    .venv/bin/python bench/coco.py --n 100000          # quick

The synthetic gathered tables of bench/export.py (detection shards of 240
images with about 30 objects each, 5 % outliers, 2,000 selected and captioned
objects), plus per-shard image tables for the training selection. Each part
runs in its own child process, so each peak-RSS figure is that part alone:

1. the baseline: :func:`rare_objects.export.export_shards` without the COCO
   writer (detection_results.json, target files, results tree);
2. the same pass with the COCO writer of every object (``objects: [all]``, the
   worst case: 1,000,000 annotations);
3. the same pass with the COCO writer of the default set (``[selected]``);
4. the training-selection rule's work (:func:`rare_objects.stages.training_selection.training_selection`,
   mined = final outliers, the default; a 25 % budget) on the same tables.

The passes must write byte-identical detection_results.json and target files.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, machine, run_isolated  # noqa: E402
from export import TARGETS, _generate, _inputs, export_writers  # noqa: E402


def _image_tables(root: str) -> None:
    """One image table per detection shard (every image ok, with its object count)."""
    import pandas as pd
    import pyarrow as pa

    from rare_objects.io import schemas

    for path in sorted((Path(root) / "detections").glob("*.parquet")):
        objects = pd.read_parquet(
            path,
            columns=[
                "image_id",
                "shard",
                "image_path",
                "sample_token",
                "camera",
                "image_width",
                "image_height",
            ],
        )
        images = objects.groupby("image_id", sort=True).first().reset_index()
        images["n_objects"] = objects.groupby("image_id", sort=True).size().to_numpy()
        images["status"] = "ok"
        schemas.write_table(
            pa.Table.from_pandas(images, preserve_index=False),
            schemas.IMAGES,
            Path(root) / "images" / path.name,
        )


class _Timed:
    """A writer wrapped to add up the CPU seconds spent in it (its own cost, not the pass's)."""

    def __init__(self, writer):
        self.writer, self.cpu_s = writer, 0.0

    def _timed(self, call, *args):
        start = time.process_time()
        try:
            return call(*args)
        finally:
            self.cpu_s += time.process_time() - start

    def __enter__(self):
        self._timed(self.writer.__enter__)
        return self

    def write_shard(self, shard):
        self._timed(self.writer.write_shard, shard)

    def __exit__(self, *exc):
        return self._timed(self.writer.__exit__, *exc)


def _export(root: str, out: str, coco_objects: list[str] | None) -> dict:
    from rare_objects.export import coco, export_shards
    from rare_objects.export.rows import read_object_tables

    detections, paths = _inputs(Path(root))
    out = Path(out)
    tables = read_object_tables(
        paths["outliers"], paths["selection"], [paths["captions"]], paths["concepts"]
    )
    writers = (
        [
            _Timed(
                coco.CocoWriter(
                    out / "coco_detections.json", objects=coco_objects, data_root="/data/nuscenes"
                )
            )
        ]
        if coco_objects
        else []
    )
    start = time.process_time()
    export_shards(detections, tables, targets=TARGETS, writers=[*export_writers(out), *writers])
    figures = {"cpu_s": time.process_time() - start}
    if writers:
        figures.update(
            annotations=writers[0].writer.n_annotations,
            images=writers[0].writer.n_images,
            writer_cpu_s=writers[0].cpu_s,
        )
    return figures


def _training_selection(root: str, out: str, mined: tuple[str, ...] = ("final_outliers",)) -> dict:
    from rare_objects.runtime.config import defaults
    from rare_objects.stages import training_selection as ts

    root, out = Path(root), Path(out)
    table, summary = ts.training_selection(
        sorted((root / "images").glob("*.parquet")),
        sorted((root / "detections").glob("*.parquet")),
        root / "outliers.parquet",
        root / "concepts.parquet",
        "nuscenes",
        # the schema's section (its mode: mined_plus_random_fill), a 25 % budget
        {**defaults()["training_selection"], "mined": list(mined), "budget_fraction": 0.25},
        TARGETS,
        seed=0,
    )
    ts.write_outputs(
        table,
        summary,
        out / "training_selection.parquet",
        out / "training_selection.csv",
        out / "training_selection_summary.json",
    )
    return {k: v for k, v in summary.items() if k != "class_counts"}


def _parse(path: str) -> tuple[int, int]:
    import json

    with open(path, encoding="utf-8") as handle:
        loaded = json.load(handle)
    return len(loaded["annotations"]), len(loaded["images"])


def _training_selections(tmp: Path) -> None:
    """The training selection mined from the final outliers (2,000 captioned objects), then
    from the outliers too (5 % of the objects: every detection shard is matched against
    them), each in its own process."""
    base = None
    for mined in (("final_outliers",), ("outliers", "final_outliers")):
        summary, s, rss = run_isolated(
            _training_selection, str(tmp / "in"), str(tmp / "-".join(mined)), mined
        )
        base = base or s
        print(
            f"training selection (mined: {', '.join(mined)}; budget 25 %): {s:.1f} s"
            f" ({s / base:.2f}x the first), peak RSS {rss / GIB:.2f} GiB;"
            f" {summary['selected_samples']:,} of {summary['total_samples']:,} samples,"
            f" {summary['mined_samples']:,} mined"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--training-selection-only",
        action="store_true",
        help="only the training selections (mined: final outliers; then outliers too)",
    )
    parser.add_argument("--code", help="a checkout's scripts folder, imported first")
    args = parser.parse_args()
    if args.code:  # the children started by run_isolated inherit the path
        sys.path.insert(0, os.path.abspath(args.code))
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (n, shards), seconds, _ = run_isolated(_generate, str(tmp / "in"), args.n, args.seed)
        run_isolated(_image_tables, str(tmp / "in"))
        print(
            f"data: {n:,} objects in {shards} detection shards, 5% outliers, 2,000 selected (generated in {seconds:.0f} s)"
        )
        if args.training_selection_only:
            _training_selections(tmp)
            return
        base, base_s, base_rss = run_isolated(_export, str(tmp / "in"), str(tmp / "plain"), None)
        print(
            f"baseline export_shards without the COCO writer: {base_s:.1f} s ({base['cpu_s']:.1f} s CPU), "
            f"peak RSS {base_rss / GIB:.2f} GiB"
        )
        written = {}
        for name, objects in (("all", ["all"]), ("selected", ["selected"])):
            figures, s, rss = run_isolated(_export, str(tmp / "in"), str(tmp / name), objects)
            annotations, images = figures["annotations"], figures["images"]
            size = (tmp / name / "coco_detections.json").stat().st_size / GIB
            print(
                f"with the COCO writer, objects [{name}]: {s:.1f} s ({figures['cpu_s']:.1f} s CPU), "
                f"peak RSS {rss / GIB:.2f} GiB; {annotations:,} annotations on {images:,} images, "
                f"coco_detections.json {size:.3f} GiB"
            )
            print(
                f"  ratio against the baseline: wall time {s / base_s:.2f}, CPU time {figures['cpu_s'] / base['cpu_s']:.2f}, "
                f"peak RSS {rss / base_rss:.2f}; CPU in the COCO writer itself {figures['writer_cpu_s']:.1f} s "
                f"({figures['writer_cpu_s'] / base['cpu_s']:.1%} of the baseline pass)"
            )
            names = ["detection_results.json", *(f"{t}_results.json" for t in TARGETS)]
            same = all(filecmp.cmp(tmp / "plain" / f, tmp / name / f, shallow=False) for f in names)
            print(f"  detection_results.json and target files identical to the baseline's: {same}")
            written[name] = (annotations, images)
        summary, s, rss = run_isolated(_training_selection, str(tmp / "in"), str(tmp / "selection"))
        print(
            f"training selection (mined: final outliers, budget 25 %): {s:.1f} s, peak RSS {rss / GIB:.2f} GiB; "
            f"{summary['selected_samples']:,} of {summary['total_samples']:,} samples, "
            f"{summary['mined_samples']:,} mined, over budget: {summary['over_budget']}"
        )
        print(
            f"  ratio against the baseline export: time {s / base_s:.2f}, peak RSS {rss / base_rss:.2f}"
        )
        # Parsed last, in a child: a parent that had held the parsed file would pass its
        # peak RSS on to every later child (Linux keeps the maximum across fork and exec).
        (n_annotations, n_images), s, rss = run_isolated(
            _parse, str(tmp / "all" / "coco_detections.json")
        )
        ok = (n_annotations, n_images) == written["all"] and n_annotations == n
        print(
            f"the [all] file parses as JSON (json.load, {s:.1f} s, peak RSS {rss / GIB:.2f} GiB): "
            f"{n_annotations:,} annotations on {n_images:,} images, as written and one per object: {ok}"
        )
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
