"""safe_name: the one function that turns a name from data into a file or folder name."""

from __future__ import annotations

import re

import pytest

from rare_objects.io.names import WINDOWS_RESERVED, is_safe, safe_name

# A file name of most file systems holds at most 255 bytes; safe names are ASCII.
FILE_NAME_LIMIT = 255

HOSTILE = [
    "car/van",
    "car_van",
    "../../../x",
    "../../x",
    "..",
    ".",
    "",
    "a:b",
    "a b\\c",
    "/etc/passwd",
    "CON",
    "con",
    "NUL.txt",
    "LPT1",
    "trailing.",
    ".hidden",
    "über",
    "ショベルカー",
    "x" * 300,
    "x" * 301,
    "é" * 300,
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_name_from_data_is_a_valid_file_name_inside_its_folder(tmp_path, value):
    name = safe_name(value)
    assert re.fullmatch(r"[A-Za-z0-9._+-]+", name)
    assert name not in {".", ".."} and not name.startswith(".") and not name.endswith(".")
    assert name.split(".")[0].upper() not in WINDOWS_RESERVED
    assert len(name.encode()) <= 48 + 9 < FILE_NAME_LIMIT
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    # the file system takes it, as a file and as a folder
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{name}_results.json").write_text("[]")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_different_names_stay_different_and_each_is_stable():
    names = [safe_name(v) for v in HOSTILE]
    assert len(set(names)) == len(HOSTILE)
    assert names == [safe_name(v) for v in HOSTILE]
    assert safe_name("car/van") == "car_van-4935b3db"  # the name the report has always used
    assert safe_name("../../x") == "_.._x-9bdbf20b"


@pytest.mark.parametrize(
    "value",
    ["truck", "construction_vehicle", "scene_0001", "n008-2018-08-01-15-16-36-0400__CAM_FRONT"],
)
def test_a_safe_name_is_kept_as_it_is(value):
    assert is_safe(value, max_len=64)
    assert safe_name(value, max_len=64) == value


def test_a_longer_limit_keeps_long_safe_names_and_still_bounds_the_rest():
    stem = "n015-2018-07-24-11-22-45+0800__CAM_FRONT_LEFT__1532402927604844"
    assert safe_name(stem, max_len=128) == stem
    assert len(safe_name("y" * 1000, max_len=128)) == 128 + 9
    assert safe_name("y" * 1000, max_len=128) != safe_name("y" * 999, max_len=128)


def _config_with_targets(targets):
    import yaml

    from rare_objects.runtime.config import SCHEMA_PATH

    config = yaml.safe_load((SCHEMA_PATH.parents[1] / "config.yaml").read_text())
    config["targets"] = targets
    return config


def test_the_schema_takes_any_printable_target_name_and_refuses_empty_ones():
    from rare_objects.runtime.config import ConfigError, validate

    hostile = {"../../x": ["car/van"], "CON": [], "a:b": ["a:b"], "L" * 300: []}
    assert validate(_config_with_targets(hostile))["targets"] == hostile
    with pytest.raises(ConfigError, match="targets: '' should be non-empty"):
        validate(_config_with_targets({"": ["car"]}))
    with pytest.raises(ConfigError, match=r"targets: 'a\\nb' does not match"):
        validate(_config_with_targets({"a\nb": ["car"]}))


# --------------------------------------------------------------------------- one rule, two uses
# safe_name and sources.shard_slug were two sanitisers; now shard_slug is safe_name with its
# keywords. Their former code, kept here, must give the same names for every input: shard
# names are in output paths (tables/detections/{shard}.parquet) and file names in the tree.


def _former_safe_name(value, max_len: int = 48) -> str:
    import hashlib

    text = str(value)
    if is_safe(text, max_len):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).lstrip(".")[:max_len] or "_"
    if cleaned.split(".")[0].upper() in WINDOWS_RESERVED:
        cleaned = "_" + cleaned[: max_len - 1]
    return f"{cleaned}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:8]}"


def _former_shard_slug(group: str) -> str:
    import hashlib

    unsafe = re.compile(r"[^A-Za-z0-9._-]+")
    slug = "+".join(unsafe.sub("_", part) for part in group.split("/")) if group else "root"
    if slug != group:
        slug = f"{slug}~{hashlib.sha1(group.encode('utf-8')).hexdigest()[:6]}"
    return slug


def _names_to_compare() -> list[str]:
    import random

    rng = random.Random(0)
    alphabet = "aZ09._-+~/ :\\é€ショ" + "\t"
    drawn = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 70))) for _ in range(3000)]
    usual = [
        "",
        "scene-0001",
        "scene-0061",
        "scene-1100",
        "cam_front",
        "scene-0001/CAM_FRONT",
        "a/b",
        "a//b",
        "/a",
        "a/",
        "..",
        "...",
        ".hidden/x",
        "scene 1/cam",
        "a+b",
        "n008-2018-08-01-15-16-36-0400__CAM_FRONT",
        "samples/CAM_FRONT",
        "truck",
        "construction_vehicle",
        "NUL",
        "nul.txt",
        "COM1.x/y",
    ]
    return usual + HOSTILE + drawn


def test_safe_name_is_the_former_rule_for_every_input():
    for value in _names_to_compare():
        for max_len in (48, 64, 100, 128):
            assert safe_name(value, max_len) == _former_safe_name(value, max_len), value


def test_shard_slug_is_the_former_rule_for_every_input():
    from rare_objects.io.sources import shard_slug

    for value in _names_to_compare():
        assert shard_slug(value) == _former_shard_slug(value), value
    # the demo's and nuScenes' scene names, and folders below an input root, as they were
    assert shard_slug("scene-0001") == "scene-0001"
    assert shard_slug("") == "root~da39a3"
    assert shard_slug("a/b").startswith("a+b~")
