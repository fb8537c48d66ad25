"""Rule detect: the configured object detector's detections of one shard's images, as rows."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.backends import object_detectors  # noqa: E402
from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.runtime import devices  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402
from rare_objects.stages.detection import DetectSettings, detect_images  # noqa: E402

# The params (the chosen family's keys: rules/common.smk, detector_settings) plus the
# speed-only keys (batch_size, loader_workers) and the family's name, read untracked: the
# params name the family by its own keys.
detector_cfg = {
    **rule_section(snakemake, "detector"),
    "backend": snakemake.config["detector"]["backend"],
}
image_cfg = rule_section(snakemake, "images")
backend = object_detectors.get(detector_cfg["backend"])
device = devices.resolve_device(snakemake.params.device)
settings = DetectSettings.from_config(detector_cfg, device)
detector = backend.load(detector_cfg, settings)
manifest = pd.DataFrame(snakemake.params.manifest)
log.info(
    "shard %s: %d images, %s detector, device %s",
    snakemake.wildcards.shard,
    len(manifest),
    backend.name,
    device,
)

detections, image_table, rejects = detect_images(
    manifest,
    detector,
    settings,
    open_image=images.opener(image_cfg),
    loader_workers=image_cfg["loader_workers"],
)
meta = {
    **{key.replace(".", "_"): path for key, path in backend.model_paths(detector_cfg).items()},
    "rare_objects_schema": schemas.SCHEMA_VERSION,
}
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
