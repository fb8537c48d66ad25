"""Bench: the concept analysis (rule ``analyse_concepts``) over many captions.

    .venv/bin/python bench/concepts.py                           # 1,000,000 captions, 20,000 distinct
    .venv/bin/python bench/concepts.py --rows 3000000 --distinct 100000
    .venv/bin/python bench/concepts.py --code ../other-checkout/scripts   # another version's code

The captions of a big run: ``--distinct`` VLM captions (a grammar of colours, kinds
and places, each with a number so that every one is distinct) spread over ``--rows``
rows, the rest the simple captions of objects without a VLM caption ("A car detected
by YOLO with confidence 0.87.", a few thousand distinct texts). The encoder is the
default ``concepts.text_encoder: embedder``, the text tower of an open_clip model:
the demo's tiny CLIP, random weights (its width decides the memory of a forward pass,
not its training). Each part runs in its own child process (peak RSS = that part):

1. the baseline: the bare encoder over the distinct texts and the concepts,
   ``ENCODE_BLOCK`` texts at a time (what any analysis must compute);
2. :func:`rare_objects.stages.concepts.analyse_captions` on every row, with the
   schema's default concept list and common classes.

``--code`` puts another checkout's ``scripts`` folder first on the import path, so a
version before a change runs the same workload (its ``ENCODE_BLOCK`` may not exist:
the baseline then uses 256).
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

from _common import GIB, machine, run_isolated  # noqa: E402

COLOURS = ["yellow", "red", "white", "orange", "grey", "blue", "green", "black"]
KINDS = ["excavator", "trailer", "crane", "bicycle", "truck", "stroller", "barrier", "cart"]
PLACES = ["on a road", "near a building site", "at a crossing", "by a parked car"]


def _captions(rows: int, distinct: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vlm = [
        f"a {COLOURS[i % 8]} {KINDS[(i // 8) % 8]} {PLACES[(i // 64) % 4]}, number {i}"
        for i in range(distinct)
    ]
    classes = ["car", "truck", "pedestrian", "bus", "bicycle", "barrier", "traffic_cone"]
    simple = [
        f"A {classes[c]} detected by YOLO with confidence {p:.2f}."
        for c, p in zip(rng.integers(0, len(classes), rows), rng.uniform(0.25, 1.0, rows))
    ]
    chosen = rng.choice(rows, size=min(rows, distinct), replace=False)
    for k, row in enumerate(chosen):
        simple[row] = vlm[k]
    return simple


def _encoder(checkpoint: str):
    from rare_objects.backends.embedders.open_clip import DEMO_CLIP_NAME, load_clip

    return load_clip(DEMO_CLIP_NAME, checkpoint, device="cpu", precision="fp32")


def _baseline(checkpoint: str, rows: int, distinct: int, seed: int) -> dict:
    from rare_objects.runtime.config import defaults

    try:
        from rare_objects.stages.concepts import ENCODE_BLOCK as block
    except ImportError:
        block = 256
    encoder = _encoder(checkpoint)
    texts = list(dict.fromkeys(_captions(rows, distinct, seed)))
    encoder.encode([f"a photo of a {c}" for c in defaults()["concepts"]["list"]])
    for start in range(0, len(texts), block):
        encoder.encode(texts[start : start + block])
    return {"distinct_texts": len(texts), "block": block}


def _analyse(checkpoint: str, rows: int, distinct: int, seed: int) -> dict:
    import pandas as pd

    from rare_objects.runtime.config import defaults
    from rare_objects.stages.concepts import analyse_captions

    settings = defaults()["concepts"]
    encoder = _encoder(checkpoint)
    captions = pd.Series(_captions(rows, distinct, seed), dtype="str")  # as read from parquet
    out = analyse_captions(captions, settings["list"], settings["common_classes"], encoder)
    return {"final_outliers": int(out["is_final_outlier"].fillna(False).astype(bool).sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--code", help="a checkout's scripts folder, imported first")
    args = parser.parse_args(argv)
    if args.code:
        sys.path.insert(0, os.path.abspath(args.code))
    import rare_objects

    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    print(f"code: {Path(rare_objects.__file__).parents[1]}")
    from rare_objects.demo.tiny_models import build_demo_clip

    with tempfile.TemporaryDirectory(prefix="bench-concepts-") as folder:
        checkpoint = str(build_demo_clip(Path(folder) / "clip.pt", seed=0, finetune_steps=0))
        work = (checkpoint, args.rows, args.distinct, args.seed)
        print(f"{args.rows:,} captions, {args.distinct:,} distinct VLM captions")
        t0 = time.perf_counter()
        info, base_s, base_rss = run_isolated(_baseline, *work)
        print(
            f"  baseline, the encoder alone over the distinct texts: {base_s:.1f} s,"
            f" peak RSS {base_rss / GIB:.2f} GiB; {info}"
        )
        info, seconds, rss = run_isolated(_analyse, *work)
        print(
            f"  analyse_captions: {seconds:.1f} s ({seconds / base_s:.2f}x the baseline),"
            f" peak RSS {rss / GIB:.2f} GiB ({rss / base_rss:.2f}x); {info}"
        )
        print(f"  ({time.perf_counter() - t0:.0f} s in all)")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
