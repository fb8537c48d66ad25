"""Rule explorer: explorer.html and its thumbnail sprite sheets (explorer_files/)."""

import pandas as pd
import pyarrow.parquet as pq

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.report import explorer  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402

settings = snakemake.params.explorer
image_cfg = rule_section(snakemake, "images")  # loader_workers read untracked
projection = pd.read_parquet(snakemake.input.projection)
total = int(pq.read_schema(snakemake.input.projection).metadata[b"total_objects"])
captions = schemas.read_parts(snakemake.input.captions, ["object_id", "description"])
concepts = pd.read_parquet(
    snakemake.input.concepts, columns=["object_id", "top_concept", "is_final_outlier"]
)
points = explorer.build_explorer(
    projection,
    snakemake.input.detections,
    snakemake.input.outliers,
    captions,
    concepts,
    snakemake.params.targets,
    snakemake.output.html,
    snakemake.output.sprites,
    open_image=images.opener(image_cfg),
    total_objects=total,
    thumbnail_size=settings["thumbnail_size"],
    per_sheet=settings["thumbnails_per_sheet"],
    workers=image_cfg["loader_workers"],
)
log.info("explorer with %d points written to %s", points, snakemake.output.html)
