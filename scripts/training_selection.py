"""Rule training_selection: the samples to train on (mined samples plus a seeded random fill)."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.stages import training_selection as selection  # noqa: E402

table, summary = selection.training_selection(
    snakemake.input.images,
    snakemake.input.detections,
    snakemake.input.outliers,
    snakemake.input.concepts,
    snakemake.params.input_kind,
    snakemake.params.settings,
    snakemake.params.targets,
    snakemake.params.seed,
)
selection.write_outputs(
    table, summary, snakemake.output.table, snakemake.output.csv, snakemake.output.summary
)
log.info(
    "%d of %d samples chosen (budget %d): %d mined (%s), %d random fill%s",
    summary["selected_samples"],
    summary["total_samples"],
    summary["budget"],
    summary["mined_samples"],
    ", ".join(summary["mined_from"]),
    summary["random_samples"],
    "; OVER BUDGET: the mined samples alone exceed it and are all kept"
    if summary["over_budget"]
    else "",
)
