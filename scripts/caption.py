"""Rule caption: VLM or simple captions of one partition of the selected objects."""

import pandas as pd

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.backends.captioning import make_captioner  # noqa: E402
from rare_objects.io import schemas  # noqa: E402
from rare_objects.runtime import models  # noqa: E402
from rare_objects.stages.captions import all_failed, caption_objects  # noqa: E402

part = int(snakemake.wildcards.part)
settings = dict(snakemake.params.captions)
backend = settings["backend"]
selection = pd.read_parquet(snakemake.input.selection)
objects = selection[selection["selected"] & (selection["caption_partition"] == part)].reset_index(
    drop=True
)
log.info(
    "partition %d: %d objects, %d for the VLM (%s)",
    part,
    len(objects),
    int(objects["needs_vlm"].sum()),
    backend,
)

captioner = None
if backend != "none" and objects["needs_vlm"].any():
    if backend == "transformers":
        settings["device"] = models.resolve_device(snakemake.params.device)
    captioner = make_captioner(backend, settings)
batch = (
    settings["transformers"]["batch_size"]
    if backend == "transformers"
    else settings["openai"]["concurrency"] * 2
)
result = caption_objects(objects, captioner, batch_size=batch, log=log)
schemas.write_table(
    result,
    schemas.CAPTIONS,
    snakemake.output[0],
)
failed = result["error"].notna().sum()
log.info("partition %d: %d captions, %d failed", part, len(result), failed)
if all_failed(result):
    raise SystemExit(
        f"every VLM caption of partition {part} failed (first error: {result['error'].dropna().iloc[0]}); rerun to retry"
    )
