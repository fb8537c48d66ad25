"""Rule outliers: the configured outlier detectors on all objects and per class, OR-combined."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import schemas  # noqa: E402
from rare_objects.io.embeddings import read_embedding_matrix  # noqa: E402
from rare_objects.stages.outliers import class_aware_outliers  # noqa: E402

settings = snakemake.params.outliers
ids, matrix = read_embedding_matrix(snakemake.input.embeddings)
classes = pd.concat(
    [pd.read_parquet(p, columns=["object_id", "class_name"]) for p in snakemake.input.detections],
    ignore_index=True,
).set_index("object_id")["class_name"]
class_names = classes.reindex(ids["object_id"]).to_numpy()
log.info(
    "%s on %d objects x %d dims, %d classes, seed %d",
    "+".join(settings["detectors"]),
    matrix.shape[0],
    matrix.shape[1],
    len(set(class_names)),
    snakemake.params.seed,
)

result = class_aware_outliers(matrix, class_names, settings, seed=snakemake.params.seed)
result.insert(0, "object_id", ids["object_id"].to_numpy())
schemas.write_table(
    result,
    schemas.outliers_schema(settings["detectors"]),
    snakemake.output[0],
)
log.info("%d outliers of %d objects", int(result["is_outlier"].sum()), len(result))
