"""What every rule script does first: log to the rule's log, stay offline, use its threads."""

from __future__ import annotations

import os
from pathlib import Path

from rare_objects.runtime import offline
from rare_objects.runtime.logs import setup_rule_logging


def start_rule(snakemake, cache_dir: str | None = None):
    """Prepare a rule script's process; returns its logger."""
    log = setup_rule_logging(snakemake.log[0] if snakemake.log else None)
    offline.configure(cache_dir or default_cache_dir(snakemake))
    threads = max(1, int(getattr(snakemake, "threads", 1) or 1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # MKL's results otherwise depend on the alignment of its buffers, so the same
    # inputs could give embeddings that differ in the last bits from run to run.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    log.info("rule %s started (threads=%d)", snakemake.rule, threads)
    return log


def default_cache_dir(snakemake) -> Path:
    configured = snakemake.config.get("cache_dir")
    if configured:
        return Path(configured)
    return Path(
        os.environ.get("RARE_OBJECTS_CACHE", Path(snakemake.config["results"]).parent / ".cache")
    )
