"""Rule report_overview: statistics.json and the rules' timing as the report's tables."""

import json
from pathlib import Path

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.report import gallery, timing  # noqa: E402

statistics = json.loads(Path(snakemake.input.statistics).read_text(encoding="utf-8"))
Path(snakemake.output.statistics).write_text(
    gallery.html_tables(
        "Statistics", gallery.statistics_frames(statistics), "From statistics.json."
    ),
    encoding="utf-8",
)
summary = timing.summarise_benchmarks(list(snakemake.input.benchmarks), snakemake.config["results"])
Path(snakemake.output.timing).write_text(
    gallery.html_tables(
        "Timing per rule",
        [("Rules", summary.round(2))],
        "Wall seconds and peak memory (MB) from the rules' benchmark files.",
    ),
    encoding="utf-8",
)
log.info("overview tables written (%d rules timed)", len(summary))
