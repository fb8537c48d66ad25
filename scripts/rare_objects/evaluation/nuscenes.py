"""nuScenes ground truth as 2-D boxes in the camera images.

Every 3-D box (``sample_annotation``) of an image's sample is moved into the
camera's frame and projected into its image exactly as the official devkit's
``NuScenes.get_sample_data(token, box_vis_level=BoxVisibility.ANY)`` does:

global -> ego (minus the ego pose's translation, inverse ego rotation) -> sensor
(minus the calibrated sensor's translation, inverse rotation) -> the box's 8 corners
(x forward = length, y left = width, z up = height) -> kept only if every corner
is more than 0.1 m in front of the camera and at least one corner with a depth
over 1 m projects strictly inside the image -> the extent of the projected
corners, clipped to ``[0, width] x [0, height]``.

Non-key frames (sweeps) get the devkit's ``get_boxes``: an annotation whose
instance the previous keyframe also annotates is interpolated between the two
(translation linearly, rotation by pyquaternion's slerp) at the sweep's
timestamp; the others, and every box of a scene's first sample, are taken as
they are.

Plain numpy, vectorised over (annotation, image) pairs in chunks: the full
trainval (1.2 M annotations) is one pass. The three big tables are read with a
JSON object hook that keeps only the wanted records' fields in columns, so no
per-record dict outlives its parsing.
"""

from __future__ import annotations

import json
import os
from array import array
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.io.sources import _load_table

# nuScenes' rare categories (the devkit's names): what the evaluation counts as rare by default.
DEFAULT_RARE_CATEGORIES: tuple[str, ...] = (
    "vehicle.construction",
    "vehicle.trailer",
    "vehicle.bicycle",
    "vehicle.motorcycle",
    "vehicle.emergency.ambulance",
    "vehicle.emergency.police",
    "human.pedestrian.stroller",
    "human.pedestrian.wheelchair",
    "human.pedestrian.personal_mobility",
    "animal",
    "movable_object.debris",
)

# nuScenes category -> the workflow's concept word (concepts.list).
CATEGORY_CONCEPTS: dict[str, str] = {
    "vehicle.construction": "construction_vehicle",
    "vehicle.trailer": "trailer",
    "vehicle.bicycle": "bicycle",
    "vehicle.motorcycle": "motorcycle",
    "vehicle.emergency.ambulance": "emergency_vehicle",
    "vehicle.emergency.police": "emergency_vehicle",
    "human.pedestrian.stroller": "stroller",
    "human.pedestrian.wheelchair": "wheelchair",
    "human.pedestrian.personal_mobility": "personal_mobility",
    "animal": "animal",
    "movable_object.debris": "debris",
    "vehicle.car": "car",
    "vehicle.truck": "truck",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "human.pedestrian.adult": "person",
    "human.pedestrian.child": "person",
    "human.pedestrian.construction_worker": "person",
    "human.pedestrian.police_officer": "person",
}

# The devkit's visibility tokens and their levels (share of the object visible in all cameras).
VISIBILITY_LEVELS: dict[str, str] = {"1": "v0-40", "2": "v40-60", "3": "v60-80", "4": "v80-100"}

GROUND_TRUTH_COLUMNS = [
    "gt_id",
    "image_path",
    "category",
    "x1",
    "y1",
    "x2",
    "y2",
    "clipped",
    "visibility",
]

# The devkit's thresholds (geometry_utils.box_in_image).
_MIN_DEPTH_IN_FRONT = 0.1  # every corner this far in front of the camera
_MIN_DEPTH_VISIBLE = 1.0  # a corner counts as inside the image only beyond this depth

# Corner signs in the devkit's Box.corners() order, one column a corner: rows x (forward,
# half the length), y (left, half the width), z (up, half the height).
_CORNER_SIGNS = np.array(
    [
        [1, 1, 1, 1, -1, -1, -1, -1],
        [1, -1, -1, 1, 1, -1, -1, 1],
        [1, 1, -1, -1, 1, 1, -1, -1],
    ],
    dtype=np.float64,
)

_PAIRS_PER_CHUNK = 250_000  # (pairs x 3 x 8) float64 arrays of ~50 MB each


# ------------------------------------------------------------------------------------------
# Geometry (numpy, vectorised)
# ------------------------------------------------------------------------------------------


def normalise_quaternions(q: np.ndarray) -> np.ndarray:
    """Unit quaternions ``[w, x, y, z]`` (a zero quaternion stays zero)."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    return q / np.where(norm > 0, norm, 1.0)


def quaternion_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` ``[w, x, y, z]``,
    normalised first as pyquaternion's ``rotation_matrix`` does."""
    w, x, y, z = np.moveaxis(normalise_quaternions(q), -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=-2,
    )


def slerp(q0: np.ndarray, q1: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Row-wise spherical interpolation from ``q0`` to ``q1`` (``(n, 4)``, ``[w, x, y, z]``)
    as pyquaternion's ``Quaternion.slerp``: the shorter arc, and a normalised linear blend
    where the two are nearly equal (dot > 0.9995)."""
    q0, q1 = normalise_quaternions(q0), normalise_quaternions(q1)
    amount = np.clip(np.asarray(amount, dtype=np.float64), 0.0, 1.0)[:, None]
    dot = np.sum(q0 * q1, axis=1, keepdims=True)
    q0 = np.where(dot < 0, -q0, q0)
    dot = np.abs(dot)
    linear = q0 + amount * (q1 - q0)
    theta_0 = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta_0 = np.sin(theta_0)
    theta = theta_0 * amount
    with np.errstate(divide="ignore", invalid="ignore"):
        s0 = np.cos(theta) - dot * np.sin(theta) / sin_theta_0
        s1 = np.sin(theta) / sin_theta_0
    spherical = s0 * q0 + s1 * q1
    return normalise_quaternions(np.where(dot > 0.9995, linear, spherical))


def global_to_camera(
    ego_translation: np.ndarray,
    ego_rotation: np.ndarray,
    camera_translation: np.ndarray,
    camera_rotation: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The map ``p -> M p + b`` from global to camera coordinates, per image (``(n, 3, 3)``,
    ``(n, 3)``), of an ego pose and a camera pose in the ego frame (translations ``(n, 3)``,
    rotation matrices ``(n, 3, 3)``): ``R_cam^T (R_ego^T (p - t_ego) - t_cam)``."""
    ego_t = np.asarray(ego_translation, dtype=np.float64)[:, :, None]
    cam_t = np.asarray(camera_translation, dtype=np.float64)[:, :, None]
    cam_inverse = np.swapaxes(camera_rotation, 1, 2)
    matrix = np.matmul(cam_inverse, np.swapaxes(ego_rotation, 1, 2))
    offset = -np.matmul(matrix, ego_t) - np.matmul(cam_inverse, cam_t)
    return matrix, offset[:, :, 0]


def box_corners(center: np.ndarray, size_wlh: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The 8 corners ``(n, 3, 8)`` (one column a corner, in the devkit's ``Box.corners()``
    order) of boxes with ``center (n, 3)``, ``size (n, 3)`` as width, length, height, and
    ``rotation (n, 3, 3)``."""
    half = np.asarray(size_wlh, dtype=np.float64)[:, [1, 0, 2]] / 2  # (l, w, h) along (x, y, z)
    scaled = np.asarray(rotation) * half[:, None, :]  # R diag(half)
    return np.matmul(scaled, _CORNER_SIGNS) + np.asarray(center, dtype=np.float64)[:, :, None]


def project_corners(
    corners: np.ndarray, intrinsic: np.ndarray, width: np.ndarray, height: np.ndarray
) -> dict[str, np.ndarray]:
    """Project camera-frame corners ``(n, 3, 8)`` with intrinsics ``(n, 3, 3)`` into images of
    ``width, height (n,)``; the devkit's ``box_in_image(..., BoxVisibility.ANY)`` decides.

    Returns ``in_front`` (every corner > 0.1 m ahead), ``visible`` (the devkit's ANY test),
    the unclipped extent ``ux1, uy1, ux2, uy2``, the clipped ``x1, y1, x2, y2``, ``clipped``
    and ``depth`` (the mean depth of the corners: the box centre's).
    """
    depth = corners[:, 2, :]
    uvw = np.matmul(intrinsic, corners)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = uvw[:, 0, :] / uvw[:, 2, :]
        v = uvw[:, 1, :] / uvw[:, 2, :]
    w, h = width[:, None], height[:, None]
    inside = (u > 0) & (u < w) & (v < h) & (v > 0) & (depth > _MIN_DEPTH_VISIBLE)
    in_front = (depth > _MIN_DEPTH_IN_FRONT).all(axis=1)
    visible = inside.any(axis=1)
    with np.errstate(invalid="ignore"):
        ux1, ux2 = u.min(axis=1), u.max(axis=1)
        uy1, uy2 = v.min(axis=1), v.max(axis=1)
    x1, x2 = np.clip(ux1, 0, width), np.clip(ux2, 0, width)
    y1, y2 = np.clip(uy1, 0, height), np.clip(uy2, 0, height)
    clipped = (ux1 < 0) | (uy1 < 0) | (ux2 > width) | (uy2 > height)
    return {
        "in_front": in_front,
        "visible": visible,
        "ux1": ux1,
        "uy1": uy1,
        "ux2": ux2,
        "uy2": uy2,
        "x1": x1,
        "y1": y1,
        "x2": x2,
        "y2": y2,
        "clipped": clipped,
        "depth": depth.mean(axis=1),
    }


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------


def _read_columns(
    tables: Path, name: str, wanted: Callable[[dict], bool], fields: dict[str, int]
) -> dict[str, list | np.ndarray]:
    """The ``fields`` of the records of table ``name`` that ``wanted`` accepts, as columns.

    ``fields`` maps a field to 0 (any value, kept in a list) or n > 0 (n floats, kept in one
    flat float64 array, reshaped to (rows, n)). The JSON object hook files each record away
    as it is parsed and returns None, so the big tables never exist as a list of dicts.
    """
    if not (tables / f"{name}.json").exists():
        _load_table(tables, name)  # raises the workflow's "table missing" error
    columns: dict[str, list | array] = {
        field: array("d") if n else [] for field, n in fields.items()
    }
    # bound methods: the hook runs once per record (millions of times)
    adders = [
        (field, columns[field].extend if n else columns[field].append)
        for field, n in fields.items()
    ]
    kept = [0]

    def keep(record: dict) -> None:
        if "token" in record and wanted(record):
            for field, add in adders:
                add(record.get(field))
            kept[0] += 1
        return None

    with open(tables / f"{name}.json", encoding="utf-8") as handle:
        json.load(handle, object_hook=keep)
    result = {}
    for field, n in fields.items():
        if n:
            values = np.frombuffer(columns[field], dtype=np.float64).copy()
            if len(values) != n * kept[0]:
                raise ValueError(f"{tables / name}.json: a record's {field!r} has not {n} numbers")
            result[field] = values.reshape(-1, n)
        else:
            result[field] = columns[field]
    return result


def _cameras(tables: Path) -> pd.DataFrame:
    """Calibrated cameras by token: channel, translation, rotation, intrinsic (3x3)."""
    channel_of_sensor = {
        s["token"]: (s.get("channel"), s.get("modality")) for s in _load_table(tables, "sensor")
    }
    rows = []
    for record in _load_table(tables, "calibrated_sensor"):
        channel, modality = channel_of_sensor.get(record.get("sensor_token"), (None, None))
        intrinsic = np.asarray(record.get("camera_intrinsic") or [], dtype=np.float64)
        if modality != "camera" or intrinsic.shape != (3, 3):
            continue
        rows.append(
            (
                record["token"],
                channel,
                np.asarray(record["translation"], dtype=np.float64),
                np.asarray(record["rotation"], dtype=np.float64),
                intrinsic,
            )
        )
    return pd.DataFrame(
        rows, columns=["token", "channel", "translation", "rotation", "intrinsic"]
    ).set_index("token")


def _image_records(
    tables: Path, dataroot: Path, image_paths: list[str], cameras: pd.DataFrame
) -> pd.DataFrame:
    """The camera ``sample_data`` record of each image path (the paths without one left out)."""
    prefix = os.path.join(str(dataroot), "")
    path_of = {p[len(prefix) :]: p for p in image_paths if p.startswith(prefix)}
    camera_tokens = set(cameras.index)
    records = _read_columns(
        tables,
        "sample_data",
        lambda r: (
            r.get("filename") in path_of and r.get("calibrated_sensor_token") in camera_tokens
        ),
        {
            "filename": 0,
            "sample_token": 0,
            "ego_pose_token": 0,
            "calibrated_sensor_token": 0,
            "timestamp": 0,
            "is_key_frame": 0,
            "width": 0,
            "height": 0,
        },
    )
    frame = pd.DataFrame(records).drop_duplicates("filename")
    frame["image_path"] = frame["filename"].map(path_of)
    rank = {path: i for i, path in enumerate(image_paths)}
    order = np.argsort(frame["image_path"].map(rank).to_numpy(np.int64), kind="stable")
    return frame.iloc[order].reset_index(drop=True)  # in the caller's order


# ------------------------------------------------------------------------------------------
# Projection
# ------------------------------------------------------------------------------------------


def _annotation_index(ann_sample: np.ndarray, ann_instance: np.ndarray, n_samples: int) -> dict:
    """Lookups over the annotations (their sample and instance as integer codes): each
    sample's annotations in table order, and the annotation of a (sample, instance)."""
    order = np.argsort(ann_sample, kind="stable")
    counts = np.bincount(ann_sample, minlength=max(n_samples, 1))
    n_instances = int(ann_instance.max()) + 1 if len(ann_instance) else 1
    key = ann_sample.astype(np.int64) * n_instances + ann_instance
    # stable: among equal keys the last in table order comes last, as in the devkit's dict
    key_order = np.argsort(key, kind="stable")
    return {
        "order": order,
        "counts": counts,
        "starts": np.cumsum(counts) - counts,
        "instance": ann_instance,
        "n_instances": n_instances,
        "key_order": key_order,
        "sorted_keys": key[key_order],
    }


def _annotation_pairs(
    image_rows: np.ndarray,
    image_sample: np.ndarray,
    image_prev_sample: np.ndarray,
    image_amount: np.ndarray,
    index: dict,
):
    """(image row, annotation row, previous-keyframe annotation row or -1, amount) for every
    annotation of the sample of each image of ``image_rows``, in image then table order.

    Sweeps follow the devkit's ``get_boxes``: ``image_prev_sample`` is the previous sample of
    a sweep (-1 for a keyframe or a scene's first sample), whose annotation of the same
    instance (the last one, as the devkit's dict keeps) is the other end of the
    interpolation; ``image_amount`` is where the sweep's timestamp lies between the two.
    """
    sample = image_sample[image_rows]
    per_image = np.where(sample >= 0, index["counts"][np.maximum(sample, 0)], 0)
    image_row = np.repeat(image_rows, per_image)
    first = np.repeat(np.cumsum(per_image) - per_image, per_image)
    offset = np.arange(len(image_row)) - first
    ann_row = index["order"][index["starts"][image_sample[image_row]] + offset]

    prev_row = np.full(len(image_row), -1, dtype=np.int64)
    prev_sample = image_prev_sample[image_row]
    rows = np.flatnonzero(prev_sample >= 0)
    if len(rows) and len(index["sorted_keys"]):
        wanted = prev_sample[rows] * index["n_instances"] + index["instance"][ann_row[rows]]
        at = np.searchsorted(index["sorted_keys"], wanted, side="right") - 1
        found = (at >= 0) & (index["sorted_keys"][np.maximum(at, 0)] == wanted)
        prev_row[rows[found]] = index["key_order"][at[found]]
    return image_row, ann_row, prev_row, image_amount[image_row]


def _image_blocks(pairs_per_image: np.ndarray, size: int):
    """Consecutive runs of image rows with about ``size`` (annotation, image) pairs each."""
    total = np.cumsum(pairs_per_image)
    start = 0
    while start < len(pairs_per_image):
        before = total[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(total, before + size, side="right")))
        yield np.arange(start, end)
        start = end


def _project(
    dataroot: str | os.PathLike,
    version: str,
    image_paths: list[str],
    visibilities: list[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """:func:`project_annotations` with the extra columns ``annotation_token``,
    ``instance_token``, the unclipped ``ux1, uy1, ux2, uy2`` and ``depth`` (the demo writer
    draws the objects with them)."""
    dataroot = Path(dataroot)
    tables = dataroot / version
    unique_paths = list(dict.fromkeys(str(p) for p in image_paths))
    cameras = _cameras(tables)
    images = _image_records(tables, dataroot, unique_paths, cameras)

    sample_list = _load_table(tables, "sample")
    sample_index = {s["token"]: i for i, s in enumerate(sample_list)}
    sample_time = np.array([s.get("timestamp", 0) for s in sample_list], dtype=np.float64)
    sample_prev = np.array(
        [sample_index.get(s.get("prev") or "", -1) for s in sample_list], dtype=np.int64
    )
    del sample_list

    # per image: its sample, and for a sweep the previous sample and the interpolation amount
    image_sample = np.array(
        [sample_index.get(t, -1) for t in images["sample_token"]], dtype=np.int64
    )
    known = image_sample >= 0
    sweep = ~images["is_key_frame"].to_numpy(bool) & known
    image_prev_sample = np.where(sweep, sample_prev[np.maximum(image_sample, 0)], -1)
    t0 = sample_time[np.maximum(image_prev_sample, 0)]
    t1 = sample_time[np.maximum(image_sample, 0)]
    t = np.clip(images["timestamp"].to_numpy(np.float64), t0, t1)  # the devkit clamps too
    span = t1 - t0
    image_amount = np.where(span > 0, (t - t0) / np.where(span > 0, span, 1.0), 1.0)

    needed_samples = set(
        np.flatnonzero(
            np.bincount(
                np.concatenate([image_sample[known], image_prev_sample[image_prev_sample >= 0]]),
                minlength=len(sample_index),
            )
        ).tolist()
    )
    needed_tokens = {t for t, i in sample_index.items() if i in needed_samples}
    poses_needed = set(images["ego_pose_token"])
    poses = _read_columns(
        tables,
        "ego_pose",
        lambda r: r["token"] in poses_needed,
        {"token": 0, "translation": 3, "rotation": 4},
    )
    anns = _read_columns(
        tables,
        "sample_annotation",
        lambda r: r.get("sample_token") in needed_tokens,
        {
            "token": 0,
            "sample_token": 0,
            "instance_token": 0,
            "visibility_token": 0,
            "translation": 3,
            "size": 3,
            "rotation": 4,
        },
    )
    category_of = {c["token"]: c["name"] for c in _load_table(tables, "category")}
    instance_category = {
        i["token"]: category_of.get(i.get("category_token"))
        for i in _load_table(tables, "instance")
    }
    ann_token = np.array(anns["token"], dtype=object)
    ann_instance = np.array(anns["instance_token"], dtype=object)
    ann_category = np.array([instance_category.get(i) for i in ann_instance], dtype=object)
    ann_visibility = np.array(
        [str(v) if v not in (None, "") else None for v in anns["visibility_token"]], dtype=object
    )
    allowed = None
    if visibilities is not None:
        wanted_levels = {str(v) for v in visibilities}
        allowed = np.array([v in wanted_levels for v in ann_visibility], dtype=bool)
    index = _annotation_index(
        np.array([sample_index[t] for t in anns["sample_token"]], dtype=np.int64),
        pd.factorize(ann_instance)[0].astype(np.int64),
        len(sample_index),
    )
    del anns["token"], anns["instance_token"], anns["sample_token"]

    # per image: the global -> camera map, intrinsics and size
    pose_row = {t: i for i, t in enumerate(poses["token"])}
    missing = [t for t in images["ego_pose_token"] if t not in pose_row]
    if missing:
        raise ValueError(
            f"ego_pose {missing[0]!r} of a camera image is not in {tables / 'ego_pose.json'}"
        )
    image_pose = np.array([pose_row[t] for t in images["ego_pose_token"]], dtype=np.int64)
    camera = cameras.loc[images["calibrated_sensor_token"]]
    to_camera, to_camera_offset = global_to_camera(
        poses["translation"][image_pose],
        quaternion_matrices(poses["rotation"][image_pose]),
        np.stack(camera["translation"].to_list()) if len(camera) else np.zeros((0, 3)),
        quaternion_matrices(
            np.stack(camera["rotation"].to_list()) if len(camera) else np.zeros((0, 4))
        ),
    )
    intrinsic = np.stack(camera["intrinsic"].to_list()) if len(camera) else np.zeros((0, 3, 3))
    width = images["width"].to_numpy(np.float64)
    height = images["height"].to_numpy(np.float64)

    stats = {
        "annotations": 0,
        "annotation_image_pairs": 0,
        "boxes": 0,
        "behind_camera": 0,
        "outside_image": 0,
        "filtered_visibility": 0,
        "clipped": 0,
        "images": len(unique_paths),
        "images_without_table_record": len(unique_paths) - len(images),
    }
    seen = np.zeros(len(ann_token), dtype=bool)  # the annotations of the images' own samples
    pairs_per_image = np.where(known, index["counts"][np.maximum(image_sample, 0)], 0)
    translation, size, quaternions = anns["translation"], anns["size"], anns["rotation"]
    parts = []
    for block in _image_blocks(pairs_per_image, _PAIRS_PER_CHUNK):
        img, ann, prev, amount = _annotation_pairs(
            block, image_sample, image_prev_sample, image_amount, index
        )
        seen[ann] = True
        stats["annotation_image_pairs"] += len(ann)
        if allowed is not None:
            keep = allowed[ann]
            stats["filtered_visibility"] += int((~keep).sum())
            img, ann, prev, amount = img[keep], ann[keep], prev[keep], amount[keep]
        center = translation[ann].copy()
        quaternion = quaternions[ann].copy()
        interpolated = prev >= 0
        if interpolated.any():
            earlier, part = prev[interpolated], amount[interpolated]
            start, end = translation[earlier], center[interpolated]
            center[interpolated] = start + part[:, None] * (end - start)  # as np.interp
            quaternion[interpolated] = slerp(quaternions[earlier], quaternion[interpolated], part)
        # move the box (centre and orientation) into the camera, then take its corners
        center = np.matmul(to_camera[img], center[:, :, None])[:, :, 0] + to_camera_offset[img]
        rotation = np.matmul(to_camera[img], quaternion_matrices(quaternion))
        corners = box_corners(center, size[ann], rotation)
        projected = project_corners(corners, intrinsic[img], width[img], height[img])
        behind = ~projected["in_front"]
        outside = projected["in_front"] & ~projected["visible"]
        stats["behind_camera"] += int(behind.sum())
        stats["outside_image"] += int(outside.sum())
        kept = ~(behind | outside)
        parts.append(
            {
                "image": img[kept],
                "ann": ann[kept],
                **{key: value[kept] for key, value in projected.items()},
            }
        )
    stats["annotations"] = int(seen.sum())

    def column(key, dtype):
        return (
            np.concatenate([p[key] for p in parts]).astype(dtype) if parts else np.zeros(0, dtype)
        )

    image, ann = column("image", np.int64), column("ann", np.int64)
    channel = camera["channel"].to_numpy(object)[image]
    token = ann_token[ann]
    frame = pd.DataFrame(
        {
            "gt_id": [f"{t}:{c}" for t, c in zip(token, channel)],
            "image_path": images["image_path"].to_numpy(object)[image],
            "category": ann_category[ann],
            **{k: column(k, np.float32) for k in ("x1", "y1", "x2", "y2")},
            "clipped": column("clipped", bool),
            "visibility": ann_visibility[ann],
            "annotation_token": token,
            "instance_token": ann_instance[ann],
            **{k: column(k, np.float64) for k in ("ux1", "uy1", "ux2", "uy2", "depth")},
        }
    )
    if frame.empty:  # the string columns' dtype, which pandas cannot infer from no rows
        text = ("gt_id", "image_path", "category", "visibility", "annotation_token")
        frame = frame.astype({c: str for c in (*text, "instance_token")})
    # rows come in the caller's image order, then the annotation table's order
    stats["boxes"] = len(frame)
    stats["clipped"] = int(frame["clipped"].sum())
    return frame, stats


def project_annotations(
    dataroot: str | os.PathLike,
    version: str,
    image_paths: list[str],
    visibilities: list[str] | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The annotations of a nuScenes dataroot as 2-D boxes in the given camera images.

    ``image_paths`` name the images as the workflow does, ``str(Path(dataroot) / filename)``;
    a path that is no camera ``sample_data`` record of the dataroot is counted in
    ``images_without_table_record``. ``visibilities`` keeps only annotations whose
    ``visibility_token`` is one of them ("1" .. "4", see :data:`VISIBILITY_LEVELS`); None
    keeps all.

    Returns one row per (annotation, image) whose box the devkit shows in that image
    (:data:`GROUND_TRUTH_COLUMNS`: ``gt_id`` = "<annotation token>:<camera channel>",
    ``image_path`` as given, ``category``, ``x1, y1, x2, y2`` float32 pixels clipped to the
    image, ``clipped``, ``visibility``), and counts: ``annotations`` (distinct annotation
    rows of the images' samples), ``annotation_image_pairs`` (= boxes + behind_camera +
    outside_image + filtered_visibility), ``boxes``, ``behind_camera``, ``outside_image``,
    ``filtered_visibility``, ``clipped``, ``images``, ``images_without_table_record``.
    """
    frame, stats = _project(dataroot, version, image_paths, visibilities)
    return frame[GROUND_TRUTH_COLUMNS], stats
