"""Rule build_demo_clip: the demo's tiny open_clip model, built from a config with a seed."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.demo.tiny_models import build_demo_clip  # noqa: E402

build_demo_clip(snakemake.output[0], seed=snakemake.params.seed, threads=snakemake.threads)
log.info("tiny CLIP written to %s", snakemake.output[0])
