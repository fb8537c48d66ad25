"""The configuration schema: every key described and defaulted; wrong values named."""

import copy

import pytest
import yaml

from rare_objects.runtime import config as cfg


def _walk(schema, path=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}{name}", sub
        yield from _walk(sub, f"{path}{name}.")


def test_every_key_has_a_default_and_a_description():
    schema = cfg.load_schema()
    keys = list(_walk(schema))
    assert len(keys) > 60
    missing = [k for k, sub in keys if "default" not in sub or not sub.get("description")]
    assert missing == []


def test_defaults_alone_validate_and_fill_nested_sections():
    filled = cfg.defaults()
    assert filled["detector"]["conf"] == 0.25
    assert filled["detector"]["iou"] == 0.5
    assert filled["detector"]["max_det"] == 100
    assert filled["detector"]["max_objects"] == 50
    assert filled["detector"]["max_side"] == 1280
    assert filled["outliers"]["min_samples"] == 10
    assert set(filled["targets"]) == {"construction_vehicle", "bicycle", "motorcycle", "trailer"}
    assert filled["captions"]["openai"]["api_key_env"] == "OPENAI_API_KEY"


def test_the_schema_is_parsed_once_and_no_default_is_shared_between_configs():
    with open(cfg.SCHEMA_PATH, encoding="utf-8") as handle:
        assert cfg.load_schema() == yaml.safe_load(handle)  # libyaml parses it the same
    first = cfg.defaults()
    first["targets"]["trailer"].append("boat")  # a nested default, changed by its user
    first["captions"]["vlm_for"].clear()
    schema = cfg.load_schema()
    schema["properties"]["detector"]["properties"]["conf"]["default"] = 0.9  # a copy
    second = cfg.defaults()
    assert second["targets"]["trailer"] == ["truck", "train"]
    assert second["captions"]["vlm_for"] == ["targets"]
    assert second["detector"]["conf"] == 0.25


def test_bundled_config_is_valid():
    with open("config.yaml") as handle:
        cfg.validate(yaml.safe_load(handle))


@pytest.mark.parametrize(
    "patch, message",
    [
        (
            {"input": {"kind": "s3"}},
            "input.kind: 's3' is not allowed; use one of 'folder', 'nuscenes'",
        ),
        ({"detector": {"conf": 1.5}}, "detector.conf: 1.5 is greater than the maximum of 1"),
        ({"embedder": {"preset": "vit_h"}}, "embedder.preset: 'vit_h' is not allowed"),
        ({"outliers": {"contamination": 0.9}}, "outliers.contamination"),
        ({"input": {"shard_size": 0}}, "input.shard_size: 0 is less than the minimum of 1"),
        ({"detectr": {}}, "'detectr' was unexpected"),
        ({"device": "gpu0"}, "device: 'gpu0' is not allowed"),
        ({"captions": {"backend": "claude"}}, "captions.backend: 'claude' is not allowed"),
        ({"tsne": {"max_points": 10}}, "tsne: merged into projection"),
        ({"tsne": {}, "detectr": {}}, "unknown sections ['detectr']"),
    ],
)
def test_wrong_values_name_the_key_and_what_is_allowed(patch, message):
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate(copy.deepcopy(patch))
    assert message in str(error.value)


def test_all_problems_are_reported_at_once():
    with pytest.raises(cfg.ConfigError) as error:
        cfg.validate({"detector": {"conf": -1, "iou": 2}, "seed": "x"})
    text = str(error.value)
    assert "3 problem(s)" in text
    for key in ("detector.conf", "detector.iou", "seed"):
        assert key in text
