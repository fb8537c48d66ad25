"""Share of detect and embed work rescheduled when one new scene is added.

Writes a nuScenes-shaped dataroot of 850 scenes x 40 keyframes x 6 cameras
(empty files), marks every detect and embed output as done (the files, then
`snakemake --touch` to record their metadata), adds one scene of 40 keyframes
and reads from a dry run what Snakemake would run. Target: <= 1% of the
detect and embed work (the baseline is the full set of jobs for the same data).

    python bench/append.py [--scenes 850] [--keyframes 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import run_snakemake  # noqa: E402
from dag import REPO, jobs, write_config  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from rare_objects.demo.synthetic_nuscenes import write_dataroot  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=850)
    parser.add_argument("--keyframes", type=int, default=40)
    args = parser.parse_args()
    names = [f"scene-{i:04d}" for i in range(1, args.scenes + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        dataroot = workdir / "nuscenes"
        write_dataroot(
            dataroot,
            version="v1.0-trainval",
            scenes=names,
            keyframes_per_scene=args.keyframes,
            sweeps_per_keyframe=0,
        )
        config = write_config(workdir, dataroot)
        before = run_snakemake(workdir, config, "--dry-run", "--quiet", "rules")
        full_detect, full_embed = jobs(before, "detect"), jobs(before, "embed")
        tables = workdir / "results" / "tables"
        for kind in ("detections", "images", "rejects", "embeddings"):
            (tables / kind).mkdir(parents=True, exist_ok=True)
        shards = [f"{name}.0000" for name in names]
        benchmarks = workdir / "results" / "benchmarks"
        for rule in ("detect", "embed"):
            (benchmarks / rule).mkdir(parents=True, exist_ok=True)
        for shard in shards:
            for kind in ("detections", "images", "rejects", "embeddings"):
                (tables / kind / f"{shard}.parquet").touch()
            for rule in ("detect", "embed"):  # benchmark files are outputs too
                (benchmarks / rule / f"{shard}.tsv").touch()
        start = time.perf_counter()
        run_snakemake(workdir, config, "--touch", "--until", "embed", "--quiet", "all")
        touched = time.perf_counter() - start
        done = run_snakemake(workdir, config, "--dry-run", "--quiet", "rules")
        write_dataroot(
            dataroot,
            version="v1.0-trainval",
            scenes=["scene-9999"],
            keyframes_per_scene=args.keyframes,
            sweeps_per_keyframe=0,
            append=True,
        )
        after = run_snakemake(workdir, config, "--dry-run", "--quiet", "rules")
    new_detect, new_embed = jobs(after, "detect"), jobs(after, "embed")
    images_total = (args.scenes + 1) * args.keyframes * 6
    print(
        f"existing: {args.scenes} scenes, {args.scenes * args.keyframes * 6} images; full run = {full_detect} detect + {full_embed} embed jobs"
    )
    print(
        f"after marking them done ({touched:.1f} s): {jobs(done, 'detect')} detect + {jobs(done, 'embed')} embed jobs left"
    )
    print(
        f"one new scene ({args.keyframes * 6} images): {new_detect} detect + {new_embed} embed jobs scheduled"
    )
    share_jobs = (new_detect + new_embed) / (full_detect + full_embed + 2)
    share_images = new_detect and (args.keyframes * 6) / images_total
    print(f"rescheduled share: {share_jobs:.4%} of detect+embed jobs, {share_images:.4%} of images")
    print(f"target <= 1%: {'met' if share_jobs <= 0.01 else 'MISSED'}")


if __name__ == "__main__":
    main()
