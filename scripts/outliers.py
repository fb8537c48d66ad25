"""Rule outliers: the configured outlier detectors on all objects and per class, OR-combined."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import schemas  # noqa: E402
from rare_objects.stages.outliers import class_aware_outliers, read_objects  # noqa: E402

# outliers.device is a param only off the CPU (rules/common.smk: search_device_params)
settings = {
    **snakemake.params.outliers,
    "device": getattr(snakemake.params, "search_device", "cpu"),
}
object_ids, matrix, class_names = read_objects(
    snakemake.input.embeddings, snakemake.input.detections
)
log.info(
    "%s on %d objects x %d dims, %d classes, seed %d",
    "+".join(settings["detectors"]),
    matrix.shape[0],
    matrix.shape[1],
    len(set(class_names)),
    snakemake.params.seed,
)

result = class_aware_outliers(matrix, class_names, settings, seed=snakemake.params.seed)
result.insert(0, "object_id", object_ids)
schemas.write_table(
    result,
    schemas.outliers_schema(settings["detectors"]),
    snakemake.output[0],
)
log.info("%d outliers of %d objects", int(result["is_outlier"].sum()), len(result))
