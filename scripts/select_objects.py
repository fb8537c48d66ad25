"""Rule select_objects: outliers and target matches, then the diversity filter."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import schemas  # noqa: E402
from rare_objects.io.embeddings import read_embeddings_of  # noqa: E402
from rare_objects.stages.selection import select_objects  # noqa: E402

columns = ["object_id", "image_id", "image_path", "confidence", "x1", "y1", "x2", "y2"]
boxes = schemas.read_parts(snakemake.input.detections, columns)
flags = pd.read_parquet(
    snakemake.input.outliers, columns=["object_id", "class_name", "is_outlier", "score_global"]
)
# One row per valid embedding, in their order (the outliers stage wrote them so); only
# the candidates' embeddings are read, block by block, never the whole matrix.
objects = flags.merge(boxes, on="object_id", how="left")
settings = snakemake.params.selection
table = select_objects(
    objects,
    lambda object_ids: read_embeddings_of(snakemake.input.embeddings, object_ids),
    snakemake.params.targets,
    include=settings["include"],
    vlm_for=snakemake.params.vlm_for,
    similarity_threshold=settings["similarity_threshold"],
    max_per_cluster=settings["max_per_cluster"],
    partitions=snakemake.params.partitions,
    seed=snakemake.params.seed,
    exact_max=snakemake.params.exact_max,
)
schemas.write_table(
    table,
    schemas.SELECTION,
    snakemake.output[0],
)
log.info(
    "%d candidates, %d selected (%d for the VLM); reasons: %s",
    int(table["candidate"].sum()),
    int(table["selected"].sum()),
    int(table["needs_vlm"].sum()),
    table["reason"].value_counts().to_dict(),
)
