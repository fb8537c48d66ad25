"""Rule build_demo_vlm: a tiny Qwen2-VL (local tokenizer, processor) trained briefly on generated crops."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.demo.tiny_vlm import build_tiny_qwen2vl  # noqa: E402

build_tiny_qwen2vl(
    snakemake.output[0],
    seed=snakemake.params.seed,
    train_steps=snakemake.params.train_steps,
    threads=snakemake.threads,
)
log.info("tiny Qwen2-VL written to %s", snakemake.output[0])
