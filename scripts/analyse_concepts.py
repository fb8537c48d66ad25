"""Rule analyse_concepts: compare each caption with the concept list."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.backends import text_encoders  # noqa: E402
from rare_objects.io import schemas  # noqa: E402
from rare_objects.stages.concepts import analyse_captions  # noqa: E402

settings = snakemake.params.concepts
captions = schemas.read_parts(snakemake.input.captions, ["object_id", "description"])
# concepts.text_encoder picks the encoder: the embedder's text tower (embedder, clip), the
# bundled MiniLM (minilm) or a sentence-transformers folder
chosen = text_encoders.choose(settings["text_encoder"])
encoder = chosen.load(settings["text_encoder"], snakemake.config, snakemake.params.device)
log.info(
    "text encoder: %s (%s)",
    settings["text_encoder"],
    getattr(encoder, "identity", None) or chosen.name,
)
result = analyse_captions(
    captions["description"], settings["list"], settings["common_classes"], encoder
)
result.insert(0, "object_id", captions["object_id"].array)  # as read: no Python str per row
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
