"""What every rule script does first: log to the rule's log, stay offline, use its threads."""

from __future__ import annotations

import logging
import os
import sys

from rare_objects.runtime import offline
from rare_objects.runtime.logs import setup_rule_logging


def start_rule(snakemake):
    """Prepare a rule script's process; returns its logger."""
    log = setup_rule_logging(snakemake.log[0] if snakemake.log else None)
    offline.configure(offline.cache_dir_for(snakemake.config))
    threads = max(1, int(getattr(snakemake, "threads", 1) or 1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    # MKL's results otherwise depend on the alignment of its buffers, so the same
    # inputs could give embeddings that differ in the last bits from run to run.
    os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")
    # torch reads OMP_NUM_THREADS when it is first imported; a script that has imported it
    # already gets the count set here. Not imported for that alone: a job that talks to a
    # server (the openai caption backend) never needs torch, and importing it costs seconds.
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    log.info("rule %s started (threads=%d)", snakemake.rule, threads)
    return log


def end_rule(log: logging.Logger) -> None:
    """End a rule script's process once its outputs are written: logs flushed, then
    ``os._exit(0)``, without the interpreter's teardown.

    The teardown frees every object of the 900-odd modules a job imports (pandas,
    pyarrow, aiohttp, Snakemake's preamble): 0.2 s of a caption job's 9 s at the
    caption stage bench's size (bench/README.md), paid by every job of a stage that
    is split into many. Call it last, after closing what holds processes or
    connections: exit handlers do not run. A script that fails raises before it.
    """
    log.info("rule finished")
    logging.shutdown()  # flushes and closes every handler
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
