"""timing.txt from the benchmark files Snakemake writes for each job."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def summarise_benchmarks(paths: list[str], results_dir: str) -> pd.DataFrame:
    """Per rule: jobs, total and longest wall seconds, peak memory (MB)."""
    rows = []
    bench_root = Path(results_dir) / "benchmarks"
    for path in paths:
        table = pd.read_csv(path, sep="\t")
        rel = (
            Path(path).relative_to(bench_root)
            if Path(path).is_relative_to(bench_root)
            else Path(path)
        )
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        rows.append(
            {
                "rule": rule,
                "s": float(table["s"].iloc[0]),
                "max_rss": pd.to_numeric(table["max_rss"].iloc[0], errors="coerce"),
            }
        )
    frame = pd.DataFrame(rows)
    return (
        frame.groupby("rule", sort=False)
        .agg(
            jobs=("s", "size"),
            total_s=("s", "sum"),
            longest_s=("s", "max"),
            peak_rss_mb=("max_rss", "max"),
        )
        .reset_index()
    )


def format_timing(summary: pd.DataFrame) -> str:
    lines = [f"{'rule':<20} {'jobs':>5} {'total_s':>10} {'longest_s':>10} {'peak_rss_mb':>12}"]
    for row in summary.itertuples(index=False):
        rss = "n/a" if pd.isna(row.peak_rss_mb) else f"{row.peak_rss_mb:.0f}"
        lines.append(
            f"{row.rule:<20} {row.jobs:>5} {row.total_s:>10.2f} {row.longest_s:>10.2f} {rss:>12}"
        )
    lines.append(f"{'total':<20} {int(summary['jobs'].sum()):>5} {summary['total_s'].sum():>10.2f}")
    return "\n".join(lines) + "\n"
