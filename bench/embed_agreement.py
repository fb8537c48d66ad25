"""Agreement of the embed stage's batched preprocessing with open_clip's own, and its device operations.

The embed stage cuts and resizes every crop of an image in one
``torchvision.ops.roi_align`` on the model's device (``ClipModel.crop_batch``);
open_clip's own preprocessing resizes each crop with PIL (bicubic,
antialiased). Baseline in the same run: open_clip's preprocessing of the same
crops (``ClipModel.encode_images``). Printed: the cosine similarity of the two
embeddings of each crop (mean, 1st percentile, minimum; target mean >= 0.995),
for

- demo crops: the ground-truth boxes of generated demo scenes, the demo's tiny CLIP;
- generated crops: random boxes of 4 to 600 pixels on the same scenes, a
  real-size ViT-B/32 with random weights;

and the number of device operations (``torch.profiler``, aten ops) of one
image's ``crop_batch`` at 8 and 64 boxes. The clip-tiny.pt demo checkpoint is looked up in
``$RARE_OBJECTS_TEST_CACHE/models`` (default tests/.cache/models).

    python bench/embed_agreement.py [--images 24] [--random-crops 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from _common import machine  # noqa: E402


def compare(clip, pil_images, boxes_per_image):
    """Per crop: the cosine of the stage's and open_clip's embedding, the cosine of open_clip's
    embeddings of this crop and the next (unrelated crops: how much the model tells crops apart),
    and the mean absolute difference of the two model inputs in 8-bit levels."""
    import numpy as np
    import torch

    from rare_objects.io import images

    fast, reference, level_diff = [], [], []
    std = clip._std.flatten().cpu().numpy()[None, :, None, None]
    for image, boxes in zip(pil_images, boxes_per_image):
        if len(boxes) == 0:
            continue
        batch = clip.crop_batch(np.asarray(image), boxes)
        crops = [images.crop(image, box) for box in boxes]
        inputs = torch.stack([clip.preprocess(c) for c in crops])
        level_diff.append(
            (np.abs(batch.cpu().numpy() - inputs.numpy()) * std * 255).mean(axis=(1, 2, 3))
        )
        fast.append(clip.encode_batch(batch))
        reference.append(clip.encode_images(crops))
    fast, reference = np.concatenate(fast), np.concatenate(reference)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    fast, reference = unit(fast), unit(reference)
    return (
        (fast * reference).sum(axis=1),
        (reference * np.roll(reference, 1, axis=0)).sum(axis=1),
        np.concatenate(level_diff),
    )


def summary(name: str, result) -> str:
    import numpy as np

    cos, unrelated, levels = result
    verdict = "met" if cos.mean() >= 0.995 else "MISSED"
    return (
        f"{name}: {len(cos)} crops\n"
        f"  cosine stage vs open_clip: mean {cos.mean():.5f}, 1st percentile {np.percentile(cos, 1):.5f}, "
        f"min {cos.min():.5f} (target mean >= 0.995: {verdict})\n"
        f"  for scale, cosine of unrelated crops (open_clip): mean {unrelated.mean():.5f}\n"
        f"  model input difference: mean {levels.mean():.2f} 8-bit levels per value "
        f"(99th percentile of crops {np.percentile(levels, 99):.2f})"
    )


def device_ops(clip, image, n_boxes: int) -> int:
    """aten operations that one ``crop_batch`` call of ``n_boxes`` boxes runs."""
    import numpy as np
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(n_boxes)
    height, width = image.shape[:2]
    xy = rng.uniform(0, [width, height], size=(n_boxes, 2))
    wh = rng.uniform(4, 200, size=(n_boxes, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    clip.crop_batch(image, boxes)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        clip.crop_batch(image, boxes)
    return sum(1 for e in prof.events() if e.name.startswith("aten::"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--random-crops", type=int, default=256)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    from rare_objects.runtime import offline

    offline.configure(REPO / ".cache" / "bench")
    import numpy as np
    import torch

    from rare_objects.backends.embedders import open_clip as open_clip_embedder
    from rare_objects.demo.scenes import generate_scenes
    from rare_objects.io import images

    print(f"machine: {machine()}")
    cache = Path(os.environ.get("RARE_OBJECTS_TEST_CACHE", REPO / "tests" / ".cache"))
    with tempfile.TemporaryDirectory() as tmp:
        truth = generate_scenes(tmp, n_images=args.images, seed=args.seed, folders=1)
        paths = list(dict.fromkeys(truth["image_path"]))
        pil = [images.open_rgb(Path(tmp) / p) for p in paths]
        gt_boxes = [
            truth.loc[truth["image_path"] == p, ["x1", "y1", "x2", "y2"]].to_numpy() for p in paths
        ]

        demo_ckpt = cache / "models" / "clip-tiny.pt"
        if demo_ckpt.exists():
            demo = open_clip_embedder.load_clip(
                open_clip_embedder.DEMO_CLIP_NAME, str(demo_ckpt), "cpu"
            )
            print(summary(f"demo crops, {demo.identity}", compare(demo, pil, gt_boxes)))
        else:
            print(f"demo crops: {demo_ckpt} not found (build the test cache first)")

        torch.manual_seed(0)
        vit = open_clip_embedder.load_clip("ViT-B-32", None, "cpu")
        rng = np.random.default_rng(args.seed)
        per_image = max(1, args.random_crops // len(pil))
        random_boxes = []
        for image in pil:
            width, height = image.size
            size = np.exp(rng.uniform(np.log(4), np.log(600), size=(per_image, 2)))
            xy = rng.uniform(0, 1, size=(per_image, 2)) * np.maximum([width, height] - size, 1)
            random_boxes.append(np.concatenate([xy, xy + size], axis=1))
        print(
            summary(
                f"generated crops (4-600 px), {vit.identity} random weights",
                compare(vit, pil, random_boxes),
            )
        )

        frame = np.asarray(pil[0])
        counts = {n: device_ops(vit, frame, n) for n in (8, 64)}
        print(f"device ops of one image's crop_batch: 8 boxes {counts[8]}, 64 boxes {counts[64]}")


if __name__ == "__main__":
    main()
