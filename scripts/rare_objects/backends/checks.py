"""The checks of a configuration that need the backends' registries: the model paths the
chosen object detector and embedder need, and whether the concepts' text encoder can be
what ``concepts.text_encoder`` asks (the embedder's text tower needs one).

Kept out of :mod:`rare_objects.runtime.config`, which every rule script may call to fill
a section's defaults: the CPU rules' environment (envs/analysis.yaml) has no torch, and
the registries reach every backend module. The workflow runs :func:`validate` once, when
it starts (rules/common.smk).
"""

from __future__ import annotations

from rare_objects.runtime import config as config_checks


def problems(config: dict) -> list[str]:
    """One line per problem of a validated ``config`` (defaults filled) that a backend finds."""
    from rare_objects.backends import embedders, object_detectors, text_encoders

    detector = object_detectors.get(config["detector"]["backend"])
    found = [
        f"{key}: required when detector.backend is {detector.name!r}"
        for key, path in detector.model_paths(config["detector"]).items()
        if not path
    ]
    return found + embedders.problems(config) + text_encoders.problems(config)


def validate(config: dict) -> dict:
    """:func:`rare_objects.runtime.config.validate`, then :func:`problems`: every wrong value
    of ``config`` at once, as one :class:`~rare_objects.runtime.config.ConfigError`."""
    config_checks.validate(config)
    found = problems(config)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise config_checks.ConfigError(
            f"invalid configuration ({len(found)} problem(s)):\n{lines}"
        )
    return config
