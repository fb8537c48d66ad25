"""Rule report_galleries: the report's crop galleries (capped per group) and the rejected-images table."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import atomic, images, schemas  # noqa: E402
from rare_objects.report import gallery  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402

settings = snakemake.params.report
image_cfg = rule_section(snakemake, "images")  # loader_workers read untracked
captions = schemas.read_parts(snakemake.input.captions, ["object_id", "description"])
concepts = pd.read_parquet(
    snakemake.input.concepts, columns=["object_id", "top_concept", "is_final_outlier"]
)
items = gallery.choose_items(
    snakemake.input.outliers, concepts, snakemake.params.targets, settings["max_per_group"]
)
log.info("gallery items: %s", items.groupby("gallery").size().to_dict())
gallery.write_galleries(
    items,
    snakemake.input.detections,
    captions,
    concepts,
    {
        "outliers_by_class": snakemake.output.outliers,
        "final_outliers_by_concept": snakemake.output.final_outliers,
        "targets": snakemake.output.targets,
    },
    snakemake.output.index,
    open_image=images.opener(image_cfg),
    crop_size=settings["crop_size"],
    workers=image_cfg["loader_workers"],
)
rejects = schemas.read_parts(snakemake.input.rejects)
sections, note = gallery.rejected_frames(rejects, settings["max_rejected_per_reason"])
atomic.write_text(snakemake.output.rejected, gallery.html_tables("Rejected images", sections, note))
log.info("%d rejected images tabled", len(rejects))
