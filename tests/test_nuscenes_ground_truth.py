"""nuScenes ground truth as 2-D boxes: hand-computed projections, the synthetic dataroot's
annotations and drawn objects, and equality with the official nuscenes-devkit.

The devkit needs numpy<2, so it cannot live in the project's venv: the equality test builds
its own venv once (``<test cache>/nuscenes-devkit-venv``) and runs it in a subprocess.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rare_objects.demo.synthetic_nuscenes import CAMERAS, write_dataroot
from rare_objects.evaluation import nuscenes
from rare_objects.io.sources import list_nuscenes_images
from tests.conftest import CACHE

VERSION = "v1.0-test"
INTRINSIC = [[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]]
IDENTITY = [1.0, 0.0, 0.0, 0.0]
# a nuScenes camera's axes (x right, y down, z forward) in the ego frame (x forward, z up)
CAMERA_AXES = [0.5, -0.5, 0.5, -0.5]

DEVKIT_REQUIREMENT = "nuscenes-devkit==1.2.0"
DEVKIT_VENV = CACHE / "nuscenes-devkit-venv"


def _yaw(degrees: float) -> list[float]:
    half = math.radians(degrees) / 2
    return [math.cos(half), 0.0, 0.0, math.sin(half)]


# ------------------------------------------------------------------------------------------
# A hand-built dataroot: one camera, one or two samples
# ------------------------------------------------------------------------------------------


def _box(translation, size=(2.0, 4.0, 2.0), rotation=IDENTITY, visibility="4", **extra) -> dict:
    return {
        "translation": list(translation),
        "size": list(size),
        "rotation": list(rotation),
        "visibility": visibility,
        **extra,
    }


def _dataroot(
    root: Path,
    keyframe_boxes: list[list[dict]],
    ego=((0.0, 0.0, 0.0), IDENTITY),
    camera=((0.0, 0.0, 0.0), IDENTITY),
    sweeps: tuple[float, ...] = (),
) -> dict[str, str]:
    """Write the tables of one camera over consecutive keyframes (1 s apart), each with its
    boxes (``instance`` names the same object in two keyframes), and sweeps at the given
    fractions of the way from the previous keyframe to the last one. Returns the image
    paths by name ("key0", "key1", ..., "sweep0", ...)."""
    tables = root / VERSION
    tables.mkdir(parents=True)
    samples, data, poses, anns, instances = [], [], [], [], {}
    paths = {}
    times = [1_000_000 * (i + 1) for i in range(len(keyframe_boxes))]

    def add_image(name: str, sample: str, timestamp: int, key: bool) -> None:
        filename = f"{'samples' if key else 'sweeps'}/CAM_FRONT/{name}.jpg"
        data.append(
            {
                "token": f"sd-{name}",
                "sample_token": sample,
                "ego_pose_token": f"pose-{name}",
                "calibrated_sensor_token": "calib-front",
                "timestamp": timestamp,
                "filename": filename,
                "is_key_frame": key,
                "width": 1600,
                "height": 900,
            }
        )
        poses.append(
            {
                "token": f"pose-{name}",
                "timestamp": timestamp,
                "translation": list(ego[0]),
                "rotation": list(ego[1]),
            }
        )
        paths[name] = str(root / filename)

    for k, boxes in enumerate(keyframe_boxes):
        samples.append(
            {
                "token": f"sample{k}",
                "timestamp": times[k],
                "prev": f"sample{k - 1}" if k else "",
                "next": f"sample{k + 1}" if k + 1 < len(keyframe_boxes) else "",
            }
        )
        add_image(f"key{k}", f"sample{k}", times[k], True)
        for n, box in enumerate(boxes):
            instance = box.get("instance", f"inst-{k}-{n}")
            instances[instance] = box.get("category", "vehicle.car")
            anns.append(
                {
                    "token": box.get("token", f"ann-{k}-{n}"),
                    "sample_token": f"sample{k}",
                    "instance_token": instance,
                    "visibility_token": box["visibility"],
                    "attribute_tokens": [],
                    "translation": box["translation"],
                    "size": box["size"],
                    "rotation": box["rotation"],
                }
            )
    for s, fraction in enumerate(sweeps):
        t0, t1 = times[-2], times[-1]
        add_image(f"sweep{s}", samples[-1]["token"], int(t0 + fraction * (t1 - t0)), False)
    categories = sorted(set(instances.values()))
    written = {
        "sensor": [{"token": "sensor-front", "channel": "CAM_FRONT", "modality": "camera"}],
        "calibrated_sensor": [
            {
                "token": "calib-front",
                "sensor_token": "sensor-front",
                "translation": list(camera[0]),
                "rotation": list(camera[1]),
                "camera_intrinsic": INTRINSIC,
            }
        ],
        "sample": samples,
        "sample_data": data,
        "ego_pose": poses,
        "sample_annotation": anns,
        "instance": [
            {"token": t, "category_token": f"cat-{c}"} for t, c in sorted(instances.items())
        ],
        "category": [{"token": f"cat-{c}", "name": c} for c in categories],
    }
    for name, table in written.items():
        (tables / f"{name}.json").write_text(json.dumps(table))
    return paths


def _boxes(frame) -> np.ndarray:
    return frame[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)


# ------------------------------------------------------------------------------------------
# Hand-computed cases
# ------------------------------------------------------------------------------------------


def test_box_straight_ahead_projects_to_the_hand_computed_box(tmp_path):
    # identity poses: the optical axis is the global z axis; the box is 10 m ahead,
    # 4 m long along x, 2 m wide along y, 2 m high along z: its near face is at z = 9
    paths = _dataroot(tmp_path, [[_box((0, 0, 10), token="ann-a", category="vehicle.trailer")]])
    frame, stats = nuscenes.project_annotations(tmp_path, VERSION, [paths["key0"]])
    assert list(frame.columns) == nuscenes.GROUND_TRUTH_COLUMNS
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["gt_id"] == "ann-a:CAM_FRONT"
    assert row["image_path"] == paths["key0"]
    assert row["category"] == "vehicle.trailer"
    assert row["visibility"] == "4"
    assert not row["clipped"]
    expected = [800 - 2000 / 9, 450 - 1000 / 9, 800 + 2000 / 9, 450 + 1000 / 9]
    np.testing.assert_allclose(_boxes(frame)[0], expected, atol=1e-3)
    assert all(frame[c].dtype == np.float32 for c in ("x1", "y1", "x2", "y2"))
    assert frame["clipped"].dtype == bool
    assert stats == {
        "annotations": 1,
        "annotation_image_pairs": 1,
        "boxes": 1,
        "behind_camera": 0,
        "outside_image": 0,
        "filtered_visibility": 0,
        "clipped": 0,
        "images": 1,
        "images_without_table_record": 0,
    }


def test_global_ego_and_camera_frames_are_chained(tmp_path):
    # the ego at (100, 50) heading along global +y (yaw 90 deg), a nuScenes-style camera
    # 1 m ahead of it and 1.5 m up; the box lies along the heading, 10 m ahead of the camera
    paths = _dataroot(
        tmp_path,
        [[_box((100, 61, 1.5), rotation=_yaw(90))]],
        ego=((100.0, 50.0, 0.0), _yaw(90)),
        camera=((1.0, 0.0, 1.5), CAMERA_AXES),
    )
    frame, _ = nuscenes.project_annotations(tmp_path, VERSION, [paths["key0"]])
    # near face 8 m away, 2 m wide and high: 1000 px * 1 m / 8 m either side of the centre
    np.testing.assert_allclose(_boxes(frame)[0], [675, 325, 925, 575], atol=1e-3)


def test_boxes_behind_or_beside_the_camera_are_dropped_and_counted(tmp_path):
    paths = _dataroot(
        tmp_path,
        [
            [
                _box((0, 0, -10)),  # behind
                _box((0, 0, 1.0)),  # reaches back to the camera (corners at z = 0 and 2)
                _box((40, 0, 10)),  # in front, but its projection is right of the image
                # in front (z 0.6 .. 0.8) and projecting inside, but nearer than 1 m: the
                # devkit counts no corner as visible
                _box((0, 0, 0.7), size=(0.2, 0.2, 0.2)),
                _box((0, 0, 10)),  # kept
            ]
        ],
    )
    frame, stats = nuscenes.project_annotations(tmp_path, VERSION, [paths["key0"]])
    assert list(frame["gt_id"]) == ["ann-0-4:CAM_FRONT"]
    assert stats["behind_camera"] == 2
    assert stats["outside_image"] == 2
    assert stats["boxes"] == 1
    assert stats["annotation_image_pairs"] == stats["annotations"] == 5


def test_box_half_outside_is_clipped_and_flagged(tmp_path):
    paths = _dataroot(tmp_path, [[_box((8, 0, 10))]])
    frame, stats = nuscenes.project_annotations(tmp_path, VERSION, [paths["key0"]])
    # x from 6 to 10 m: from 800 + 1000 * 6 / 11 (far face) to 800 + 1000 * 10 / 9 > 1600
    np.testing.assert_allclose(
        _boxes(frame)[0], [800 + 6000 / 11, 450 - 1000 / 9, 1600, 450 + 1000 / 9], atol=1e-3
    )
    assert frame["clipped"].tolist() == [True]
    assert stats["clipped"] == 1


def test_visibility_filter_keeps_the_listed_levels(tmp_path):
    boxes = [_box((-3, 0, 12), visibility="1"), _box((3, 0, 12), visibility="4")]
    paths = _dataroot(tmp_path, [boxes])
    image = [paths["key0"]]
    everything, stats = nuscenes.project_annotations(tmp_path, VERSION, image)
    assert sorted(everything["visibility"]) == ["1", "4"]
    assert stats["filtered_visibility"] == 0
    clear, stats = nuscenes.project_annotations(tmp_path, VERSION, image, ["4"])
    assert clear["visibility"].tolist() == ["4"]
    assert stats["filtered_visibility"] == 1 and stats["boxes"] == 1
    hidden, stats = nuscenes.project_annotations(tmp_path, VERSION, image, ["1", "2"])
    assert hidden["gt_id"].tolist() == ["ann-0-0:CAM_FRONT"]
    assert stats["filtered_visibility"] == 1


def test_sweep_boxes_are_interpolated_between_keyframes(tmp_path):
    paths = _dataroot(
        tmp_path,
        [
            [_box((-2, 0, 10), instance="moving")],
            [
                _box((2, 0, 10), instance="moving", token="ann-moving"),
                _box((0, 0, 20), instance="new", token="ann-new"),  # not in the previous one
            ],
        ],
        sweeps=(0.75, 1.5),  # the second lies after its keyframe: clamped, as the devkit does
    )
    frame, stats = nuscenes.project_annotations(
        tmp_path, VERSION, [paths["key1"], paths["sweep0"], paths["sweep1"]]
    )
    by_image = {
        (path, gt_id): box
        for path, gt_id, box in zip(frame["image_path"], frame["gt_id"], _boxes(frame))
    }
    vertical = [450 - 1000 / 9, 450 + 1000 / 9]
    # keyframe: x from 0 to 4 m; sweep at 3/4 of the way: centre x = -2 + 0.75 * 4 = 1
    np.testing.assert_allclose(
        by_image[paths["key1"], "ann-moving:CAM_FRONT"],
        [800 + 0, vertical[0], 800 + 4000 / 9, vertical[1]],
        atol=1e-3,
    )
    np.testing.assert_allclose(
        by_image[paths["sweep0"], "ann-moving:CAM_FRONT"],
        [800 - 1000 / 9, vertical[0], 800 + 3000 / 9, vertical[1]],
        atol=1e-3,
    )
    np.testing.assert_allclose(
        by_image[paths["sweep1"], "ann-moving:CAM_FRONT"],
        by_image[paths["key1"], "ann-moving:CAM_FRONT"],
    )
    # an instance the previous keyframe lacks is taken as annotated
    np.testing.assert_allclose(
        by_image[paths["sweep0"], "ann-new:CAM_FRONT"],
        by_image[paths["key1"], "ann-new:CAM_FRONT"],
    )
    assert stats["annotations"] == 2 and stats["boxes"] == 6


def test_slerp_follows_pyquaternion():
    quarter = nuscenes.slerp(np.array([IDENTITY]), np.array([_yaw(90)]), np.array([0.5]))
    np.testing.assert_allclose(quarter[0], _yaw(45), atol=1e-12)
    # q and -q are one rotation: the shorter arc is taken
    flipped = nuscenes.slerp(np.array([IDENTITY]), -np.array([_yaw(90)]), np.array([0.5]))
    np.testing.assert_allclose(
        nuscenes.quaternion_matrices(flipped), nuscenes.quaternion_matrices(quarter), atol=1e-12
    )
    # nearly equal rotations: a normalised linear blend
    close = nuscenes.slerp(np.array([IDENTITY]), np.array([_yaw(1)]), np.array([0.5]))
    np.testing.assert_allclose(close[0], _yaw(0.5), atol=1e-6)
    # a non-unit quaternion is normalised first
    matrix = nuscenes.quaternion_matrices(np.array([2.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(matrix, np.eye(3))


def test_images_that_are_no_camera_record_are_counted(tmp_path):
    paths = _dataroot(tmp_path, [[_box((0, 0, 10))]])
    frame, stats = nuscenes.project_annotations(
        tmp_path,
        VERSION,
        [paths["key0"], str(tmp_path / "samples/CAM_FRONT/unknown.jpg"), "/elsewhere/x.jpg"],
    )
    assert len(frame) == 1
    assert stats["images"] == 3 and stats["images_without_table_record"] == 2


def test_missing_annotation_table_names_the_file(tmp_path):
    paths = _dataroot(tmp_path, [[_box((0, 0, 10))]])
    (tmp_path / VERSION / "sample_annotation.json").unlink()
    with pytest.raises(FileNotFoundError, match="sample_annotation.json"):
        nuscenes.project_annotations(tmp_path, VERSION, [paths["key0"]])


def test_category_vocabulary():
    assert set(nuscenes.DEFAULT_RARE_CATEGORIES) <= set(nuscenes.CATEGORY_CONCEPTS)
    assert nuscenes.CATEGORY_CONCEPTS["vehicle.emergency.police"] == "emergency_vehicle"
    assert nuscenes.CATEGORY_CONCEPTS["human.pedestrian.child"] == "person"
    assert len(nuscenes.DEFAULT_RARE_CATEGORIES) == 11


# ------------------------------------------------------------------------------------------
# The synthetic dataroot: annotations and the objects drawn where they project
# ------------------------------------------------------------------------------------------


def test_synthetic_dataroot_draws_its_annotated_objects(tmp_path):
    size = (320, 180)
    options = {"scenes": 2, "keyframes_per_scene": 2, "sweeps_per_keyframe": 1, "seed": 3}
    counts = write_dataroot(tmp_path / "with", annotations=True, image_size=size, **options)
    # the same scenes and backgrounds without objects
    write_dataroot(
        tmp_path / "without",
        annotations=True,
        objects_per_camera=(0, 0),
        planted_per_scene=0,
        image_size=size,
        **options,
    )
    assert counts["scenes"] == 2 and counts["files"] == 2 * 2 * 6 * 2
    tables = tmp_path / "with" / "v1.0-mini"
    anns = json.loads((tables / "sample_annotation.json").read_text())
    assert counts["annotations"] == len(anns) > 0
    categories = {c["token"]: c["name"] for c in json.loads((tables / "category.json").read_text())}
    instances = json.loads((tables / "instance.json").read_text())
    instance_category = [categories[i["category_token"]] for i in instances]
    planted = [c for c in instance_category if c not in {"vehicle.car", "vehicle.truck"}]
    planted = [c for c in planted if c not in {"human.pedestrian.adult", "vehicle.bicycle"}]
    assert len(planted) == 2  # one planted object a scene, a rare category
    assert set(planted) <= set(nuscenes.DEFAULT_RARE_CATEGORIES)

    images = list_nuscenes_images(tmp_path / "with", "v1.0-mini", CAMERAS, keyframes_only=False)
    frame, stats = nuscenes.project_annotations(
        tmp_path / "with", "v1.0-mini", images["image_path"].tolist()
    )
    assert stats["boxes"] > 0 and stats["images_without_table_record"] == 0
    assert frame["category"].isin(nuscenes.CATEGORY_CONCEPTS).all()

    def pixels(path: str, root: str) -> np.ndarray:
        path = path.replace(str(tmp_path / "with"), str(tmp_path / root))
        return np.asarray(Image.open(path).convert("RGB"), dtype=float)

    changed = sizable = 0
    for path in images["image_path"]:
        difference = np.abs(pixels(path, "with") - pixels(path, "without")).mean(axis=2)
        away = np.ones(difference.shape, dtype=bool)  # farther than 8 px from every box
        for row in frame[frame["image_path"] == path].itertuples(index=False):
            x1, y1, x2, y2 = int(row.x1), int(row.y1), int(row.x2), int(row.y2)
            away[max(0, y1 - 8) : y2 + 9, max(0, x1 - 8) : x2 + 9] = False
            if (x2 - x1) * (y2 - y1) >= 400:  # the object is drawn in its box
                sizable += 1
                changed += difference[y1:y2, x1:x2].mean() > 8
        if away.any():
            assert difference[away].mean() < 1  # and nowhere else
    assert changed == sizable > 0
    with Image.open(images["image_path"].iloc[0]) as image:
        assert image.size == size


def test_synthetic_dataroot_without_annotations_keeps_empty_files(tmp_path):
    counts = write_dataroot(tmp_path, scenes=1, keyframes_per_scene=2, sweeps_per_keyframe=1)
    assert counts == {"scenes": 1, "files": 2 * 6 * 2, "annotations": 0}
    files = [p for p in (tmp_path / "samples").rglob("*.jpg")]
    assert files and all(p.stat().st_size == 0 for p in files)
    for name in ("ego_pose", "instance", "category", "attribute", "visibility", "log", "map"):
        assert (tmp_path / "v1.0-mini" / f"{name}.json").exists()
    with pytest.raises(ValueError, match="image_source"):
        write_dataroot(tmp_path / "x", render=True, image_source=lambda *_: b"")


# ------------------------------------------------------------------------------------------
# Equality with the official devkit
# ------------------------------------------------------------------------------------------

DEVKIT_SCRIPT = """
import json, sys
import numpy as np
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.geometry_utils import BoxVisibility, view_points

dataroot, version, out = sys.argv[1:4]
nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
rows = []
for sd in nusc.sample_data:
    if sd["sensor_modality"] != "camera":
        continue
    _, boxes, intrinsic = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.ANY)
    width, height = sd["width"], sd["height"]
    for box in boxes:
        corners = view_points(box.corners(), intrinsic, normalize=True)[:2]
        rows.append({
            "filename": sd["filename"],
            "gt_id": box.token + ":" + sd["channel"],
            "category": box.name,
            "box": [
                float(np.clip(corners[0].min(), 0, width)),
                float(np.clip(corners[1].min(), 0, height)),
                float(np.clip(corners[0].max(), 0, width)),
                float(np.clip(corners[1].max(), 0, height)),
            ],
        })
with open(out, "w") as handle:
    json.dump(rows, handle)
"""


def _devkit_python() -> Path:
    """The Python of a venv holding the official devkit, built once into the test cache.

    The build goes to a temporary folder that is renamed when complete (a killed build
    leaves no half venv), under a lock (two test processes build it once). A failing pip
    install fails the test with pip's output.
    """
    python = DEVKIT_VENV / "bin" / "python"
    marker = DEVKIT_VENV / "complete.json"

    def ready() -> bool:
        return marker.exists() and json.loads(marker.read_text())["requirement"] == (
            DEVKIT_REQUIREMENT
        )

    if ready():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "nuscenes-devkit-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return python
        for stale in CACHE.glob("nuscenes-devkit-venv.build-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a killed build's (we hold the lock)
        build = Path(tempfile.mkdtemp(prefix="nuscenes-devkit-venv.build-", dir=CACHE))
        start = time.perf_counter()
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(build)],
            [
                str(build / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                DEVKIT_REQUIREMENT,
            ],
            [str(build / "bin" / "python"), "-c", "import nuscenes.nuscenes"],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, env=_devkit_env())
            if done.returncode:
                shutil.rmtree(build, ignore_errors=True)
                pytest.fail(
                    f"building the devkit venv failed: {' '.join(step)} (exit "
                    f"{done.returncode})\n{done.stdout[-8000:]}\n{done.stderr[-8000:]}",
                    pytrace=False,
                )
        seconds = round(time.perf_counter() - start, 1)
        (build / "complete.json").write_text(
            json.dumps({"requirement": DEVKIT_REQUIREMENT, "build_seconds": seconds})
        )
        shutil.rmtree(DEVKIT_VENV, ignore_errors=True)
        os.replace(build, DEVKIT_VENV)
        print(f"built the nuscenes-devkit venv in {seconds} s")
    return python


def _devkit_env() -> dict[str, str]:
    """The environment for the devkit's Python: none of the project's paths, a headless
    matplotlib."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MPLBACKEND"] = "Agg"
    env["MPLCONFIGDIR"] = str(CACHE / "nuscenes-devkit-mplconfig")
    return env


def _devkit_boxes(python: Path, dataroot: Path, version: str, work: Path) -> dict:
    script, out = work / "devkit_boxes.py", work / "devkit_boxes.json"
    script.write_text(DEVKIT_SCRIPT)
    done = subprocess.run(
        [str(python), str(script), str(dataroot), version, str(out)],
        capture_output=True,
        text=True,
        env=_devkit_env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-8000:]
    return {
        (str(dataroot / row["filename"]), row["gt_id"]): (row["category"], row["box"])
        for row in json.loads(out.read_text())
    }


@pytest.fixture(scope="module")
def devkit_python() -> Path:
    return _devkit_python()


def test_projection_equals_the_official_devkit(tmp_path, devkit_python, monkeypatch):
    dataroot = tmp_path / "nuscenes"
    # empty image files: the geometry is what is compared
    write_dataroot(
        dataroot,
        version="v1.0-mini",
        scenes=3,
        keyframes_per_scene=3,
        sweeps_per_keyframe=2,
        annotations=True,
        render=False,
        objects_per_camera=(2, 4),
        seed=5,
    )
    expected = _devkit_boxes(devkit_python, dataroot, "v1.0-mini", tmp_path)
    images = list_nuscenes_images(dataroot, "v1.0-mini", CAMERAS, keyframes_only=False)
    frame, stats = nuscenes.project_annotations(
        dataroot, "v1.0-mini", images["image_path"].tolist()
    )
    ours = {
        (path, gt_id): (category, box)
        for path, gt_id, category, box in zip(
            frame["image_path"], frame["gt_id"], frame["category"], _boxes(frame)
        )
    }
    assert len(ours) == len(frame) == stats["boxes"]
    assert ours.keys() == expected.keys()
    sweeps = sum("/sweeps/" in path for path, _ in ours)
    assert sweeps > 0 and len(ours) - sweeps > 0  # key frames and sweeps compared
    worst = max(np.abs(np.array(expected[k][1]) - ours[k][1]).max() for k in ours)
    assert worst < 0.5, f"largest difference from the devkit: {worst:.3f} px"
    assert all(expected[k][0] == ours[k][0] for k in ours)
    assert stats["clipped"] > 0 and stats["behind_camera"] > 0 and stats["outside_image"] > 0

    # the comparison sees the sweeps' interpolation: without it, boxes move
    pairs = nuscenes._annotation_pairs

    def no_interpolation(*args):
        image_row, ann_row, prev_row, amount = pairs(*args)
        return image_row, ann_row, np.full_like(prev_row, -1), amount

    monkeypatch.setattr(nuscenes, "_annotation_pairs", no_interpolation)
    frame, _ = nuscenes.project_annotations(dataroot, "v1.0-mini", images["image_path"].tolist())
    plain = dict(zip(zip(frame["image_path"], frame["gt_id"]), _boxes(frame)))
    moved = [
        k for k in plain.keys() & expected.keys() if np.abs(plain[k] - expected[k][1]).max() > 0.5
    ]
    assert moved and all("/sweeps/" in path for path, _ in moved)
