"""Rule export_results: detection_results.json, statistics.json and the results tree."""

import json
from pathlib import Path

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects import export, images  # noqa: E402
from rare_objects import report_files as report  # noqa: E402


def read_all(paths, columns=None):
    return pd.concat([pd.read_parquet(p, columns=columns) for p in paths], ignore_index=True)


def optional(name):
    return pd.read_parquet(snakemake.input[name]) if name in snakemake.input.keys() else None


out_dir = Path(snakemake.output.results).parent
targets = snakemake.params.targets
image_cfg = snakemake.params.images
detections = read_all(snakemake.input.detections)
image_table = read_all(snakemake.input.images)
rejects = read_all(snakemake.input.rejects)
frame = export.assemble(
    detections,
    pd.read_parquet(snakemake.input.outliers),
    targets,
    selection=optional("selection"),
    captions=optional("captions"),
    concepts=optional("concepts"),
)
switches = export.per_object_file_switches(snakemake.params.export, snakemake.params.max_images)
log.info("exporting %d objects (%d outliers); per-object files: %s", len(frame), int(frame["is_outlier"].sum()), switches)

crop_paths = export.export_tree(
    frame,
    out_dir,
    targets,
    switches,
    link_mode=snakemake.params.export["link_mode"],
    max_inliers=snakemake.params.export["max_inlier_images"],
    seed=snakemake.params.seed,
    write_desc=lambda row, crop, path: path.write_text(
        report.format_desc(export.desc_record(row, crop)), encoding="utf-8"
    ),
    write_plot=lambda row, path: report.plot_probabilities(
        list(row["concepts"]), list(row["probabilities"]), path, row["crop_name"]
    ),
    open_image=lambda p: images.open_rgb(p, max_pixels=image_cfg["max_pixels"], min_side=image_cfg["min_side"]),
)

count = export.write_json_array(export.result_records(frame, crop_paths), snakemake.output.results)
for target, path in zip(targets, snakemake.output.target_results):
    matching = frame[frame["target_matches"].map(lambda ts, t=target: t in ts)]
    export.write_json_array(export.result_records(matching, crop_paths), path)
stats = export.statistics(frame, image_table, rejects, targets)
Path(snakemake.output.statistics).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
rejects.to_csv(snakemake.output.rejects, index=False)
log.info("wrote %d results, %d rejected images listed", count, len(rejects))
