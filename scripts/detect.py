"""Rule detect: YOLO detections of one shard's images, as rows."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.runtime import models  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402
from rare_objects.stages.detection import DetectSettings, detect_images  # noqa: E402

# the params plus the speed-only keys (batch_size, loader_workers), read untracked
detector_cfg = rule_section(snakemake, "detector")
image_cfg = rule_section(snakemake, "images")
device = models.resolve_device(snakemake.params.device)
settings = DetectSettings.from_config(detector_cfg, device)
model = models.load_detector(snakemake.input.weights)
manifest = pd.DataFrame(snakemake.params.manifest)
log.info("shard %s: %d images, device %s", snakemake.wildcards.shard, len(manifest), device)

detections, image_table, rejects = detect_images(
    manifest,
    model,
    settings,
    open_image=lambda p: images.open_rgb(
        p, max_pixels=image_cfg["max_pixels"], min_side=image_cfg["min_side"]
    ),
    loader_workers=image_cfg["loader_workers"],
)
meta = {"detector_weights": snakemake.input.weights, "rare_objects_schema": schemas.SCHEMA_VERSION}
schemas.write_table(
    detections,
    schemas.DETECTIONS,
    snakemake.output.detections,
    meta,
)
schemas.write_table(
    image_table,
    schemas.IMAGES,
    snakemake.output.images,
    meta,
)
schemas.write_table(
    rejects,
    schemas.REJECTS,
    snakemake.output.rejects,
    meta,
)
log.info(
    "shard %s: %d objects, %d rejected images",
    snakemake.wildcards.shard,
    len(detections),
    len(rejects),
)
