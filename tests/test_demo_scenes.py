"""The demo's synthetic scenes: deterministic, well-formed, with planted objects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rare_objects.demo import scenes as demo_scenes

N_IMAGES = 12


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    gt = demo_scenes.generate_scenes(out, N_IMAGES, seed=7, folders=3, planted_fraction=0.25)
    return out, gt


def test_same_seed_gives_identical_bytes(demo, tmp_path):
    out, _ = demo
    again = demo_scenes.generate_scenes(
        tmp_path, N_IMAGES, seed=7, folders=3, planted_fraction=0.25
    )
    first, second = _digests(out), _digests(tmp_path)
    assert first == second
    assert len(again) > 0


def test_different_seed_gives_different_images(demo, tmp_path):
    out, _ = demo
    demo_scenes.generate_scenes(tmp_path, N_IMAGES, seed=8, folders=3, planted_fraction=0.25)
    first, second = _digests(out), _digests(tmp_path)
    assert first.keys() == second.keys()  # same layout ...
    images = [k for k in first if k.endswith(".jpg")]
    assert all(first[k] != second[k] for k in images)  # ... different pictures


def test_folder_structure(demo):
    out, gt = demo
    jpgs = sorted(out.rglob("*.jpg"))
    assert len(jpgs) == N_IMAGES
    folders = {p.relative_to(out).parts[0] for p in jpgs}
    assert folders == {"scene-0001", "scene-0002", "scene-0003"}
    for p in jpgs:
        folder, camera, name = p.relative_to(out).parts
        assert camera == demo_scenes.DEFAULT_CAMERA
        assert name.startswith(f"{folder}__{camera}__")
        with Image.open(p) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == demo_scenes.DEFAULT_SIZE
    rel = {p.relative_to(out).as_posix() for p in jpgs}
    assert set(gt["image_path"]) <= rel
    assert (out / demo_scenes.GROUND_TRUTH_NAME).exists()


def test_ground_truth_boxes_inside_images(demo):
    _, gt = demo
    assert list(gt.columns) == demo_scenes.GT_COLUMNS
    assert set(gt["class_name"]) <= set(demo_scenes.CLASS_NAMES)
    assert (gt["x1"] >= 0).all() and (gt["y1"] >= 0).all()
    assert (gt["x2"] <= gt["image_width"]).all() and (gt["y2"] <= gt["image_height"]).all()
    assert (gt["x2"] - gt["x1"] >= 4).all() and (gt["y2"] - gt["y1"] >= 4).all()
    # every image has objects, several classes occur
    assert gt["image_path"].nunique() == N_IMAGES
    assert gt["class_name"].nunique() >= 3


def test_planted_objects_present_and_rare(demo):
    _, gt = demo
    planted = gt[gt["planted"]]
    assert len(planted) == round(0.25 * N_IMAGES)  # one per chosen image
    assert planted["image_path"].is_unique
    assert set(planted["planted_kind"]) <= set(demo_scenes.PLANTED_KINDS)
    assert planted["planted_kind"].nunique() == len(planted)  # kinds cycle before repeating
    for row in planted.itertuples():
        assert row.class_name == demo_scenes.PLANTED_KINDS[row.planted_kind][0]
    assert (gt.loc[~gt["planted"], "planted_kind"] == demo_scenes.NOT_PLANTED).all()
    assert len(planted) < 0.1 * len(gt)


def test_ground_truth_csv_round_trip(demo):
    out, gt = demo
    back = demo_scenes.read_ground_truth(out)
    assert list(back.columns) == list(gt.columns)
    assert back["planted"].tolist() == gt["planted"].tolist()
    assert back["image_path"].tolist() == gt["image_path"].tolist()
    np.testing.assert_allclose(
        back[["x1", "y1", "x2", "y2"]].to_numpy(),
        gt[["x1", "y1", "x2", "y2"]].to_numpy(),
        atol=0.006,
    )


def test_default_demo_has_a_few_planted_objects(tmp_path):
    gt = demo_scenes.generate_scenes(tmp_path, 60, seed=0, size=(160, 96))
    n_planted = int(gt["planted"].sum())
    assert 3 <= n_planted <= 6
    assert n_planted / len(gt) < 0.05


def test_yolo_dataset(tmp_path):
    data_yaml = demo_scenes.write_yolo_dataset(tmp_path / "yolo", n_train=5, n_val=2, seed=0)
    cfg = yaml.safe_load(data_yaml.read_text())
    assert cfg["names"] == dict(enumerate(demo_scenes.CLASS_NAMES))
    root = Path(cfg["path"])
    for split, n in (("train", 5), ("val", 2)):
        images = sorted((root / cfg[split]).glob("*.jpg"))
        labels = sorted((root / "labels" / split).glob("*.txt"))
        assert len(images) == len(labels) == n
        for lab in labels:
            rows = np.loadtxt(lab, ndmin=2)
            assert rows.shape[1] == 5 and len(rows) >= 1
            assert set(rows[:, 0].astype(int)) <= set(range(len(demo_scenes.CLASS_NAMES)))
            cx, cy, w, h = rows[:, 1], rows[:, 2], rows[:, 3], rows[:, 4]
            assert ((cx - w / 2) >= -1e-6).all() and ((cx + w / 2) <= 1 + 1e-6).all()
            assert ((cy - h / 2) >= -1e-6).all() and ((cy + h / 2) <= 1 + 1e-6).all()
    # training scenes come from their own random stream: never a copy of a demo image
    demo = demo_scenes.generate_scenes(
        tmp_path / "demo", 1, seed=0, size=(320, 192), planted_fraction=0
    )
    first_demo = (tmp_path / "demo" / demo["image_path"].iloc[0]).read_bytes()
    assert first_demo != (root / "images" / "train" / "train_00000.jpg").read_bytes()


def test_cli(tmp_path):
    assert (
        demo_scenes.main(
            ["--out", str(tmp_path), "--n-images", "4", "--seed", "3", "--size", "160x96"]
        )
        == 0
    )
    assert len(list(tmp_path.rglob("*.jpg"))) == 4
    assert (tmp_path / demo_scenes.GROUND_TRUTH_NAME).exists()


def test_every_object_gets_a_grammar_caption_that_names_its_kind(tmp_path):
    grammar = set(demo_scenes.grammar_captions())
    gt = demo_scenes.generate_scenes(tmp_path, 40, seed=5, size=(160, 96), planted_fraction=0.5)
    assert set(gt["caption"]) <= grammar
    kinds = np.where(gt["planted"], gt["planted_kind"], gt["class_name"])
    assert [demo_scenes.caption_kind(c) for c in gt["caption"]] == list(kinds)
    assert set(gt.loc[gt["planted"], "planted_kind"]) == set(demo_scenes.PLANTED_KINDS)
    # colours are the drawn ones, with the right article
    car = gt[(gt["class_name"] == "car") & ~gt["planted"]].iloc[0]
    assert car["caption"] == f"a {car['colour']} car"
    assert "a person in an orange shirt" in grammar and "a person in a orange shirt" not in grammar
    # every kind of the grammar reads back as itself, and words of no kind as None
    for caption in grammar:
        assert demo_scenes.caption_kind(caption) in set(demo_scenes.CLASS_NAMES) | set(
            demo_scenes.PLANTED_KINDS
        )
    assert demo_scenes.caption_kind("A car with pink zebra stripes.") == "zebra_pink_car"
    assert demo_scenes.caption_kind("a blurry shape") is None
    assert demo_scenes.caption_kind(None) is None


def test_object_crops_come_from_their_own_stream(tmp_path):
    pairs = list(
        demo_scenes.object_crops(7, demo_scenes.STREAM_VLM, 10, planted_share=0.5, size=(320, 192))
    )
    again = list(
        demo_scenes.object_crops(7, demo_scenes.STREAM_VLM, 10, planted_share=0.5, size=(320, 192))
    )
    held_out = list(
        demo_scenes.object_crops(7, demo_scenes.STREAM_VLM_HELDOUT, 10, size=(320, 192))
    )
    assert [o.caption for _, o in pairs] == [o.caption for _, o in again]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(pairs, again))
    assert any(o.planted for _, o in pairs)
    assert all(min(c.size) >= 4 for c, _ in pairs)
    assert np.asarray(pairs[0][0]).tobytes() != np.asarray(held_out[0][0]).tobytes()
