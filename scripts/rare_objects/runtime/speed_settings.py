"""Settings that change only speed or resource use, never results: no rule reruns for them.

schemas/config.schema.yaml marks each such key with ``x-speed-only: true`` (and says
in its description that changing it reruns nothing): loader threads, batch sizes,
encoder processes, request concurrency. Snakemake reruns a job whose ``params``
changed, so the rules pass each section without these keys (:func:`tracked`), and
a rule script reads them from ``snakemake.config``, which Snakemake does not track
(:func:`rule_section`: the rule's params with the speed-only keys of the
configuration put back). The schema is the one place that says which keys these
are; tests/test_reruns.py changes each of them on a finished run and checks that
no job is planned.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

MARK = "x-speed-only"


@functools.cache
def speed_only_keys() -> tuple[tuple[str, ...], ...]:
    """The key paths (``("images", "loader_workers")``, ...) that the schema marks speed-only."""
    from rare_objects.runtime.config import load_schema

    found: list[tuple[str, ...]] = []

    def walk(schema: dict, path: tuple[str, ...]) -> None:
        for name, sub in schema.get("properties", {}).items():
            if sub.get(MARK):
                found.append((*path, name))
            walk(sub, (*path, name))

    walk(load_schema(), ())
    return tuple(found)


def _section_keys(section: str) -> list[tuple[str, ...]]:
    """The speed-only key paths below ``section``, relative to it."""
    return [path[1:] for path in speed_only_keys() if path[0] == section]


def tracked(config: dict, section: str) -> dict:
    """``config[section]`` without its speed-only keys: what a rule passes as a param."""
    kept = copy.deepcopy(config[section])
    for path in _section_keys(section):
        parent = kept
        for part in path[:-1]:
            parent = parent.get(part, {})
        parent.pop(path[-1], None)
    return kept


def with_speed_settings(settings: dict, config: dict, section: str) -> dict:
    """``settings`` (a rule's param from :func:`tracked`) with the speed-only keys of
    ``config[section]`` put back: the whole section, as validated."""
    full = copy.deepcopy(dict(settings))
    for path in _section_keys(section):
        value: Any = config[section]
        for part in path:
            value = value[part]
        parent = full
        for part in path[:-1]:
            parent = parent.setdefault(part, {})
        parent[path[-1]] = value
    return full


def rule_section(snakemake, section: str) -> dict:
    """A rule script's whole ``section``: its param of that name (tracked) plus the
    speed-only keys from ``snakemake.config`` (untracked)."""
    return with_speed_settings(getattr(snakemake.params, section), snakemake.config, section)
