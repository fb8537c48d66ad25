"""The embed stage's batched preprocessing against open_clip's own, with the demo's CLIP on demo crops."""

from __future__ import annotations

import numpy as np

from rare_objects.backends import embedders
from rare_objects.demo.scenes import generate_scenes
from rare_objects.io import images


def test_demo_embeddings_agree_with_open_clip_preprocessing(demo_models, tmp_path):
    clip = embedders.load({"preset": "demo"}, "cpu", demo_models_dir=demo_models)
    assert clip._tensor_steps is not None  # the batched (roi_align) path runs
    truth = generate_scenes(tmp_path, n_images=12, seed=5, folders=1)
    fast, reference = [], []
    for path, rows in truth.groupby("image_path", sort=False):
        image = images.open_rgb(tmp_path / path)
        boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy()
        fast.append(clip.encode_batch(clip.crop_batch(np.asarray(image), boxes)))
        reference.append(clip.encode_images([images.crop(image, box) for box in boxes]))
    fast, reference = np.concatenate(fast), np.concatenate(reference)
    cosine = (fast * reference).sum(axis=1)
    assert len(cosine) >= 20
    assert cosine.mean() >= 0.995, cosine
    assert cosine.min() >= 0.97, cosine
    # the model does tell these crops apart: agreement is not a property of any two crops
    assert (reference * np.roll(reference, 1, axis=0)).sum(axis=1).mean() < cosine.mean() - 0.01
