"""Input listing, nuScenes tables, seeded subsets and stable shards."""

import pandas as pd
import pytest
from PIL import Image

from rare_objects.demo.synthetic_nuscenes import CAMERAS, write_dataroot
from rare_objects.io import sources


def _touch_images(root, rels):
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (10, 20, 30)).save(path)


def _folder_config(root, **overrides):
    cfg = {
        "kind": "folder",
        "path": str(root),
        "extensions": [".jpg", ".png"],
        "max_images": None,
        "shard_size": 2,
    }
    cfg.update(overrides)
    return cfg


def test_folder_listing_is_recursive_and_filters_extensions(tmp_path):
    _touch_images(tmp_path, ["a/1.jpg", "a/2.JPG", "b/c/3.png", "top.jpg"])
    (tmp_path / "a" / "notes.txt").write_text("x")
    frame = sources.list_folder_images(tmp_path, [".jpg", ".png"])
    assert sorted(frame["rel_path"]) == ["a/1.jpg", "a/2.JPG", "b/c/3.png", "top.jpg"]
    assert dict(zip(frame["rel_path"], frame["sample_token"]))["b/c/3.png"] == "3"
    assert dict(zip(frame["rel_path"], frame["group"]))["top.jpg"] == ""


def test_shards_chunk_groups_in_sorted_order(tmp_path):
    _touch_images(tmp_path, [f"a/{i}.jpg" for i in range(5)] + ["b/x.jpg", "top.jpg"])
    manifest = sources.build_manifest(_folder_config(tmp_path), seed=0)
    sizes = manifest.groupby("shard").size().to_dict()
    assert sizes == {"a.0000": 2, "a.0001": 2, "a.0002": 1, "b.0000": 1, "root~da39a3.0000": 1}
    assert manifest.loc[manifest["shard"] == "a.0000", "rel_path"].tolist() == [
        "a/0.jpg",
        "a/1.jpg",
    ]


def test_new_folder_adds_shards_and_keeps_existing_ones(tmp_path):
    _touch_images(tmp_path, [f"a/{i}.jpg" for i in range(3)] + [f"b/{i}.jpg" for i in range(3)])
    before = sources.build_manifest(_folder_config(tmp_path), seed=0)
    _touch_images(tmp_path, [f"c/{i}.jpg" for i in range(3)])
    after = sources.build_manifest(_folder_config(tmp_path), seed=0)
    old = after[after["shard"].isin(set(before["shard"]))]
    pd.testing.assert_frame_equal(old.reset_index(drop=True), before.reset_index(drop=True))
    assert set(after["shard"]) - set(before["shard"]) == {"c.0000", "c.0001"}


def test_odd_folder_names_get_safe_unique_shards():
    assert sources.shard_slug("scene 1/cam") != sources.shard_slug("scene_1/cam")
    assert sources.shard_slug("scene-0001") == "scene-0001"
    assert sources.shard_slug("a/b").startswith("a+b~")


def test_max_images_is_seeded_and_deterministic(tmp_path):
    _touch_images(tmp_path, [f"a/{i:02d}.jpg" for i in range(20)])

    def pick(seed):
        return sources.build_manifest(_folder_config(tmp_path, max_images=7), seed)[
            "rel_path"
        ].tolist()

    assert pick(3) == pick(3)
    assert len(pick(3)) == 7
    assert pick(3) != pick(4)


def test_object_ids_are_stable_hashes_of_relative_paths(tmp_path):
    _touch_images(tmp_path / "one", ["a/1.jpg"])
    _touch_images(tmp_path / "two", ["a/1.jpg"])
    first = sources.build_manifest(_folder_config(tmp_path / "one"), 0)["image_id"].iloc[0]
    second = sources.build_manifest(_folder_config(tmp_path / "two"), 0)["image_id"].iloc[0]
    assert first == second == sources.image_id_for("a/1.jpg")


def _nuscenes_config(root, **overrides):
    cfg = {
        "kind": "nuscenes",
        "path": str(root),
        "extensions": [".jpg"],
        "max_images": None,
        "shard_size": 500,
        "nuscenes": {"version": "v1.0-mini", "cameras": list(CAMERAS), "keyframes_only": True},
    }
    cfg.update(overrides)
    return cfg


def test_nuscenes_keyframes_cameras_and_tokens(tmp_path):
    write_dataroot(tmp_path, scenes=2, keyframes_per_scene=3, sweeps_per_keyframe=2)
    manifest = sources.build_manifest(_nuscenes_config(tmp_path), seed=0)
    assert len(manifest) == 2 * 3 * 6  # keyframes only, lidar ignored
    assert manifest["rel_path"].str.startswith("samples/CAM_").all()
    assert set(manifest["shard"]) == {"scene-0001.0000", "scene-0002.0000"}
    import json

    samples = {s["token"] for s in json.loads((tmp_path / "v1.0-mini" / "sample.json").read_text())}
    assert set(manifest["sample_token"]) <= samples
    assert manifest.groupby("sample_token")["camera"].nunique().eq(6).all()

    front = sources.build_manifest(
        _nuscenes_config(
            tmp_path,
            nuscenes={"version": "v1.0-mini", "cameras": ["CAM_FRONT"], "keyframes_only": False},
        ),
        0,
    )
    assert set(front["camera"]) == {"CAM_FRONT"}
    assert len(front) == 2 * 3 * 3  # keyframe + 2 sweeps


def test_nuscenes_missing_table_names_the_file(tmp_path):
    write_dataroot(tmp_path, scenes=1)
    (tmp_path / "v1.0-mini" / "sensor.json").unlink()
    with pytest.raises(FileNotFoundError, match="sensor.json"):
        sources.build_manifest(_nuscenes_config(tmp_path), seed=0)


def test_nuscenes_manifest_cache_is_reused_and_refreshed(tmp_path):
    root = tmp_path / "nus"
    write_dataroot(root, scenes=["scene-0001"])
    cache = tmp_path / "cache"
    first = sources.load_manifest(_nuscenes_config(root), 0, cache)
    assert len(list(cache.glob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(first, sources.load_manifest(_nuscenes_config(root), 0, cache))
    write_dataroot(root, scenes=["scene-0002"], append=True)
    second = sources.load_manifest(_nuscenes_config(root), 0, cache)
    assert set(second["shard"]) == {"scene-0001.0000", "scene-0002.0000"}


def test_empty_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        sources.build_manifest(_folder_config(tmp_path), 0)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        sources.build_manifest(_folder_config(tmp_path / "absent"), 0)
