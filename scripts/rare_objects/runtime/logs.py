"""Logging for rule scripts: everything to the rule's log file, with progress lines."""

from __future__ import annotations

import logging
import sys
import time


def setup_rule_logging(log_path: str | None) -> logging.Logger:
    """Send stderr and the ``rare_objects`` logger to the rule's log file.

    Library warnings printed to stderr (ultralytics, transformers) land in the
    same file, so the log tells the whole story of the job.
    """
    if log_path:
        sys.stderr = open(log_path, "a", buffering=1, encoding="utf-8")
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    logging.captureWarnings(True)
    return logging.getLogger("rare_objects")


class Progress:
    """Logs 'done/total' at most every ``every_s`` seconds and at the end."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = 10.0):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.done = 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            self.log.info("%s: %d/%d (%.1f/s)", self.what, self.done, self.total, rate)
