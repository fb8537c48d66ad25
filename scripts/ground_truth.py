"""Rule ground_truth: the ground-truth boxes on the run's images (evaluation.source)."""

import json

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.evaluation import ground_truth  # noqa: E402
from rare_objects.io import atomic, schemas  # noqa: E402

settings = snakemake.params.evaluation
images = schemas.read_parts(snakemake.input.images, ["image_path"])
image_paths = images["image_path"].tolist()
truth, source_stats = ground_truth.load(settings, snakemake.params.input, image_paths)
categories = set(truth["category"]) | set(source_stats.pop("category_names", []))
rare = ground_truth.resolve_rare(settings, sorted(categories))
truth, run_stats = ground_truth.align_to_run(truth, image_paths)
schemas.write_table(ground_truth.to_table(truth), schemas.GROUND_TRUTH, snakemake.output.table)
stats = {
    "source": settings["source"],
    **source_stats,
    **run_stats,
    "boxes": len(truth),
    "categories": truth["category"].value_counts().sort_index().to_dict(),
    "rare_categories": rare,
}
atomic.write_text(snakemake.output.stats, json.dumps(stats, indent=2) + "\n")
log.info(
    "%d ground-truth boxes (%d clipped to their image) on %d of %d run images, from %s",
    len(truth),
    int(truth["clipped"].sum()),
    run_stats["labelled_run_images"],
    run_stats["run_images"],
    settings["source"],
)
if run_stats["run_images_without_labels"]:
    log.warning(
        "%d of the run's %d images have no ground truth: their detections count as unmatched",
        run_stats["run_images_without_labels"],
        run_stats["run_images"],
    )
log.info("rare categories: %s", ", ".join(rare))
