"""Tiny, seeded models that the workflow builds for itself: no weights are downloaded.

* :func:`build_demo_detector` trains a tiny YOLOv8 (depth 0.33, width 0.125, about 0.9M
  parameters) on synthetic street scenes from :mod:`rare_objects.demo.scenes` and copies its
  ``best.pt`` to ``out_path``. It loads with ``ultralytics.YOLO(out_path)`` and keeps the
  training ``imgsz`` as its default prediction size.
* :func:`build_demo_clip` creates the open_clip model :data:`DEMO_CLIP_NAME` from the config in
  :data:`MODEL_CONFIG_DIR`, seeded, optionally fine-tuned for a few seconds on crops of
  synthetic scenes with captions (class, colour, and the planted kinds' concepts), and saves
  it as a checkpoint that ``open_clip.create_model_and_transforms(DEMO_CLIP_NAME,
  pretrained=str(out_path))`` loads after ``open_clip.add_model_config(MODEL_CONFIG_DIR)``.

Both are deterministic for a seed and a thread count, and idempotent: an existing
``out_path`` is returned as it is unless ``force=True``. Outputs are written atomically.

CLI: ``python -m rare_objects.demo.tiny_models detector --out PATH`` / ``clip --out PATH``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare_objects.backends.embedders.open_clip import DEMO_CLIP_NAME, MODEL_CONFIG_DIR
from rare_objects.demo import scenes as demo_scenes
from rare_objects.io import atomic
from rare_objects.runtime.offline import configure
from rare_objects.stages.concepts import concept_text

log = logging.getLogger(__name__)

# The tiny detector's architecture: yolov8's layers with these compound-scaling constants.
DETECTOR_DEPTH = 0.33
DETECTOR_WIDTH = 0.125
DETECTOR_METRICS_NAME = "detector_metrics.json"


def default_threads() -> int:
    """Threads used when none are given: every core, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def _torch_save_bytes(obj) -> bytes:
    """``torch.save`` of ``obj`` into memory.

    Not into the atomic writer's temporary file: ``torch.save`` names the records inside
    its zip archive after the file it writes (``detector.pt.1234.tmp/data.pkl``), so equal
    models saved by two processes would differ in those names. In memory they are
    ``archive/...`` every time.
    """
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# What ultralytics' trainer records in a checkpoint that differs between two equal builds:
# where it ran (paths), when, and how long each epoch took; the weights and every
# setting that shapes them stay.
_CHECKPOINT_DROPPED = ("date", "git", "train_results", "optimizer", "scaler", "ema", "updates")
_TRAIN_ARGS_DROPPED = ("model", "data", "project", "name", "save_dir")


def _portable_detector_checkpoint(best: Path) -> bytes:
    """The trainer's ``best.pt`` as bytes that equal builds (same seed and threads) share."""
    import torch

    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    if checkpoint.get("ema") is not None:  # what ultralytics loads first
        checkpoint["model"] = checkpoint["ema"]
    args = {k: v for k, v in checkpoint["train_args"].items() if k not in _TRAIN_ARGS_DROPPED}
    checkpoint = {k: v for k, v in checkpoint.items() if k not in _CHECKPOINT_DROPPED}
    checkpoint["train_args"] = args
    model = checkpoint["model"]
    model.args = dict(args)
    if isinstance(
        getattr(model, "yaml", None), dict
    ):  # the architecture, less the file it came from
        model.yaml = {k: v for k, v in model.yaml.items() if k != "yaml_file"}
    return _torch_save_bytes(checkpoint)


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------


def _detector_yaml(path: Path, nc: int) -> Path:
    """Write yolov8.yaml with our class count and fixed depth/width multiples (no ``scales``)."""
    import yaml
    from ultralytics.utils import ROOT

    cfg = yaml.safe_load((ROOT / "cfg" / "models" / "v8" / "yolov8.yaml").read_text())
    cfg.pop("scales", None)
    cfg.update({"nc": nc, "depth_multiple": DETECTOR_DEPTH, "width_multiple": DETECTOR_WIDTH})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_demo_detector(
    out_path: str | os.PathLike,
    work_dir: str | os.PathLike,
    seed: int = 0,
    epochs: int = 20,
    imgsz: int = 320,
    n_train: int = 200,
    n_val: int = 40,
    batch: int = 8,
    threads: int | None = None,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
    planted_fraction: float = 0.25,
) -> Path:
    """Train the tiny demo detector and copy its best weights to ``out_path``.

    Training scenes are ``imgsz`` x ``0.6 imgsz`` (the demo's 640x384 geometry), trained as
    rectangular batches (``rect=True``: a third of the pixels of square mosaics, and with
    equal shapes ultralytics still shuffles) in channels-last layout, AdamW at lr0 0.004 and
    one optimizer step per batch (``nbs=batch``; the default nbs=64 accumulates 8 batches,
    which leaves mAP at 0 for most of a short run). 20 epochs of 200 scenes reach mAP50 about
    0.85 in about 2 minutes on 2 idle CPU cores. The model keeps ``imgsz`` as its default
    prediction size, so ``YOLO(out_path).predict(image)`` sees demo images at the trained
    scale. The run (dataset, ultralytics run folder, metrics JSON) lives in ``work_dir``.

    ``planted_fraction`` of the training scenes hold one object drawn like a planted kind,
    labelled with its nearest ordinary class (an excavator as ``truck``, a mascot costume as
    ``person``), as a detector trained on a large real dataset has seen a few odd trucks and
    people: without them the tiny detector misses most planted objects of the demo.
    """
    out_path = Path(out_path)
    if out_path.exists() and not force:
        return out_path
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    configure(cache_dir if cache_dir is not None else work / "cache")
    threads = threads or default_threads()

    import torch

    torch.set_num_threads(threads)
    import ultralytics.utils.torch_utils as ul_torch_utils
    from ultralytics import YOLO

    # select_device() resets torch's thread count to cpu_count - 1; keep ours.
    ul_torch_utils.NUM_THREADS = threads
    log.info("writing %d+%d training scenes", n_train, n_val)
    data_dir = work / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_yaml = demo_scenes.write_yolo_dataset(
        data_dir,
        n_train,
        n_val,
        seed,
        size=(imgsz, imgsz * 3 // 5),
        planted_fraction=planted_fraction,
    )
    model_yaml = _detector_yaml(work / "rare-tiny-yolov8.yaml", len(demo_scenes.CLASS_NAMES))

    run_dir = work / "train"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    model = YOLO(str(model_yaml), task="detect")
    metrics = model.train(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=0,
        seed=seed,
        deterministic=True,
        optimizer="AdamW",
        lr0=0.004,
        nbs=batch,
        rect=True,
        channels_last=True,
        amp=False,
        plots=False,
        val=False,  # validate once, after the last epoch
        pretrained=False,
        project=str(work),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    seconds = time.perf_counter() - t0
    best = run_dir / "weights" / "best.pt"
    if not best.exists():
        best = run_dir / "weights" / "last.pt"
    box = getattr(metrics, "box", None)
    summary = {
        "seed": seed,
        "epochs": epochs,
        "imgsz": imgsz,
        "n_train": n_train,
        "n_val": n_val,
        "planted_fraction": planted_fraction,
        "threads": threads,
        "train_seconds": round(seconds, 1),
        "map50": float(box.map50) if box is not None else None,
        "map50_95": float(box.map) if box is not None else None,
        "names": list(demo_scenes.CLASS_NAMES),
    }
    (work / DETECTOR_METRICS_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    log.info(
        "tiny detector: mAP50 %.3f after %d epochs in %.0f s",
        summary["map50"] or -1,
        epochs,
        seconds,
    )
    atomic.write_bytes(out_path, _portable_detector_checkpoint(best))
    return out_path


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------


def _open_clip():
    import open_clip

    if str(MODEL_CONFIG_DIR) not in [str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS]:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    return open_clip


def _clip_training_crops(seed: int, n_scenes: int, size: tuple[int, int], jitters: int):
    """Object crops of synthetic scenes (their own random stream) with caption sets."""
    rng = np.random.default_rng([seed, demo_scenes.STREAM_CLIP, 2**31 - 1])
    kinds = list(demo_scenes.PLANTED_KINDS)
    crops, positives = [], []
    for idx in range(n_scenes):
        scene_rng = np.random.default_rng([seed, demo_scenes.STREAM_CLIP, idx])
        kind = kinds[idx % len(kinds)] if rng.random() < 0.3 else demo_scenes.NOT_PLANTED
        image, objects = demo_scenes.render_scene(scene_rng, size, kind)
        for obj in objects:
            w, h = obj.x2 - obj.x1, obj.y2 - obj.y1
            if min(w, h) < 6:
                continue
            for j in range(jitters):
                d = rng.uniform(-0.06, 0.06, size=4) * np.array([w, h, w, h]) if j else np.zeros(4)
                x1 = max(0.0, obj.x1 + d[0])
                y1 = max(0.0, obj.y1 + d[1])
                x2 = min(float(size[0]), obj.x2 + d[2])
                y2 = min(float(size[1]), obj.y2 + d[3])
                crops.append(image.crop((int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2)))))
                positives.append(clip_captions(obj))
    return crops, positives


def clip_captions(obj: demo_scenes.SceneObject) -> list[str]:
    """Captions that describe ``obj``: its grammar caption and its concept's prompt."""
    concept = demo_scenes.PLANTED_KINDS[obj.planted_kind][2] if obj.planted else obj.class_name
    return [obj.caption, concept_text(concept)]


def build_demo_clip(
    out_path: str | os.PathLike,
    seed: int = 0,
    finetune_steps: int = 300,
    n_scenes: int = 250,
    batch: int = 64,
    threads: int | None = None,
    force: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Create the tiny open_clip model, optionally fine-tune it, and save it to ``out_path``.

    ``finetune_steps=0`` saves the seeded random initialisation. Otherwise the model is
    trained contrastively on crops of ``n_scenes`` synthetic scenes against the set of all
    their captions ("a red car", "a photo of a truck", "a photo of a construction vehicle",
    ...), each crop with several positive captions. A ``.safetensors`` suffix saves as
    safetensors, anything else with ``torch.save``; both load through open_clip's
    ``pretrained=`` path. A JSON with the training settings and losses is written next to
    ``out_path`` as ``<stem>.json`` (the timings go to the log, so that two builds with one
    seed write equal files).
    """
    out_path = Path(out_path)
    if out_path.exists() and not force:
        return out_path
    if cache_dir is not None:  # else the caller configured the process (start_rule, tests)
        configure(cache_dir)
    threads = threads or default_threads()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    open_clip = _open_clip()
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(DEMO_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(DEMO_CLIP_NAME)
    summary: dict = {"seed": seed, "threads": threads, "finetune_steps": finetune_steps}

    if finetune_steps > 0:
        t0 = time.perf_counter()
        crops, positives = _clip_training_crops(seed, n_scenes, demo_scenes.DEFAULT_SIZE, jitters=2)
        images = torch.stack([preprocess(c) for c in crops])
        captions = sorted({c for caps in positives for c in caps})
        cap_index = {c: i for i, c in enumerate(captions)}
        target = torch.zeros(len(crops), len(captions))
        for i, caps in enumerate(positives):
            target[i, [cap_index[c] for c in caps]] = 1.0
        tokens = tokenizer(captions)
        prep_seconds = time.perf_counter() - t0

        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=2e-3, total_steps=finetune_steps, pct_start=0.1
        )
        model.train()
        losses = []
        for _step in range(finetune_steps):
            idx = torch.randint(len(crops), (batch,), generator=gen)
            img = F.normalize(model.encode_image(images[idx]), dim=-1)
            txt = F.normalize(model.encode_text(tokens), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            # multi-positive cross-entropy: -log of the probability mass on the true captions
            log_p = logits.log_softmax(dim=-1)
            pos = target[idx]
            loss = -(torch.logsumexp(log_p.masked_fill(pos == 0, float("-inf")), dim=-1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100.0))
            losses.append(float(loss.detach()))
        model.eval()
        summary.update(
            {
                "n_crops": len(crops),
                "n_captions": len(captions),
                "first_loss": round(losses[0], 4),
                "final_loss": round(float(np.mean(losses[-20:])), 4),
            }
        )
        # Timings go to the log only: equal builds write equal files.
        log.info(
            "tiny CLIP fine-tune: loss %.3f -> %.3f; crops prepared in %.0f s, trained in %.0f s",
            losses[0],
            summary["final_loss"],
            prep_seconds,
            time.perf_counter() - t0 - prep_seconds,
        )

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if out_path.suffix == ".safetensors":
        from safetensors.torch import save

        # One metadata key: safetensors writes a map's keys in no fixed order, and
        # equal builds must give equal bytes.
        data = save(state, metadata={"model": f"{DEMO_CLIP_NAME} seed={seed}"})
    else:
        data = _torch_save_bytes(state)
    atomic.write_bytes(out_path, data)
    atomic.write_text(
        out_path.with_name(out_path.stem + ".json"), json.dumps(summary, indent=2) + "\n"
    )
    return out_path


def load_demo_clip(checkpoint: str | os.PathLike, device: str = "cpu"):
    """Load the tiny CLIP the way the workflow loads any open_clip model.

    Returns ``(model, preprocess, tokenizer)`` with the model in eval mode.
    """
    open_clip = _open_clip()
    model, _, preprocess = open_clip.create_model_and_transforms(
        DEMO_CLIP_NAME, pretrained=str(checkpoint), device=device
    )
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(DEMO_CLIP_NAME)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny demo models (no downloads).")
    sub = parser.add_subparsers(dest="what", required=True)
    det = sub.add_parser("detector", help="train the tiny YOLOv8 detector")
    det.add_argument("--out", required=True)
    det.add_argument("--work-dir", help="training folder (default: <out>.work)")
    det.add_argument("--seed", type=int, default=0)
    det.add_argument("--epochs", type=int, default=20)
    det.add_argument("--imgsz", type=int, default=320)
    det.add_argument("--n-train", type=int, default=200)
    clip = sub.add_parser("clip", help="build the tiny open_clip model")
    clip.add_argument("--out", required=True)
    clip.add_argument("--seed", type=int, default=0)
    clip.add_argument("--finetune-steps", type=int, default=300)
    for p in (det, clip):
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--force", action="store_true")
        p.add_argument(
            "--cache-dir", default=None, help="library caches (default: RARE_OBJECTS_CACHE)"
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.what == "detector":
        work = args.work_dir or str(Path(args.out).with_suffix(".work"))
        path = build_demo_detector(
            args.out,
            work,
            seed=args.seed,
            epochs=args.epochs,
            imgsz=args.imgsz,
            n_train=args.n_train,
            threads=args.threads,
            force=args.force,
            cache_dir=args.cache_dir,
        )
    else:
        path = build_demo_clip(
            args.out,
            seed=args.seed,
            finetune_steps=args.finetune_steps,
            threads=args.threads,
            force=args.force,
            cache_dir=args.cache_dir,
        )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
