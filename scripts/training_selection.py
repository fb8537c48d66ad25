"""Rule training_selection: the samples to train on (training_selection.mode: mined samples plus a
seeded random fill, or a seeded random share plus a mined share)."""

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
if summary["mode"] == selection.RANDOM_PLUS_MINED:
    log.info(
        "%d of %d samples chosen (%s): %d random of a random share of %d, "
        "%d mined (%s) of a mined share of %d by tier %s%s",
        summary["selected_samples"],
        summary["total_samples"],
        summary["mode"],
        summary["random_samples"],
        summary["random_share"],
        summary["mined_samples"],
        ", ".join(summary["mined_from"]),
        summary["mined_share"],
        ", ".join(f"{tier} {n}" for tier, n in summary["mined_by_tier"].items()),
        f"; MINED SHORT: {summary['mined_short']} missing, not filled at random"
        if summary["mined_short"]
        else "",
    )
else:
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
