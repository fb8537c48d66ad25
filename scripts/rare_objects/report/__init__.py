"""What people look at: the 2-D map (projection, tsne), the Snakemake report's galleries, the
standalone explorer page and the timing table. Each reads the stage tables, streaming."""
