"""The export's JSON array files: detection_results.json and each ``{target}_results.json``.

Both are export writers (:mod:`rare_objects.export`): each shard's detection_results
records go out one at a time, in export order, so no file is ever held whole, and the
file appears (through :func:`rare_objects.io.atomic.atomic_path`) only when the pass
ends without error.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from rare_objects.io import atomic
from rare_objects.io.names import safe_name


class JsonArrayWriter:
    """A JSON array file written one record at a time (``[``, then one record per line
    indented by two spaces, then ``]``); it appears at ``path`` only when closed
    without error."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stack = contextlib.ExitStack()
        self._handle = None
        self.count = 0

    def write(self, record: dict) -> None:
        self._handle.write(",\n  " if self.count else "\n  ")
        self._handle.write(json.dumps(record, ensure_ascii=False))
        self.count += 1

    def __enter__(self):
        # Opened on entry, not on construction: a writer built but never entered
        # (the export failed before its pass) leaves no temporary file behind.
        tmp = self._stack.enter_context(atomic.atomic_path(self.path))
        self._handle = self._stack.enter_context(open(tmp, "w", encoding="utf-8"))
        self._handle.write("[")
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self._handle.write("\n]\n" if self.count else "]\n")
        return self._stack.__exit__(exc_type, exc, tb)


class ResultsWriter(JsonArrayWriter):
    """An export writer: the detection_results records that ``keep`` accepts
    (all by default), as a JSON array in export order."""

    def __init__(self, path: str | os.PathLike, keep: Callable[[dict], bool] | None = None):
        super().__init__(path)
        self.keep = keep

    def write_shard(self, shard) -> None:
        for record in shard.records:
            if self.keep is None or self.keep(record):
                self.write(record)


def target_results_writers(targets, paths) -> list[ResultsWriter]:
    """One ``{target}_results.json`` writer per target: the records that match it."""
    return [
        ResultsWriter(path, keep=lambda record, t=target: t in record["target_matches"])
        for target, path in zip(targets, paths, strict=True)
    ]


def target_results_name(target: str) -> str:
    """The file name of a target's results: ``{target}_results.json``, the target's name made safe."""
    return f"{safe_name(target)}_results.json"
