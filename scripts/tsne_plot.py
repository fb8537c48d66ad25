"""Rule tsne_plot: t-SNE of the embeddings, coloured by class, outliers marked."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io.embeddings import read_embedding_matrix  # noqa: E402
from rare_objects.report.tsne import plot_tsne  # noqa: E402

ids, matrix = read_embedding_matrix(snakemake.input.embeddings)
flags = pd.read_parquet(
    snakemake.input.outliers, columns=["object_id", "class_name", "is_outlier"]
).set_index("object_id")
flags = flags.reindex(ids["object_id"])
plot_tsne(
    matrix,
    flags["class_name"].to_numpy(),
    flags["is_outlier"].to_numpy(dtype=bool),
    snakemake.output[0],
    max_points=snakemake.params.tsne["max_points"],
    perplexity=snakemake.params.tsne["perplexity"],
    seed=snakemake.params.seed,
    title=f"t-SNE of {len(ids)} object embeddings",
)
log.info("t-SNE plot written to %s", snakemake.output[0])
