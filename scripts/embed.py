"""Rule embed: image embeddings of one shard's objects (rare_objects.backends.embedders)."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.backends import embedders  # noqa: E402
from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402
from rare_objects.stages.embedding import embed_objects  # noqa: E402

# The chosen family's settings, resolved as the rule's params were (model, pretrained).
settings = embedders.settings(snakemake.config)
family = embedders.get(settings["backend"])
# the params plus the speed-only keys (batch_size, loader_workers), read untracked
embedder = rule_section(snakemake, "embedder")
image_cfg = rule_section(snakemake, "images")
model = family.load(settings, snakemake.params.device, embedder["precision"])
# embedder.storage, from the config: the param leaves out float32, the default (embedders.tracked)
storage = settings["storage"]
detections = pd.read_parquet(snakemake.input.detections)
log.info(
    "shard %s: %d objects, model %s on %s",
    snakemake.wildcards.shard,
    len(detections),
    model.identity,
    model.device,
)

table = embed_objects(
    detections,
    model,
    batch_size=embedder["batch_size"],
    open_image=images.opener(image_cfg),
    loader_workers=image_cfg["loader_workers"],
    storage=storage,
)
schemas.write_embeddings(
    table, snakemake.output[0], model=model.identity, dim=model.dim, storage=storage
)
log.info("shard %s: %d embeddings written", snakemake.wildcards.shard, table.num_rows)
