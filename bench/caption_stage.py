"""The caption stage through Snakemake: the ``caption`` rule's jobs against a fixed-latency server.

Builds ``--images`` JPEG images with ``--objects-per-image`` boxes each and a
selection table that sends every object to the VLM, then runs only the
``caption`` rule (``--allowed-rules caption``: the selection table is taken as
given) with the ``openai`` backend against bench/captions.py's server, which
answers every request after ``--latency-ms``. The baseline in the same run is
the ideal: crops × latency / (concurrency × caption jobs running at once),
a client and a job start-up that cost nothing. Printed: the wall time of the
Snakemake call, each job's time from its benchmark file, and the ratios
(target ≤ 1.15 at concurrency 256 over 20,000 crops, job start-up included).

    python bench/caption_stage.py [--images 2000] [--objects-per-image 10] [--partitions 2]
                                  [--image-size 320x240]
                                  [--concurrency 256] [--latency-ms 200] [--jobs 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from _common import machine, run_snakemake  # noqa: E402
from captions import FixedLatencyServer  # noqa: E402

from rare_objects.demo.caption_workload import write_caption_workload  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--objects-per-image", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--image-size",
        default="320x240",
        help="WIDTHxHEIGHT of the generated JPEG noise images (nuScenes cameras: 1600x900)",
    )
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument(
        "--jobs", type=int, default=1, help="caption jobs at once (each gets 2 / jobs cores)"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()
    print(machine())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-caption-stage-"))
    width, height = (int(v) for v in args.image_size.lower().split("x"))
    _, crops = write_caption_workload(
        work, args.images, args.objects_per_image, args.partitions, (width, height), seed=0
    )
    latency = args.latency_ms / 1000
    with FixedLatencyServer(latency) as url:
        config = {
            "results": str(work / "results"),
            "device": "cpu",
            "input": {"kind": "folder", "path": str(work / "images"), "shard_size": 1000},
            "demo": {"models_dir": str(work / "models")},  # never built: only captions run
            "detector": {"weights": str(work / "models" / "detector.pt")},
            "embedder": {"preset": "demo"},
            "captions": {
                "backend": "openai",
                "partitions": args.partitions,
                "vlm_for": ["all"],
                "openai": {"base_url": url, "model": "bench-vlm", "concurrency": args.concurrency},
            },
        }
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        parts = [
            str(work / f"results/tables/captions/part-{p:03d}.parquet")
            for p in range(args.partitions)
        ]
        start = time.perf_counter()
        run_snakemake(
            work,
            config_path,
            *parts,  # before the options that take several values
            "--allowed-rules",
            "caption",
            "--set-threads",
            f"caption={max(1, 2 // args.jobs)}",
        )
        wall = time.perf_counter() - start
    captions = pd.concat(pd.read_parquet(work / p) for p in parts)
    failed = int(captions["error"].notna().sum())
    ideal = crops * latency / (args.concurrency * min(args.jobs, args.partitions))
    print(
        f"{crops} crops of {args.images} {width}x{height} images in {args.partitions} caption jobs ({args.jobs} at once), concurrency "
        f"{args.concurrency}, latency {args.latency_ms:g} ms, {failed} failed"
    )
    print(
        f"snakemake wall {wall:.2f} s (Snakemake's own start and DAG included), ideal "
        f"{ideal:.2f} s, ratio {wall / ideal:.3f}"
    )
    for p in range(args.partitions):
        bench = pd.read_csv(work / f"results/benchmarks/caption/part-{p:03d}.tsv", sep="\t")
        n = len(pd.read_parquet(work / parts[p], columns=["object_id"]))
        job_ideal = n * latency / args.concurrency
        print(
            f"  job part-{p:03d}: {n} captions in {bench['s'].iloc[0]:.2f} s (job start-up "
            f"included), ideal {job_ideal:.2f} s, ratio {bench['s'].iloc[0] / job_ideal:.3f}"
        )


if __name__ == "__main__":
    main()
