"""The stages of the workflow, one module each in pipeline order: detection, embedding, outliers,
selection (targets, diversity), captions, concepts, training_selection. Plain functions over
DataFrames and arrays; no Snakemake. The nearest-neighbour search that outliers and diversity
share is a service beside them (:mod:`rare_objects.neighbors`)."""
