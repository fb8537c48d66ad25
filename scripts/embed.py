"""Rule embed: open_clip embeddings of one shard's objects."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.runtime import models  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402
from rare_objects.stages.embedding import embed_objects  # noqa: E402

# the params plus the speed-only keys (batch_size, loader_workers), read untracked
embedder = rule_section(snakemake, "embedder")
image_cfg = rule_section(snakemake, "images")
clip = models.load_clip(
    snakemake.params.model,
    snakemake.params.pretrained,
    snakemake.params.device,
    embedder["precision"],
)
detections = pd.read_parquet(snakemake.input.detections)
log.info(
    "shard %s: %d objects, model %s on %s",
    snakemake.wildcards.shard,
    len(detections),
    clip.identity,
    clip.device,
)

table = embed_objects(
    detections,
    clip,
    batch_size=embedder["batch_size"],
    open_image=lambda p: images.open_rgb(
        p, max_pixels=image_cfg["max_pixels"], min_side=image_cfg["min_side"]
    ),
    loader_workers=image_cfg["loader_workers"],
)
schemas.write_table(
    table,
    schemas.embeddings_schema(clip.dim),
    snakemake.output[0],
    {"embedding_model": clip.identity, "dim": clip.dim},
)
log.info("shard %s: %d embeddings written", snakemake.wildcards.shard, table.num_rows)
