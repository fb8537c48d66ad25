"""The stages of the workflow, one module each in pipeline order: detection, embedding, outliers
(with neighbors, the nearest-neighbour search the stages share), selection (targets, diversity),
captions, concepts, training_selection. Plain functions over DataFrames and arrays; no Snakemake."""
