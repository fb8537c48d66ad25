"""Validate the workflow's configuration against its JSON schema.

The schema (schemas/config.schema.yaml) gives every key a type, a default and a
description. :func:`validate` fills in the defaults and reports every wrong
value at once, naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration has wrong values; the message lists each key."""


@functools.cache
def _default_filling_validator():
    """jsonschema's Draft 2020-12 validator that also fills in each property's default.

    Made on first use: a rule script that only reads the schema (for its speed-only keys)
    does not import jsonschema, which costs a caption job's start tens of milliseconds.
    """
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    default = subschema["default"]
                    # a copy: the parsed schema is cached (_parsed_schema), so no default is shared
                    instance[name] = copy.deepcopy(default)
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The schema, parsed once per process (a copy: the caller may change it)."""
    return copy.deepcopy(_parsed_schema(str(path)))


@functools.lru_cache(maxsize=4)
def _parsed_schema(path: str) -> dict:
    # libyaml's parser where PyYAML has it: about 9x faster on this schema than the pure-Python
    # one (57 against 7 ms), which every rule script that validates its section paid on start
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as handle:
        return yaml.load(handle, Loader=loader)  # noqa: S506 - a safe loader


# Sections that earlier versions had, and where their settings went.
MOVED_SECTIONS = {
    "tsne": "merged into projection (max_points, perplexity): one projection draws tsne.png "
    "and the explorer's map; move the keys there",
}


def _describe(error) -> str:
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties" and not error.absolute_path:
        moved = [name for name in MOVED_SECTIONS if name in error.instance]
        unknown = set(error.instance) - set(error.schema.get("properties", {})) - set(moved)
        if moved:
            lines = [f"{name}: {MOVED_SECTIONS[name]}" for name in moved]
            if unknown:
                lines.append(f"unknown sections {sorted(unknown)} (check the spelling)")
            return "; ".join(lines)
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{key}: {error.instance!r} is not allowed; use one of {allowed}"
    if error.validator == "additionalProperties":
        return f"{key}: {error.message} (check the spelling against schemas/config.schema.yaml)"
    return f"{key}: {error.message}"


def validate(config: dict, schema: dict | None = None) -> dict:
    """Fill defaults into ``config`` in place and check it; return it.

    Raises :class:`ConfigError` listing every problem, one line per key.
    """
    schema = schema if schema is not None else _parsed_schema(str(SCHEMA_PATH))  # only read
    validator = _default_filling_validator()(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid configuration ({len(errors)} problem(s)):\n{lines}")
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    """Checks a JSON schema cannot express."""
    problems = []
    device = config["device"]
    if not (
        device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        problems.append(f"device: {device!r} is not allowed; use auto, cpu, cuda or cuda:N")
    problems += _evaluation_problems(config)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")


def defaults(schema: dict | None = None) -> dict:
    """The configuration that the schema's defaults alone give."""
    return validate({}, schema)


def get(config: dict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _evaluation_problems(config: dict) -> list[str]:
    """What the evaluation section needs beyond its types, when it is enabled."""
    evaluation = config["evaluation"]
    if not evaluation["enabled"]:
        return []
    problems = []
    if evaluation["source"] == "coco" and not evaluation["coco"]["file"]:
        problems.append("evaluation.coco.file: required when evaluation.source is coco")
    if evaluation["source"] == "nuscenes" and config["input"]["kind"] != "nuscenes":
        problems.append(
            "evaluation.source: nuscenes needs input.kind nuscenes (the annotations are the "
            "dataroot's tables); use coco for a folder of images"
        )
    for members in evaluation["combinations"]:
        missing = sorted(set(members) - set(evaluation["detectors"]))
        if missing:
            problems.append(
                f"evaluation.combinations: {members} has {missing}, not in evaluation.detectors"
            )
    return problems
