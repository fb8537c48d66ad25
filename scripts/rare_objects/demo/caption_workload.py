"""A workload for the caption stage alone: images and a selection table that sends every
object to the VLM, so that the ``caption`` rule can run by itself (``--allowed-rules
caption``) for a benchmark (bench/caption_stage.py) or a test."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd


def write_caption_workload(
    root: str | os.PathLike,
    n_images: int,
    per_image: int,
    partitions: int = 1,
    image_size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> tuple[Path, int]:
    """``root/images`` (JPEG noise) and ``root/results/tables/selection.parquet`` with
    ``per_image`` boxes of distinct sizes per image, spread over ``partitions``;
    returns (the images folder, the number of crops)."""
    from PIL import Image

    from rare_objects.io import schemas
    from rare_objects.io.sources import image_id_for
    from rare_objects.stages.selection import caption_partition

    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    width, height = image_size
    rows = []
    for i in range(n_images):
        path = images / f"frame-{i:06d}.jpg"
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=80)
        for k in range(per_image):
            left = (7 * k) % max(1, width // 2)
            rows.append(
                {
                    "object_id": f"frame-{i:06d}-{k:02d}",
                    "class_name": "car",
                    "is_outlier": True,
                    "target_matches": [],
                    "is_yolo_potential": False,
                    "candidate": True,
                    "cluster_id": len(rows),
                    "selected": True,
                    "reason": "outlier",
                    "needs_vlm": True,
                    "caption_partition": 0,  # set below, as the selection stage does
                    "image_path": str(path),
                    "confidence": 0.9,
                    "x1": float(left),
                    "y1": 0.0,
                    "x2": float(left + 20 + 3 * k + i % 3),
                    "y2": float(min(height, 30 + k)),
                    "priority": float(-len(rows)),
                }
            )
    frame = pd.DataFrame(rows)
    image_ids = frame["image_path"].map(
        lambda p: image_id_for(Path(p).relative_to(images).as_posix())
    )
    frame["caption_partition"] = caption_partition(image_ids, partitions)
    tables = root / "results" / "tables"
    tables.mkdir(parents=True)
    schemas.write_table(frame, schemas.SELECTION, tables / "selection.parquet")
    return images, len(rows)
