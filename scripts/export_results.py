"""Rule export_results: detection_results.json, statistics.json, coco_detections.json and the results tree."""

import json
from pathlib import Path

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects import export  # noqa: E402
from rare_objects.export import coco  # noqa: E402
from rare_objects.export import report_files as report  # noqa: E402
from rare_objects.io import images  # noqa: E402


def optional(name):
    return snakemake.input[name] if name in snakemake.input.keys() else None


targets = snakemake.params.targets
image_cfg = snakemake.params.images
switches = export.per_object_file_switches(snakemake.params.export, snakemake.params.max_images)
log.info("per-object files: %s", switches)
tables = export.read_object_tables(
    snakemake.input.outliers, optional("selection"), optional("captions"), optional("concepts")
)
coco_settings = snakemake.params.export["coco"]
coco_writer = coco.CocoWriter(
    snakemake.output.coco,
    objects=coco_settings["objects"],
    data_root=None
    if coco_settings["absolute_paths"]
    else (coco_settings["data_root"] or snakemake.params.input_path),
    categories={
        int(index): name
        for index, name in json.loads(
            Path(snakemake.input.detector_classes).read_text(encoding="utf-8")
        ).items()
    },
)
counts = export.export_shards(
    snakemake.input.detections,
    tables,
    targets,
    Path(snakemake.output.results).parent,
    snakemake.output.results,
    snakemake.output.target_results,
    switches,
    max_inliers=snakemake.params.export["max_inlier_images"],
    seed=snakemake.params.seed,
    writers=[coco_writer],
    link_mode=snakemake.params.export["link_mode"],
    write_desc=lambda row, crop, path: path.write_text(
        report.format_desc(export.desc_record(row, crop)), encoding="utf-8"
    ),
    write_plot=lambda row, path: report.plot_probabilities(
        list(row["concepts"]), list(row["probabilities"]), path, row["crop_name"]
    ),
    open_image=lambda p: images.open_rgb(
        p, max_pixels=image_cfg["max_pixels"], min_side=image_cfg["min_side"]
    ),
)
rejects = pd.concat([pd.read_parquet(p) for p in snakemake.input.rejects], ignore_index=True)
stats = counts.statistics(*export.image_counts(snakemake.input.images), rejects, targets)
if optional("training_selection"):
    stats["training_selection"] = json.loads(
        Path(snakemake.input.training_selection).read_text(encoding="utf-8")
    )
Path(snakemake.output.statistics).write_text(
    json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
)
rejects.to_csv(snakemake.output.rejects, index=False)
log.info(
    "wrote %d results (%d outliers), %d rejected images listed",
    counts.total,
    counts.outliers,
    len(rejects),
)
log.info(
    "coco_detections.json: %d annotations on %d images (objects: %s)",
    coco_writer.n_annotations,
    coco_writer.n_images,
    ", ".join(coco_settings["objects"]),
)
