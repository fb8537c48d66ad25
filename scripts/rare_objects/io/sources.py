"""Find the input images and group them into stable shards.

A shard is a chunk of at most ``shard_size`` images of one group, in sorted
order. Groups are subfolders (folder mode) or scenes (nuScenes), so new data in
a new folder or scene makes new shards and leaves every existing shard as it
was: Snakemake then schedules work only for the new shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.io import atomic
from rare_objects.io.names import safe_name

MANIFEST_COLUMNS = [
    "image_id",
    "shard",
    "group",
    "image_path",
    "rel_path",
    "sample_token",
    "camera",
]
# What a shard name keeps of a group ("+" joins its folders, so it is not kept).
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_id_for(rel_path: str) -> str:
    """Stable id of an image: a hash of its path relative to the input root."""
    return hashlib.sha1(rel_path.encode("utf-8")).hexdigest()[:16]


def shard_slug(group: str) -> str:
    """A file-name-safe, readable and collision-free name for a group (a folder below the
    input root, or a scene): its folders joined by ``+``, runs of other characters than
    ``A-Z a-z 0-9 . _ -`` as ``_``, ``root`` for the root; a name that differs from the
    group gets ``~`` and 6 hex digits of its hash, so two groups never share one.
    Shard names are in output paths (``tables/detections/{shard}.parquet``): this rule
    must not change."""
    return safe_name(
        group,
        max_len=None,
        unsafe=_SAFE,
        joiner="+",
        portable=False,
        empty="root",
        mark="~",
        digest_chars=6,
    )


def list_folder_images(root: str | os.PathLike, extensions: list[str]) -> pd.DataFrame:
    """Every image below ``root``; the group is the image's folder relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"input.path {str(root)!r} is not a folder")
    wanted = {e.lower() for e in extensions}
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in wanted:
                rel = Path(dirpath, name).relative_to(root).as_posix()
                rows.append((rel, os.path.dirname(rel), os.path.splitext(name)[0]))
    frame = pd.DataFrame(rows, columns=["rel_path", "group", "sample_token"])
    frame["camera"] = None
    frame["image_path"] = [str(root / rel) for rel in frame["rel_path"]]
    return frame


def _load_table(table_dir: Path, name: str) -> list[dict]:
    path = table_dir / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(
            f"nuScenes table {str(path)!r} is missing (check input.path and input.nuscenes.version)"
        )
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def list_nuscenes_images(
    dataroot: str | os.PathLike, version: str, cameras: list[str], keyframes_only: bool = True
) -> pd.DataFrame:
    """Camera images of a nuScenes dataroot with their sample tokens; the group is the scene name."""
    dataroot = Path(dataroot)
    tables = dataroot / version
    channel_of_sensor = {s["token"]: s["channel"] for s in _load_table(tables, "sensor")}
    channel_of_calib = {
        c["token"]: channel_of_sensor.get(c["sensor_token"])
        for c in _load_table(tables, "calibrated_sensor")
    }
    scene_name = {s["token"]: s["name"] for s in _load_table(tables, "scene")}
    scene_of_sample = {
        s["token"]: scene_name.get(s["scene_token"], "unknown-scene")
        for s in _load_table(tables, "sample")
    }
    wanted = set(cameras)
    rows = []
    for record in _load_table(tables, "sample_data"):
        if keyframes_only and not record.get("is_key_frame", False):
            continue
        channel = channel_of_calib.get(record.get("calibrated_sensor_token"))
        if channel not in wanted:
            continue
        rel = record["filename"]
        rows.append(
            (
                rel,
                scene_of_sample.get(record["sample_token"], "unknown-scene"),
                record["sample_token"],
                channel,
            )
        )
    frame = pd.DataFrame(rows, columns=["rel_path", "group", "sample_token", "camera"])
    frame["image_path"] = [str(dataroot / rel) for rel in frame["rel_path"]]
    return frame.sort_values("rel_path", kind="stable").reset_index(drop=True)


def choose_images(frame: pd.DataFrame, max_images: int | None, seed: int) -> pd.DataFrame:
    """A seeded, deterministic subset (the original shuffled and cut)."""
    if max_images is None or len(frame) <= max_images:
        return frame
    ordered = frame.sort_values("rel_path", kind="stable").reset_index(drop=True)
    picked = np.sort(
        np.random.default_rng(seed).choice(len(ordered), size=max_images, replace=False)
    )
    return ordered.iloc[picked].reset_index(drop=True)


def assign_shards(frame: pd.DataFrame, shard_size: int) -> pd.DataFrame:
    """Chunk each group, in sorted path order, into shards of at most ``shard_size``."""
    frame = frame.sort_values(["group", "rel_path"], kind="stable").reset_index(drop=True)
    position = frame.groupby("group", sort=False).cumcount().to_numpy()
    slugs = frame["group"].map({g: shard_slug(g) for g in frame["group"].unique()})
    frame["shard"] = [f"{slug}.{chunk:04d}" for slug, chunk in zip(slugs, position // shard_size)]
    frame["image_id"] = [image_id_for(rel) for rel in frame["rel_path"]]
    return frame[MANIFEST_COLUMNS]


def build_manifest(input_config: dict, seed: int) -> pd.DataFrame:
    """The image manifest for the ``input`` section of the configuration."""
    if input_config["kind"] == "nuscenes":
        nus = input_config["nuscenes"]
        frame = list_nuscenes_images(
            input_config["path"], nus["version"], nus["cameras"], nus["keyframes_only"]
        )
    else:
        frame = list_folder_images(input_config["path"], input_config["extensions"])
    if frame.empty:
        raise FileNotFoundError(f"no images found under input.path {input_config['path']!r}")
    frame = choose_images(frame, input_config.get("max_images"), seed)
    return assign_shards(frame, input_config["shard_size"])


def _fingerprint(input_config: dict, seed: int) -> str:
    """Cheap fingerprint of a nuScenes source: its settings and its tables' size and mtime."""
    tables = Path(input_config["path"]) / input_config["nuscenes"]["version"]
    stats = []
    for name in ("sample_data", "sample", "scene", "sensor", "calibrated_sensor"):
        st = (tables / f"{name}.json").stat()
        stats.append((name, st.st_size, st.st_mtime_ns))
    payload = json.dumps([input_config, seed, stats], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def load_manifest(
    input_config: dict, seed: int, cache_dir: str | os.PathLike | None = None
) -> pd.DataFrame:
    """:func:`build_manifest`, cached for nuScenes.

    Snakemake evaluates the workflow again in every job; reading nuScenes'
    JSON tables (gigabytes for trainval) each time would dominate small jobs,
    so the manifest is cached as parquet, keyed by the tables' size and mtime.
    """
    if input_config["kind"] != "nuscenes" or cache_dir is None:
        return build_manifest(input_config, seed)
    cache = Path(cache_dir) / f"nuscenes-manifest-{_fingerprint(input_config, seed)}.parquet"
    if cache.exists():
        return pd.read_parquet(cache)
    frame = build_manifest(input_config, seed)
    with atomic.atomic_path(cache) as tmp:
        frame.to_parquet(tmp, index=False)
    return frame
