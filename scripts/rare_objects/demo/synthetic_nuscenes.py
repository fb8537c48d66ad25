"""Write a nuScenes-shaped dataroot (JSON tables + camera files) for tests and benches.

Only the tables and fields the workflow reads are written: scene, sample,
sample_data, sensor, calibrated_sensor. Pixels come from ``image_source`` (a
callable returning image bytes) or are left empty when only the file list matters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

CAMERAS = [
    "CAM_FRONT",
    "CAM_FRONT_LEFT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
]


def _token(*parts) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def write_dataroot(
    root: str | Path,
    version: str = "v1.0-mini",
    scenes: list[str] | int = 2,
    keyframes_per_scene: int = 3,
    sweeps_per_keyframe: int = 1,
    cameras: list[str] = CAMERAS,
    image_source: Callable[[str, str, int], bytes] | None = None,
    append: bool = False,
) -> dict:
    """Write (or, with ``append``, extend) a dataroot; returns counts.

    ``image_source(scene, camera, frame)`` gives a file's bytes; None writes
    empty files. Scene names given as a list let a test add new scenes later.
    """
    root = Path(root)
    tables_dir = root / version
    tables_dir.mkdir(parents=True, exist_ok=True)
    names = scenes if isinstance(scenes, list) else [f"scene-{i:04d}" for i in range(1, scenes + 1)]

    def load(name):
        path = tables_dir / f"{name}.json"
        return json.loads(path.read_text()) if append and path.exists() else []

    scene_t, sample_t, data_t = load("scene"), load("sample"), load("sample_data")
    sensor_t = [{"token": _token("sensor", c), "channel": c, "modality": "camera"} for c in CAMERAS]
    sensor_t.append(
        {"token": _token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}
    )
    calib_t = [
        {"token": _token("calib", s["channel"]), "sensor_token": s["token"]} for s in sensor_t
    ]
    calib_of = {s["channel"]: _token("calib", s["channel"]) for s in sensor_t}
    files = 0
    for scene in names:
        scene_token = _token("scene", scene)
        scene_t.append(
            {
                "token": scene_token,
                "name": scene,
                "description": "synthetic",
                "nbr_samples": keyframes_per_scene,
            }
        )
        for frame in range(keyframes_per_scene):
            sample_token = _token("sample", scene, frame)
            timestamp = 1_500_000_000_000_000 + len(sample_t) * 500_000
            sample_t.append(
                {"token": sample_token, "scene_token": scene_token, "timestamp": timestamp}
            )
            for camera in cameras:
                for sweep in range(1 + sweeps_per_keyframe):
                    key = sweep == 0
                    folder = "samples" if key else "sweeps"
                    name = f"n000-{scene}__{camera}__{timestamp + sweep * 83_000}.jpg"
                    rel = f"{folder}/{camera}/{name}"
                    data_t.append(
                        {
                            "token": _token("data", rel),
                            "sample_token": sample_token,
                            "calibrated_sensor_token": calib_of[camera],
                            "filename": rel,
                            "fileformat": "jpg",
                            "is_key_frame": key,
                            "width": 1600,
                            "height": 900,
                        }
                    )
                    path = root / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(image_source(scene, camera, frame) if image_source else b"")
                    files += 1
            # a lidar record that must be ignored
            data_t.append(
                {
                    "token": _token("data", scene, frame, "lidar"),
                    "sample_token": sample_token,
                    "calibrated_sensor_token": calib_of["LIDAR_TOP"],
                    "filename": f"samples/LIDAR_TOP/{scene}_{frame}.pcd.bin",
                    "is_key_frame": True,
                }
            )
    for name, table in [
        ("scene", scene_t),
        ("sample", sample_t),
        ("sample_data", data_t),
        ("sensor", sensor_t),
        ("calibrated_sensor", calib_t),
    ]:
        (tables_dir / f"{name}.json").write_text(json.dumps(table))
    return {"scenes": len(scene_t), "files": files}
