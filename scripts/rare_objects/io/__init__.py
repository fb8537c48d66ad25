"""Shared input and output: images (the one place images are read, cropped, encoded), schemas (every
parquet table), embeddings (streaming reads), sources (the manifest and its shards), atomic
(tmp-then-rename writes) and names (file names made from data)."""
