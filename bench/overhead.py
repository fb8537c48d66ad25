"""Overhead of the detect and embed stages over their bare model forward passes.

The stage functions (decode, resize/crop, batching, post-processing, with the
prefetching loader) run on N demo images; the floor is the same model's
forward passes on the same, already decoded, inputs at the same batch sizes,
measured in the same process. Target: stage / floor <= 1.10.

    python bench/overhead.py [--images 48] [--detector PATH|yolov8x.yaml] [--clip demo|ViT-L-14] [--device auto]

With --detector yolov8x.yaml / --clip ViT-L-14 the real-size architectures run
with random weights (fine for timing; a random detector is given conf 1e-9 so
that it still yields boxes to embed).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from rare_objects.runtime import offline  # noqa: E402


def find_demo_model(name: str) -> Path | None:
    for folder in (REPO / "resources" / "demo", REPO / "tests" / ".cache" / "models"):
        if (folder / name).exists():
            return folder / name
    return None


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument(
        "--detector", default=None, help="a .pt path, or an ultralytics .yaml for random weights"
    )
    parser.add_argument(
        "--clip", default="demo", help="demo, or an open_clip model name (random weights)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--detect-batch", type=int, default=8)
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    offline.configure(REPO / ".cache" / "bench")
    import numpy as np
    import torch

    from rare_objects.backends.object_detectors import ultralytics_yolo
    from rare_objects.demo.scenes import generate_scenes
    from rare_objects.io import images, sources
    from rare_objects.runtime import devices
    from rare_objects.runtime.config import defaults as config_defaults
    from rare_objects.stages.detection import DetectSettings, detect_images
    from rare_objects.stages.embedding import embed_objects

    device = devices.resolve_device(args.device)
    half = device.startswith("cuda")
    detector_path = args.detector or str(find_demo_model("detector.pt"))
    random_detector = detector_path.endswith(".yaml")
    if random_detector:
        from ultralytics import YOLO

        detector = YOLO(detector_path, task="detect")
    else:
        detector = ultralytics_yolo.load_detector(detector_path)
    from rare_objects.backends.embedders import open_clip as open_clip_embedder

    if args.clip == "demo":
        demo_clip = str(find_demo_model("clip-tiny.pt"))
        clip = open_clip_embedder.load_clip(open_clip_embedder.DEMO_CLIP_NAME, demo_clip, device)
    else:
        clip = open_clip_embedder.load_clip(args.clip, None, device)

    with tempfile.TemporaryDirectory() as tmp:
        generate_scenes(tmp, n_images=args.images, seed=123, folders=1)
        manifest = sources.build_manifest(
            {
                "kind": "folder",
                "path": tmp,
                "extensions": [".jpg"],
                "max_images": None,
                "shard_size": 10**9,
            },
            seed=0,
        )
        detector_cfg = {
            **config_defaults()["detector"],
            "conf": 1e-9 if random_detector else config_defaults()["detector"]["conf"],
            "batch_size": args.detect_batch,
        }
        settings = dataclasses.replace(DetectSettings.from_config(detector_cfg, device), half=half)
        stage_detector = ultralytics_yolo.UltralyticsDetector(detector, settings)
        # Warm-up: first calls build kernels and caches that neither side should pay.
        detect_images(
            manifest.head(args.detect_batch), stage_detector, settings, loader_workers=args.workers
        )

        stage_times, floor_times, predictor_times = [], [], []
        for _ in range(args.repeats):
            synchronize(device)
            start = time.perf_counter()
            detections, _, _ = detect_images(
                manifest, stage_detector, settings, loader_workers=args.workers
            )
            synchronize(device)
            stage_times.append(time.perf_counter() - start)
            # The stage as it was before the batched path: every batch through model.predict.
            with mock.patch.object(
                ultralytics_yolo.BatchedDetector, "for_model", return_value=None
            ):
                predictor = ultralytics_yolo.UltralyticsDetector(detector, settings)
                synchronize(device)
                start = time.perf_counter()
                detect_images(manifest, predictor, settings, loader_workers=args.workers)
                synchronize(device)
                predictor_times.append(time.perf_counter() - start)
            decoded = [
                images.resize_longest(images.open_rgb(p), settings.max_side)[0]
                for p in manifest["image_path"]
            ]
            synchronize(device)
            start = time.perf_counter()
            for i in range(0, len(decoded), settings.batch_size):
                detector.predict(
                    decoded[i : i + settings.batch_size],
                    imgsz=settings.imgsz,
                    conf=settings.conf,
                    iou=settings.iou,
                    max_det=settings.max_det,
                    device=device,
                    half=half,
                    verbose=False,
                )
            synchronize(device)
            floor_times.append(time.perf_counter() - start)
        detect_stage, detect_floor, detect_predictor = (
            min(stage_times),
            min(floor_times),
            min(predictor_times),
        )

        detections = detections.reset_index(drop=True)
        if detections.empty:
            raise SystemExit(
                "the detector found no objects to embed; use trained weights or a lower conf"
            )
        embed_objects(
            detections.head(args.embed_batch),
            clip,
            batch_size=args.embed_batch,
            loader_workers=args.workers,
        )
        stage_times, floor_times = [], []
        for _ in range(args.repeats):
            synchronize(device)
            start = time.perf_counter()
            embed_objects(
                detections, clip, batch_size=args.embed_batch, loader_workers=args.workers
            )
            synchronize(device)
            stage_times.append(time.perf_counter() - start)
            # The floor: the same crops, already preprocessed on the model's device, encoded
            # at the same batch sizes.
            crops = [
                clip.crop_batch(
                    np.asarray(images.open_rgb(path)), rows[["x1", "y1", "x2", "y2"]].to_numpy()
                )
                for path, rows in detections.groupby("image_path", sort=False)
            ]
            batch = torch.cat(crops)
            synchronize(device)
            start = time.perf_counter()
            for i in range(0, len(batch), args.embed_batch):
                clip.encode_batch(batch[i : i + args.embed_batch])
            synchronize(device)
            floor_times.append(time.perf_counter() - start)
        embed_stage, embed_floor = min(stage_times), min(floor_times)

    n_objects = len(detections)
    print(
        f"device {device}; detector {Path(detector_path).name}; clip {clip.identity}; {args.images} images, {n_objects} objects"
    )
    print(
        f"detect: stage {detect_stage:.2f} s, floor {detect_floor:.2f} s, ratio {detect_stage / detect_floor:.3f}, "
        f"{args.images / detect_stage:.1f} images/s (floor {args.images / detect_floor:.1f})"
    )
    print(
        f"detect through model.predict (the stage before its batched path): {detect_predictor:.2f} s, "
        f"{args.images / detect_predictor:.1f} images/s; batched / predict images/s "
        f"{detect_predictor / detect_stage:.3f}"
    )
    print(
        f"embed:  stage {embed_stage:.2f} s, floor {embed_floor:.2f} s, ratio {embed_stage / embed_floor:.3f}, "
        f"{n_objects / embed_stage:.1f} crops/s (floor {n_objects / embed_floor:.1f})"
    )
    both = (detect_stage + embed_stage) / (detect_floor + embed_floor)
    print(f"detect+embed ratio {both:.3f} (target <= 1.10: {'met' if both <= 1.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
