"""Write a nuScenes-shaped dataroot (JSON tables + camera files) for tests and benches.

Every table the official devkit's ``NuScenes(version, dataroot)`` loads is written
(category, attribute, visibility, instance, sensor, calibrated_sensor, ego_pose,
log, scene, sample, sample_data, sample_annotation, map, plus the map's mask
image), with the fields it reads:

- the ego vehicle drives along a straight line with a slowly turning yaw (and a
  little pitch and roll); every sample_data record has its own ego pose;
- six cameras as nuScenes mounts them (front, front-left/right at +-55 deg,
  back-left/right at +-110 deg, back at 180 deg; 1600x900 images, f = 1266 px, or
  a smaller ``image_size`` with the intrinsics scaled) and a lidar;
- sweeps (non-key frames) lie between their keyframe and the previous one and
  belong to their keyframe's sample, as in nuScenes.

With ``annotations`` each scene gets 3-D boxes of demo objects standing on the
ground in front of the cameras (moving and turning a little from keyframe to
keyframe), and with ``render`` the camera images show them: the demo's street
background with each object drawn by the demo's scene renderer where its box
projects (the boxes of :func:`rare_objects.evaluation.nuscenes.project_annotations`).
Without annotations the annotation tables are empty. Pixels otherwise come from
``image_source`` (a callable returning image bytes) or are left empty when only
the file list matters.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rare_objects.demo.scenes import (
    _CLASS_WEIGHTS,
    _SUPERSAMPLE,
    PLANTED_KINDS,
    SceneObject,
    _draw_background,
    _draw_object,
    _new_object,
    _write_jpeg,
)
from rare_objects.evaluation.nuscenes import _project

CAMERAS = [
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
]

# Where each camera looks (yaw in the ego frame, degrees, left positive) and sits (metres,
# ego frame: x forward, y left, z up), close to nuScenes' calibration.
CAMERA_YAW = {
    "CAM_FRONT": 0.0,
    "CAM_FRONT_LEFT": 55.0,
    "CAM_FRONT_RIGHT": -55.0,
    "CAM_BACK": 180.0,
    "CAM_BACK_LEFT": 110.0,
    "CAM_BACK_RIGHT": -110.0,
}
CAMERA_MOUNT = {
    "CAM_FRONT": (1.70, 0.02, 1.51),
    "CAM_FRONT_LEFT": (1.52, 0.49, 1.51),
    "CAM_FRONT_RIGHT": (1.50, -0.49, 1.52),
    "CAM_BACK": (0.03, 0.00, 1.57),
    "CAM_BACK_LEFT": (1.04, 0.48, 1.56),
    "CAM_BACK_RIGHT": (1.03, -0.48, 1.56),
}
LIDAR_MOUNT = (0.94, 0.00, 1.84)
FULL_IMAGE_SIZE = (1600, 900)
FULL_INTRINSIC = ((1266.4, 0.0, 816.3), (0.0, 1266.4, 491.5), (0.0, 0.0, 1.0))

# nuScenes' 23 categories.
CATEGORIES = [
    "animal",
    "human.pedestrian.adult",
    "human.pedestrian.child",
    "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "movable_object.barrier",
    "movable_object.debris",
    "movable_object.pushable_pullable",
    "movable_object.trafficcone",
    "static_object.bicycle_rack",
    "vehicle.bicycle",
    "vehicle.bus.bendy",
    "vehicle.bus.rigid",
    "vehicle.car",
    "vehicle.construction",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "vehicle.motorcycle",
    "vehicle.trailer",
    "vehicle.truck",
]
ATTRIBUTES = [
    "vehicle.moving",
    "vehicle.stopped",
    "vehicle.parked",
    "cycle.with_rider",
    "cycle.without_rider",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "pedestrian.moving",
]
VISIBILITY = [("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]

# The demo's object kinds as nuScenes categories. The planted kinds stand in for rare
# categories (the demo draws no police car or wheelchair; what matters is that they are rare).
KIND_CATEGORIES = {
    "car": "vehicle.car",
    "truck": "vehicle.truck",
    "person": "human.pedestrian.adult",
    "bicycle": "vehicle.bicycle",
    "construction_vehicle": "vehicle.construction",
    "zebra_pink_car": "vehicle.emergency.police",
    "monster_car": "vehicle.emergency.ambulance",
    "rainbow_bicycle": "vehicle.motorcycle",
    "mascot_person": "human.pedestrian.personal_mobility",
}
# 3-D size (width, length, height in metres) of each kind, so that its side view has the
# demo renderer's aspect ratio.
KIND_SIZES = {
    "car": (1.9, 4.3, 1.7),
    "truck": (2.5, 8.5, 3.3),
    "person": (0.6, 0.6, 1.75),
    "bicycle": (0.6, 1.75, 1.05),
    "construction_vehicle": (2.8, 6.4, 3.2),
    "zebra_pink_car": (1.9, 4.3, 1.7),
    "monster_car": (2.2, 4.4, 2.9),
    "rainbow_bicycle": (0.6, 1.8, 1.05),
    "mascot_person": (0.9, 0.9, 1.9),
}
_KIND_ATTRIBUTES = {  # (moving, standing still) attribute of each class
    "car": ("vehicle.moving", "vehicle.parked"),
    "truck": ("vehicle.moving", "vehicle.parked"),
    "person": ("pedestrian.moving", "pedestrian.standing"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
}

KEYFRAME_INTERVAL_US = 500_000  # 2 Hz keyframes, as nuScenes
_BASE_TIMESTAMP = 1_500_000_000_000_000
_MAP_NAME = "maps/synthetic-map.png"


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------
# Poses
# ------------------------------------------------------------------------------------------


def _quaternion_multiply(a, b) -> tuple[float, float, float, float]:
    """Hamilton product ``a * b`` of quaternions ``[w, x, y, z]``."""
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return (
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    )


def _yaw_pitch_roll(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> tuple:
    """Quaternion of the rotation Rz(yaw) Ry(pitch) Rx(roll)."""
    qz = (math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
    qy = (math.cos(pitch / 2), 0.0, math.sin(pitch / 2), 0.0)
    qx = (math.cos(roll / 2), math.sin(roll / 2), 0.0, 0.0)
    return _quaternion_multiply(_quaternion_multiply(qz, qy), qx)


# A camera's axes (x right, y down, z forward) in the ego frame (x forward, y left, z up).
_CAMERA_AXES = (0.5, -0.5, 0.5, -0.5)


def camera_rotation(channel: str) -> tuple:
    """The camera-to-ego rotation of a channel (a quaternion ``[w, x, y, z]``)."""
    return _quaternion_multiply(_yaw_pitch_roll(math.radians(CAMERA_YAW[channel])), _CAMERA_AXES)


def camera_intrinsic(image_size: tuple[int, int]) -> list[list[float]]:
    """nuScenes' camera matrix scaled to ``image_size`` (width, height)."""
    sx, sy = image_size[0] / FULL_IMAGE_SIZE[0], image_size[1] / FULL_IMAGE_SIZE[1]
    (fx, _, cx), (_, fy, cy), _ = FULL_INTRINSIC
    return [[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]]


def _scene_motion(seed: int, scene: str) -> dict:
    """Where a scene's drive starts, its heading, speed and turn rate (a pure function of
    the seed and the scene name, so appending scenes leaves the old ones as they were)."""
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode())])
    return {
        "start": (float(rng.uniform(-500, 500)), float(rng.uniform(-500, 500))),
        "yaw": float(rng.uniform(-math.pi, math.pi)),
        "speed": float(rng.uniform(1.5, 3.0)),
        "turn": float(rng.uniform(-0.04, 0.04)),
    }


def _ego_pose(motion: dict, seconds: float) -> tuple[list[float], list[float]]:
    """The ego pose (translation, rotation) ``seconds`` after the scene's first keyframe."""
    x0, y0 = motion["start"]
    distance = motion["speed"] * seconds
    heading = motion["yaw"]
    translation = [
        x0 + distance * math.cos(heading),
        y0 + distance * math.sin(heading),
        0.02 * math.sin(0.7 * seconds),
    ]
    yaw = heading + motion["turn"] * seconds
    pitch, roll = 0.004 * math.sin(1.1 * seconds), 0.003 * math.cos(1.3 * seconds)
    return translation, list(_yaw_pitch_roll(yaw, pitch, roll))


# ------------------------------------------------------------------------------------------
# Objects
# ------------------------------------------------------------------------------------------


def _scene_objects(
    seed: int,
    scene: str,
    motion: dict,
    middle: float,
    cameras: list[str],
    objects_per_camera: tuple[int, int],
    planted_per_scene: int,
    keyframes: int,
) -> list[dict]:
    """The objects of a scene: kind, pose at ``middle`` seconds, motion, visible keyframes.

    Each camera gets a few objects side-on to it, 10 to 22 m away and within about 20 deg
    of its axis (planted ones 10 to 14 m, so that they are large); about one in five objects
    appears only from the second keyframe on (as a real instance entering the scene does).
    """
    rng = np.random.default_rng([seed, zlib.crc32(scene.encode()), 1])
    classes = list(_CLASS_WEIGHTS)
    weights = np.array([_CLASS_WEIGHTS[c] for c in classes])
    planted = list(PLANTED_KINDS)
    scene_offset = zlib.crc32(scene.encode()) % len(planted)
    slots = []
    for camera in cameras:
        n = int(rng.integers(objects_per_camera[0], objects_per_camera[1] + 1))
        azimuths = np.linspace(-18.0, 18.0, n) if n > 1 else np.zeros(n)
        for azimuth in azimuths[rng.permutation(n)]:
            slots.append((camera, float(azimuth)))
    planted_slots = (
        set(rng.choice(len(slots), size=min(planted_per_scene, len(slots)), replace=False).tolist())
        if slots
        else set()
    )
    ego_t, ego_q = _ego_pose(motion, middle)
    ego_yaw = 2 * math.atan2(ego_q[3], ego_q[0])  # the turn dominates pitch and roll
    objects, n_planted = [], 0
    for k, (camera, azimuth) in enumerate(slots):
        if k in planted_slots:
            kind = planted[(scene_offset + n_planted) % len(planted)]
            n_planted += 1
            class_name = PLANTED_KINDS[kind][0]
            depth = rng.uniform(10.0, 14.0)
        else:
            class_name = classes[int(rng.choice(len(classes), p=weights / weights.sum()))]
            kind = class_name
            depth = rng.uniform(10.0, 22.0)
        view = ego_yaw + math.radians(CAMERA_YAW[camera] + azimuth + rng.uniform(-3, 3))
        mount_x, mount_y, _ = CAMERA_MOUNT[camera]
        local_x = mount_x + depth * math.cos(view - ego_yaw)
        local_y = mount_y + depth * math.sin(view - ego_yaw)
        c, s = math.cos(ego_yaw), math.sin(ego_yaw)
        width, length, height = KIND_SIZES[kind]
        moving = bool(rng.random() < 0.6)
        # side-on to the camera that sees it, facing either way
        facing = math.pi if rng.random() < 0.5 else 0.0
        side_on = view + math.pi / 2 + facing + rng.uniform(-0.15, 0.15)
        objects.append(
            {
                "kind": kind,
                "class_name": class_name,
                "planted_kind": kind if kind != class_name else "none",
                "category": KIND_CATEGORIES[kind],
                "size": [width, length, height],
                "center": [
                    ego_t[0] + c * local_x - s * local_y,
                    ego_t[1] + s * local_x + c * local_y,
                    height / 2,
                ],
                "yaw": side_on,
                "speed": float(rng.uniform(0.3, 1.2)) if moving else 0.0,
                "turn": float(rng.uniform(-0.1, 0.1)),
                "moving": moving,
                "first_keyframe": 1 if keyframes > 1 and rng.random() < 0.2 else 0,
                "visibility": str(rng.choice(["1", "2", "3", "4"], p=[0.1, 0.1, 0.15, 0.65])),
            }
        )
    return objects


def _object_pose(obj: dict, seconds: float) -> tuple[list[float], list[float]]:
    """An object's box centre and rotation ``seconds`` after the scene's middle."""
    yaw = obj["yaw"] + obj["turn"] * seconds
    distance = obj["speed"] * seconds
    x, y, z = obj["center"]
    center = [x + distance * math.cos(obj["yaw"]), y + distance * math.sin(obj["yaw"]), z]
    return center, list(_yaw_pitch_roll(yaw))


# ------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------


def _render_images(
    root: Path,
    version: str,
    paths: list[str],
    scene_of: dict[str, str],
    camera_of: dict[str, str],
    looks: dict[str, dict],
    image_size: tuple[int, int],
    seed: int,
) -> None:
    """Draw every image of ``paths``: the demo's street background (one per scene and
    camera) and each annotated object where its box projects, far ones first."""
    boxes, _ = _project(root, version, paths)
    by_image = {path: group for path, group in boxes.groupby("image_path", sort=False)}
    w, h = int(image_size[0]), int(image_size[1])
    ss = _SUPERSAMPLE
    horizon = camera_intrinsic(image_size)[1][2]  # a level camera's horizon: the principal row
    for path in paths:
        scene, camera = scene_of[path], camera_of[path]
        image = Image.new("RGB", (w * ss, h * ss))
        draw = ImageDraw.Draw(image)
        background = np.random.default_rng(
            [seed, zlib.crc32(scene.encode()), CAMERAS.index(camera), 2]
        )
        _draw_background(draw, background, w * ss, h * ss, horizon * ss)
        group = by_image.get(path)
        if group is not None:
            for row in group.sort_values("depth", ascending=False).itertuples(index=False):
                look = looks[row.instance_token]
                obj = SceneObject(
                    look["class_name"],
                    row.ux1,
                    row.uy1,
                    row.ux2,
                    row.uy2,
                    look["colour"],
                    look["planted_kind"],
                    look["attrs"],
                )
                # the instance's own stream: the same details in every image
                _draw_object(draw, np.random.default_rng(look["stream"]), obj, ss)
        image = image.reduce(ss)
        relative = Path(path).relative_to(root).as_posix()  # the same noise wherever root is
        rng = np.random.default_rng([seed, zlib.crc32(relative.encode()), 3])
        pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.9, 1.1)
        pixels = pixels + rng.normal(0.0, 3.0, size=pixels.shape)
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")
        _write_jpeg(image, Path(path))


def _instance_look(seed: int, token: str, obj: dict, image_size: tuple[int, int]) -> dict:
    """Colour and drawing attributes of an instance, drawn once (the demo's own sampler)."""
    stream = [seed, zlib.crc32(token.encode()), 4]
    w, h = image_size
    sample = _new_object(
        np.random.default_rng(stream), obj["class_name"], obj["planted_kind"], w, h, h / 2, 0.3
    )
    return {
        "class_name": obj["class_name"],
        "planted_kind": obj["planted_kind"],
        "colour": sample.colour,
        "attrs": sample.attrs,
        "stream": [*stream, 1],
    }


def _add_data(chains: dict, record: dict, channel: str, timestamp: int) -> None:
    """File a sample_data record under its channel; its ego pose shares its token."""
    record.update(ego_pose_token=record["token"], timestamp=timestamp)
    chains.setdefault(channel, []).append(record)


def _mask_png(path: Path) -> None:
    """The map's mask image (the devkit only checks that it exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        Image.new("L", (8, 8), 255).save(path, format="PNG")


# ------------------------------------------------------------------------------------------
# The dataroot
# ------------------------------------------------------------------------------------------


def write_dataroot(
    root: str | Path,
    version: str = "v1.0-mini",
    scenes: list[str] | int = 2,
    keyframes_per_scene: int = 3,
    sweeps_per_keyframe: int = 1,
    cameras: list[str] = CAMERAS,
    image_source: Callable[[str, str, int], bytes] | None = None,
    append: bool = False,
    annotations: bool = False,
    render: bool | None = None,
    image_size: tuple[int, int] = FULL_IMAGE_SIZE,
    objects_per_camera: tuple[int, int] = (1, 3),
    planted_per_scene: int = 1,
    seed: int = 0,
) -> dict:
    """Write (or, with ``append``, extend) a dataroot; returns counts.

    ``image_source(scene, camera, frame)`` gives a file's bytes; None writes
    empty files. Scene names given as a list let a test add new scenes later.

    ``annotations`` places demo objects (``objects_per_camera``: a range per camera and
    scene, ``planted_per_scene`` of them planted kinds, which are rare nuScenes categories,
    see :data:`KIND_CATEGORIES`) and writes their 3-D boxes. ``render`` (default: with
    annotations and no ``image_source``) draws the images (JPEG) with those objects in
    them; it excludes ``image_source``. ``image_size`` (width, height) is every camera
    image's size, the intrinsics scaled from nuScenes' 1600x900; keep it the same when
    appending (one calibration per camera). Same arguments, same bytes.

    Returns ``{"scenes": scenes in the table, "files": camera files written by this call,
    "annotations": sample_annotation rows in the table}``.
    """
    if render is None:
        render = annotations and image_source is None
    if render and image_source is not None:
        raise ValueError("render draws the images itself: pass no image_source with it")
    image_size = (int(image_size[0]), int(image_size[1]))
    root = Path(root)
    tables_dir = root / version
    tables_dir.mkdir(parents=True, exist_ok=True)
    names = scenes if isinstance(scenes, list) else [f"scene-{i:04d}" for i in range(1, scenes + 1)]

    def load(name):
        path = tables_dir / f"{name}.json"
        return json.loads(path.read_text()) if append and path.exists() else []

    scene_t, sample_t, data_t = load("scene"), load("sample"), load("sample_data")
    pose_t, ann_t, instance_t, log_t = (
        load("ego_pose"),
        load("sample_annotation"),
        load("instance"),
        load("log"),
    )
    sensor_t = [{"token": _token("sensor", c), "channel": c, "modality": "camera"} for c in CAMERAS]
    sensor_t.append(
        {"token": _token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}
    )
    intrinsic = camera_intrinsic(image_size)
    calib_t = [
        {
            "token": _token("calib", c),
            "sensor_token": _token("sensor", c),
            "translation": list(CAMERA_MOUNT[c]),
            "rotation": list(camera_rotation(c)),
            "camera_intrinsic": intrinsic,
        }
        for c in CAMERAS
    ]
    calib_t.append(
        {
            "token": _token("calib", "LIDAR_TOP"),
            "sensor_token": _token("sensor", "LIDAR_TOP"),
            "translation": list(LIDAR_MOUNT),
            "rotation": list(_yaw_pitch_roll(-math.pi / 2)),
            "camera_intrinsic": [],
        }
    )
    calib_of = {s["channel"]: _token("calib", s["channel"]) for s in sensor_t}
    category_token = {name: _token("category", name) for name in CATEGORIES}
    attribute_token = {name: _token("attribute", name) for name in ATTRIBUTES}
    spacing = KEYFRAME_INTERVAL_US // (sweeps_per_keyframe + 1)
    files = 0
    rendered: list[str] = []
    scene_of: dict[str, str] = {}
    camera_of: dict[str, str] = {}
    looks: dict[str, dict] = {}
    for scene in names:
        scene_token = _token("scene", scene)
        log_token = _token("log", scene)
        log_t.append(
            {
                "token": log_token,
                "logfile": f"n000-synthetic-{scene}",
                "vehicle": "n000",
                "date_captured": "2018-01-01",
                "location": "singapore-onenorth",
            }
        )
        motion = _scene_motion(seed, scene)
        first_timestamp = _BASE_TIMESTAMP + len(sample_t) * KEYFRAME_INTERVAL_US
        sample_tokens = [_token("sample", scene, frame) for frame in range(keyframes_per_scene)]
        scene_t.append(
            {
                "token": scene_token,
                "name": scene,
                "description": "synthetic",
                "log_token": log_token,
                "nbr_samples": keyframes_per_scene,
                "first_sample_token": sample_tokens[0] if sample_tokens else "",
                "last_sample_token": sample_tokens[-1] if sample_tokens else "",
            }
        )
        chains: dict[str, list[dict]] = {}  # channel -> its sample_data records

        for frame in range(keyframes_per_scene):
            sample_token = sample_tokens[frame]
            timestamp = _BASE_TIMESTAMP + len(sample_t) * KEYFRAME_INTERVAL_US
            sample_t.append(
                {
                    "token": sample_token,
                    "scene_token": scene_token,
                    "timestamp": timestamp,
                    "prev": sample_tokens[frame - 1] if frame > 0 else "",
                    "next": sample_tokens[frame + 1] if frame + 1 < keyframes_per_scene else "",
                }
            )
            for camera in cameras:
                # the sweeps before the keyframe belong to its sample, as in nuScenes
                for sweep in range(sweeps_per_keyframe, -1, -1):
                    key = sweep == 0
                    folder = "samples" if key else "sweeps"
                    at = timestamp - sweep * spacing
                    name = f"n000-{scene}__{camera}__{at}.jpg"
                    rel = f"{folder}/{camera}/{name}"
                    _add_data(
                        chains,
                        {
                            "token": _token("data", rel),
                            "sample_token": sample_token,
                            "calibrated_sensor_token": calib_of[camera],
                            "filename": rel,
                            "fileformat": "jpg",
                            "is_key_frame": key,
                            "width": image_size[0],
                            "height": image_size[1],
                        },
                        camera,
                        at,
                    )
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if render:
                        rendered.append(str(path))
                        scene_of[str(path)], camera_of[str(path)] = scene, camera
                    else:
                        path.write_bytes(
                            image_source(scene, camera, frame) if image_source else b""
                        )
                    files += 1
            # a lidar record that must be ignored
            _add_data(
                chains,
                {
                    "token": _token("data", scene, frame, "lidar"),
                    "sample_token": sample_token,
                    "calibrated_sensor_token": calib_of["LIDAR_TOP"],
                    "filename": f"samples/LIDAR_TOP/{scene}_{frame}.pcd.bin",
                    "fileformat": "pcd",
                    "is_key_frame": True,
                    "width": 0,
                    "height": 0,
                },
                "LIDAR_TOP",
                timestamp,
            )
        for chain in chains.values():
            for record in chain:
                seconds = (record["timestamp"] - first_timestamp) / 1e6
                translation, rotation = _ego_pose(motion, seconds)
                pose_t.append(
                    {
                        "token": record["ego_pose_token"],
                        "timestamp": record["timestamp"],
                        "translation": translation,
                        "rotation": rotation,
                    }
                )
                data_t.append(record)
            chain.sort(key=lambda r: r["timestamp"])
            for before, record, after in zip([None, *chain[:-1]], chain, [*chain[1:], None]):
                record["prev"] = before["token"] if before else ""
                record["next"] = after["token"] if after else ""

        if annotations and keyframes_per_scene:
            middle = (keyframes_per_scene - 1) * KEYFRAME_INTERVAL_US / 2e6
            objects = _scene_objects(
                seed,
                scene,
                motion,
                middle,
                list(cameras),
                objects_per_camera,
                planted_per_scene,
                keyframes_per_scene,
            )
            for number, obj in enumerate(objects):
                instance_token = _token("instance", scene, number)
                frames = range(obj["first_keyframe"], keyframes_per_scene)
                tokens = [_token("annotation", scene, number, f) for f in frames]
                moving, still = _KIND_ATTRIBUTES[obj["class_name"]]
                for i, frame in enumerate(frames):
                    seconds = frame * KEYFRAME_INTERVAL_US / 1e6 - middle
                    center, rotation = _object_pose(obj, seconds)
                    ann_t.append(
                        {
                            "token": tokens[i],
                            "sample_token": sample_tokens[frame],
                            "instance_token": instance_token,
                            "visibility_token": obj["visibility"],
                            "attribute_tokens": [
                                attribute_token[moving if obj["moving"] else still]
                            ],
                            "translation": center,
                            "size": obj["size"],
                            "rotation": rotation,
                            "prev": tokens[i - 1] if i > 0 else "",
                            "next": tokens[i + 1] if i + 1 < len(tokens) else "",
                            "num_lidar_pts": 5 + (number * 37 + frame * 11) % 200,
                            "num_radar_pts": (number + frame) % 6,
                        }
                    )
                instance_t.append(
                    {
                        "token": instance_token,
                        "category_token": category_token[obj["category"]],
                        "nbr_annotations": len(tokens),
                        "first_annotation_token": tokens[0],
                        "last_annotation_token": tokens[-1],
                    }
                )
                if render:
                    looks[instance_token] = _instance_look(seed, instance_token, obj, image_size)

    map_t = [
        {
            "token": _token("map", "singapore-onenorth"),
            "log_tokens": [log["token"] for log in log_t],
            "category": "semantic_prior",
            "filename": _MAP_NAME,
        }
    ]
    _mask_png(root / _MAP_NAME)
    for name, table in [
        ("scene", scene_t),
        ("sample", sample_t),
        ("sample_data", data_t),
        ("sensor", sensor_t),
        ("calibrated_sensor", calib_t),
        ("ego_pose", pose_t),
        ("sample_annotation", ann_t),
        ("instance", instance_t),
        (
            "category",
            [
                {"token": category_token[n], "name": n, "description": n, "index": i}
                for i, n in enumerate(CATEGORIES)
            ],
        ),
        (
            "attribute",
            [{"token": attribute_token[n], "name": n, "description": n} for n in ATTRIBUTES],
        ),
        (
            "visibility",
            [
                {
                    "token": t,
                    "level": level,
                    "description": f"visibility of whole object is {level}",
                }
                for t, level in VISIBILITY
            ],
        ),
        ("log", log_t),
        ("map", map_t),
    ]:
        (tables_dir / f"{name}.json").write_text(json.dumps(table))
    if render:
        _render_images(root, version, rendered, scene_of, camera_of, looks, image_size, seed)
    return {"scenes": len(scene_t), "files": files, "annotations": len(ann_t)}
