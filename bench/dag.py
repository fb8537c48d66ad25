"""Dry-run time of the whole workflow over a nuScenes-sized file list.

Writes a nuScenes-shaped dataroot with empty camera files (no pixels needed),
then times `snakemake --dry-run` on it and on a 100x smaller baseline in the
same run. Target: <= 20 s for 240,000 images (1,000 scenes x 40 keyframes x 6
cameras).

    python bench/dag.py [--scenes 1000] [--keyframes 40] [--baseline-scenes 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "bench"))

from _common import run_snakemake  # noqa: E402

from rare_objects.demo.synthetic_nuscenes import write_dataroot  # noqa: E402


def write_config(workdir: Path, dataroot: Path) -> Path:
    import yaml

    models = workdir / "models"
    models.mkdir(exist_ok=True)
    for name in ("detector.pt", "clip-tiny.pt"):
        (models / name).write_bytes(b"")
    (models / "qwen2vl-tiny").mkdir(exist_ok=True)
    config = {
        "results": str(workdir / "results"),
        "device": "cpu",
        "input": {
            "kind": "nuscenes",
            "path": str(dataroot),
            "shard_size": 500,
            "nuscenes": {"version": "v1.0-trainval"},
        },
        "demo": {"models_dir": str(models)},
        "detector": {"weights": str(models / "detector.pt")},
        "embedder": {"preset": "demo"},
        "captions": {"transformers": {"model": str(models / "qwen2vl-tiny")}},
    }
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir: Path, config: Path) -> tuple[float, str]:
    start = time.perf_counter()
    stdout = run_snakemake(workdir, config, "--dry-run", "--quiet", "rules")
    return time.perf_counter() - start, stdout


def jobs(table: str, rule: str) -> int:
    for line in table.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == rule and parts[1].isdigit():
            return int(parts[1])
    return 0


def measure(root: Path, scenes: int, keyframes: int) -> tuple[float, float, int, str]:
    dataroot = root / "nuscenes"
    start = time.perf_counter()
    write_dataroot(
        dataroot,
        version="v1.0-trainval",
        scenes=scenes,
        keyframes_per_scene=keyframes,
        sweeps_per_keyframe=0,
    )
    written = time.perf_counter() - start
    config = write_config(root, dataroot)
    first, table = dry_run(root, config)  # builds the cached manifest
    second, table = dry_run(root, config)  # what every later invocation and job pays
    return first, second, scenes * keyframes * 6, table if written >= 0 else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--keyframes", type=int, default=40)
    parser.add_argument("--baseline-scenes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        b_first, b_second, b_images, _ = measure(base, args.baseline_scenes, args.keyframes)
        full = Path(tmp) / "full"
        full.mkdir()
        f_first, f_second, f_images, table = measure(full, args.scenes, args.keyframes)
    print(
        f"baseline: {b_images} images, dry run {b_first:.2f} s (manifest built) / {b_second:.2f} s (cached)"
    )
    print(
        f"full:     {f_images} images, dry run {f_first:.2f} s (manifest built) / {f_second:.2f} s (cached)"
    )
    print(
        f"detect jobs {jobs(table, 'detect')}, embed jobs {jobs(table, 'embed')}, total {jobs(table, 'total')}"
    )
    print(
        f"ratio full/baseline (cached): {f_second / b_second:.2f} for {f_images / b_images:.0f}x the images"
    )
    print(
        f"target <= 20 s: {'met' if f_first <= 20 else 'MISSED'} ({f_first:.2f} s with a cold manifest)"
    )


if __name__ == "__main__":
    main()
