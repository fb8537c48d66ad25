"""Rule caption: VLM or simple captions of one partition of the selected objects."""

from rare_objects.runtime import end_rule, start_rule

log = start_rule(snakemake)

from rare_objects.backends import captioning  # noqa: E402
from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.runtime.speed_settings import rule_section  # noqa: E402
from rare_objects.stages.captions import all_failed, caption_objects, read_partition  # noqa: E402

part = int(snakemake.wildcards.part)
# the params plus the speed-only keys (batch sizes, concurrency, loader_workers), read untracked
settings = rule_section(snakemake, "captions")
image_cfg = rule_section(snakemake, "images")
backend = captioning.get_backend(settings["backend"])
objects = read_partition(snakemake.input.selection, part)
log.info(
    "partition %d: %d objects, %d for the VLM (%s)",
    part,
    len(objects),
    int(objects["needs_vlm"].sum()),
    backend.name,
)

captioner = None
if objects["needs_vlm"].any():
    device = backend.device(snakemake.params.device)
    # the section is the workflow's validated one (defaults filled): no second validation
    captioner = backend.make(settings, device)
result = caption_objects(
    objects,
    captioner,
    batch_size=backend.batch_size(settings),
    log=log,
    open_image=images.opener(image_cfg),
    loader_workers=image_cfg["loader_workers"],
)
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
# a captioner that holds connections or processes (the openai backend) closes them here:
# end_rule runs no exit handler
close = getattr(captioner, "close", None)
if close is not None:
    close()
end_rule(log)
