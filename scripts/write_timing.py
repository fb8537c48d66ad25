"""Rule write_timing: timing.txt from the rules' benchmark files."""

from rare_objects.runtime import start_rule

log = start_rule(snakemake)

from rare_objects.io import atomic  # noqa: E402
from rare_objects.report.timing import format_timing, summarise_benchmarks  # noqa: E402

summary = summarise_benchmarks(list(snakemake.input), snakemake.config["results"])
atomic.write_text(snakemake.output[0], format_timing(summary))
log.info("timing of %d jobs written", int(summary["jobs"].sum()))
