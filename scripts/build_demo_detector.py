"""Rule build_demo_detector: a tiny YOLO trained briefly on generated street scenes."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.demo.tiny_models import build_demo_detector  # noqa: E402

build_demo_detector(
    snakemake.output[0],
    snakemake.params.work_dir,
    seed=snakemake.params.seed,
    epochs=snakemake.params.epochs,
)
log.info("tiny detector written to %s", snakemake.output[0])
