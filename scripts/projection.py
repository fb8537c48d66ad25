"""Rule projection: the map of the embeddings (the explorer's and tsne.png), the 2-D t-SNE or UMAP
of the shown objects."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.report import projection  # noqa: E402

outliers = pd.read_parquet(
    snakemake.input.outliers,
    columns=["object_id", "class_name", "score_global", "score_class", "is_outlier"],
)
concepts = pd.read_parquet(snakemake.input.concepts, columns=["object_id", "is_final_outlier"])
frame = projection.project(
    snakemake.input.embeddings,
    outliers,
    concepts,
    snakemake.params.targets,
    snakemake.params.projection,
    snakemake.params.seed,
    threads=snakemake.threads,
)
projection.write_projection(frame, snakemake.output.table, total_objects=len(outliers))
projection.plot_projection(frame, snakemake.output.plot, total_objects=len(outliers))
log.info(
    "%s map of %d objects written to %s",
    snakemake.params.projection["method"],
    len(frame),
    snakemake.output.table,
)
