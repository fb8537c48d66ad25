"""Rule report_overview: statistics.json and the rules' timing as the report's tables."""

import json
from pathlib import Path

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import atomic  # noqa: E402
from rare_objects.report import gallery, timing  # noqa: E402

statistics = json.loads(Path(snakemake.input.statistics).read_text(encoding="utf-8"))
atomic.write_text(
    snakemake.output.statistics,
    gallery.html_tables(
        "Statistics", gallery.statistics_frames(statistics), "From statistics.json."
    ),
)
summary = timing.summarise_benchmarks(list(snakemake.input.benchmarks), snakemake.config["results"])
atomic.write_text(
    snakemake.output.timing,
    gallery.html_tables(
        "Timing per rule",
        [("Rules", summary.round(2))],
        "Wall seconds and peak memory (MB) from the rules' benchmark files.",
    ),
)
log.info("overview tables written (%d rules timed)", len(summary))
