"""Rule export_results: detection_results.json, statistics.json, coco_detections.json and the results tree."""

import json
from pathlib import Path

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.export import coco, export_shards  # noqa: E402
from rare_objects.export.json_writers import ResultsWriter, target_results_writers  # noqa: E402
from rare_objects.export.rows import read_object_tables  # noqa: E402
from rare_objects.export.statistics import StatisticsWriter, image_counts  # noqa: E402
from rare_objects.export.tree import TreeSettings, TreeWriter  # noqa: E402
from rare_objects.io import atomic, images, schemas  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402


def optional(name):
    return snakemake.input[name] if name in snakemake.input.keys() else None


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


targets = snakemake.params.targets
image_cfg = rule_section(snakemake, "images")  # loader_workers read untracked
export_cfg = snakemake.params.export
tree_settings = TreeSettings.from_config(
    export_cfg, snakemake.params.max_images, snakemake.params.seed
)
log.info("results tree: %s", tree_settings)
tables = read_object_tables(
    snakemake.input.outliers, optional("selection"), optional("captions"), optional("concepts")
)
rejects = schemas.read_parts(snakemake.input.rejects)
coco_settings = export_cfg["coco"]
coco_writer = coco.CocoWriter(
    snakemake.output.coco,
    objects=coco_settings["objects"],
    data_root=None
    if coco_settings["absolute_paths"]
    else (coco_settings["data_root"] or snakemake.params.input_path),
    categories={
        int(index): name for index, name in read_json(snakemake.input.detector_classes).items()
    },
)
statistics = StatisticsWriter(
    snakemake.output.statistics,
    targets,
    images=image_counts(snakemake.input.images),
    rejects=rejects,
    extra={"training_selection": read_json(snakemake.input.training_selection)}
    if optional("training_selection")
    else None,
)
n_objects = export_shards(
    snakemake.input.detections,
    tables,
    targets=targets,
    writers=[
        # first: it tells the shard where each crop went, which the records below hold
        TreeWriter(
            Path(snakemake.output.results).parent,
            targets,
            tree_settings,
            open_image=images.opener(image_cfg),
            workers=image_cfg["loader_workers"],
        ),
        ResultsWriter(snakemake.output.results),
        *target_results_writers(targets, snakemake.output.target_results),
        coco_writer,
        statistics,
    ],
)
with atomic.atomic_path(snakemake.output.rejects) as tmp:
    rejects.to_csv(tmp, index=False)
log.info(
    "wrote %d results (%d outliers), %d rejected images listed",
    n_objects,
    statistics.counts.outliers,
    len(rejects),
)
log.info(
    "coco_detections.json: %d annotations on %d images (objects: %s)",
    coco_writer.n_annotations,
    coco_writer.n_images,
    ", ".join(coco_settings["objects"]),
)
