"""The training-selection list: the samples to train a detector on, in one of two modes.

``mined_plus_random_fill`` (the default): every sample holding a mined object,
plus a seeded random fill up to a budget. ``random_plus_mined`` (the method
paper's recipe, arXiv 2512.05482): a seeded uniform random share of all
samples, then a mined share of the mined samples not already drawn, taken tier
by tier (:data:`TIERS`).

The method's deliverable: a detector trained on a random share of the data plus
the mined share keeps most of the full-data performance. A *sample* is what a
training pipeline takes: a nuScenes sample token (all cameras of one keyframe)
or, for a folder input, one image path (file stems are not unique across
folders). The pool is every sample with at least one usable image (status
``ok`` in the image tables), with or without objects.

Rule when the mined samples alone exceed the budget (first mode): all of them
are kept (they are the point of the mining), no random sample is added, and the
summary says ``over_budget: true``. Rule when the mined samples run out before
the mined share is reached (second mode): the rest of the share stays empty, no
random sample takes its place, and the summary's ``mined_short`` says how many
are missing.

The functions read the stage tables a few columns at a time: the per-object
flags are kept as sets of object ids (outliers are a few percent of the
objects, final outliers fewer), and the detection shards are read twice, once
to find the mined samples and once to count classes in the chosen ones.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from fractions import Fraction

import numpy as np
import pandas as pd

from rare_objects.io import atomic, schemas
from rare_objects.stages.targets import is_target

log = logging.getLogger("rare_objects.stages.training_selection")

MINED_KINDS = ("final_outliers", "outliers", "targets")
MINED = "mined"
RANDOM_FILL = "random_fill"
RANDOM = "random"

MINED_PLUS_RANDOM_FILL = "mined_plus_random_fill"
RANDOM_PLUS_MINED = "random_plus_mined"
MODES = (MINED_PLUS_RANDOM_FILL, RANDOM_PLUS_MINED)

# The method's priority for the mined share of random_plus_mined, best first: a
# sample holding one object that is both a target match and a final outlier,
# then one holding a target match, then one holding a final outlier, then any
# other mined sample (e.g. outliers only).
TIERS = ("target_and_final_outlier", "target", "final_outlier", "other")


def sample_column(input_kind: str) -> str:
    """The column that names a sample: the sample token for nuScenes, the image path for a folder."""
    return "sample_token" if input_kind == "nuscenes" else "image_path"


def flagged_ids(path: str | os.PathLike | None, column: str) -> pd.Index:
    """Object ids whose boolean ``column`` is true in the parquet table at ``path``, as an
    index of distinct ids (for :func:`is_member`)."""
    if path is None:
        return id_index(())
    table = pd.read_parquet(path, columns=["object_id", column], filters=[(column, "==", True)])
    return id_index(table["object_id"])


def id_index(ids: Iterable[str]) -> pd.Index:
    """Distinct ids as a :class:`pandas.Index`, whose hash table is built once, on first use.

    ``Series.isin`` with a Python set rebuilds an array of the whole set on every call:
    3 s per detection shard against 540,000 outliers, hours over a run's 1,389 shards;
    looked up in one index, a shard takes milliseconds. The ids are object ids or sample
    keys, never null; a null among them would match nothing.
    """
    if not isinstance(ids, pd.Index):
        if not isinstance(ids, (pd.Series, np.ndarray, list, tuple)):
            ids = list(ids)  # a set, a generator
        ids = pd.Index(pd.array(ids, dtype="str"))
    return ids.drop_duplicates()


def is_member(values: pd.Series, ids: pd.Index) -> np.ndarray:
    """Whether each of ``values`` is in ``ids`` (an :func:`id_index`): a bool array."""
    if len(ids) == 0:
        return np.zeros(len(values), dtype=bool)
    return ids.get_indexer(values.astype("str")) >= 0


def mined_samples(
    image_paths,
    detection_paths,
    key: str,
    mined: list[str],
    targets: dict[str, list[str]],
    outlier_ids: Iterable[str],
    final_outlier_ids: Iterable[str],
    tiers: bool = False,
) -> pd.DataFrame:
    """One row per sample of the pool: ``sample``, ``n_images``, ``n_objects``,
    ``mined_objects`` and ``mined_by`` (the kinds of mined object it holds,
    comma-separated, or null), sorted by sample.

    With ``tiers``, also ``tier``: the sample's position in :data:`TIERS`, from
    its objects' target and final-outlier flags whatever ``mined`` holds
    (``final_outlier_ids`` must then be the final outliers).
    """
    unknown = sorted(set(mined) - set(MINED_KINDS))
    if unknown or not mined:
        raise ValueError(
            f"training_selection.mined {unknown or list(mined)} not understood; use some of {', '.join(MINED_KINDS)}"
        )
    outlier_ids, final_outlier_ids = id_index(outlier_ids), id_index(final_outlier_ids)
    images = schemas.read_parts(image_paths, [key, "status"])
    usable = images[images["status"] == "ok"]
    pool = usable.groupby(key, sort=True).size().rename("n_images").to_frame()
    pool.index.name = "sample"
    per_shard = []
    for path in detection_paths:
        objects = pd.read_parquet(path, columns=["object_id", key, "class_name"])
        matches = is_target(objects["class_name"], targets)
        flags = {}
        if "final_outliers" in mined:
            flags["final_outliers"] = is_member(objects["object_id"], final_outlier_ids)
        if "outliers" in mined:
            flags["outliers"] = is_member(objects["object_id"], outlier_ids)
        if "targets" in mined:
            flags["targets"] = matches
        frame = pd.DataFrame({"sample": objects[key].to_numpy(), "n_objects": 1, **flags})
        frame["mined_objects"] = (
            np.logical_or.reduce([*flags.values()], axis=0) if len(frame) else 0
        )
        if tiers:
            # Per object, before the sum per sample: the first tier needs one object that is
            # both, not a target match and a final outlier anywhere in the sample.
            is_final = is_member(objects["object_id"], final_outlier_ids)
            frame["tier_target_final"] = matches & is_final
            frame["tier_target"] = matches
            frame["tier_final"] = is_final
        per_shard.append(frame.groupby("sample", sort=False).sum())
    counts = pd.concat(per_shard).groupby(level=0).sum() if per_shard else pd.DataFrame()
    pool = pool.join(counts, how="left").fillna(0)
    kinds = [k for k in MINED_KINDS if k in mined]
    for kind in kinds:
        if kind not in pool:
            pool[kind] = 0
    pool["mined_by"] = [
        ",".join(k for k, hit in zip(kinds, row) if hit) or None
        for row in pool[kinds].to_numpy() > 0
    ]
    pool = pool.reset_index()
    for column in ("n_images", "n_objects", "mined_objects"):
        pool[column] = pool[column].astype(np.int64) if column in pool else 0
    columns = ["sample", "n_images", "n_objects", "mined_objects", "mined_by"]
    if tiers:
        held = [
            pool[c].to_numpy() > 0 if c in pool else np.zeros(len(pool), dtype=bool)
            for c in ("tier_target_final", "tier_target", "tier_final")
        ]
        # The first tier whose flag the sample holds; "other" when none.
        pool["tier"] = np.select(held, [0, 1, 2], default=len(TIERS) - 1).astype(np.int64)
        columns.append("tier")
    return pool[columns]


def budget_size(n_samples: int, fraction: float, count: int | None) -> int:
    """The budget in samples: ``count`` when given, else ``floor(fraction * n_samples)``; at most the pool."""
    size = count if count is not None else math.floor(fraction * n_samples)
    return min(int(size), n_samples)


def share_size(n_samples: int, fraction: float) -> int:
    """``floor(fraction * n_samples)``, with the fraction read as the decimal it is written as
    (0.29 of 100 is 29, where the binary float product is 28.999...)."""
    return min(math.floor(Fraction(repr(float(fraction))) * n_samples), n_samples)


def choose_samples(pool: pd.DataFrame, budget: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """The selection table (schemas.TRAINING_SELECTION) and its summary.

    Every sample with a mined object, then a seeded uniform sample of the
    others up to ``budget`` rows (none when the mined ones already reach it).
    """
    is_mined = pool["mined_objects"].to_numpy() > 0
    mined = pool[is_mined]
    others = pool[~is_mined]
    n_fill = max(0, min(budget - len(mined), len(others)))
    picked = np.sort(np.random.default_rng(seed).choice(len(others), size=n_fill, replace=False))
    fill = others.iloc[picked]
    table = pd.concat(
        [mined.assign(reason=MINED), fill.assign(reason=RANDOM_FILL)], ignore_index=True
    )[schemas.TRAINING_SELECTION.names]
    summary = {
        "total_samples": int(len(pool)),
        "budget": int(budget),
        "selected_samples": int(len(table)),
        "mined_samples": int(len(mined)),
        "random_samples": int(n_fill),
        "over_budget": bool(len(mined) > budget),
        "seed": int(seed),
    }
    return table, summary


def choose_random_plus_mined(
    pool: pd.DataFrame, random_size: int, mined_size: int, seed: int
) -> tuple[pd.DataFrame, dict]:
    """The selection table (schemas.TRAINING_SELECTION) and its summary for ``random_plus_mined``.

    ``pool`` is :func:`mined_samples` with ``tiers``. First ``random_size`` samples
    drawn uniformly from the whole pool with ``seed`` (reason ``random``, in pool
    order; they keep their ``mined_by`` and ``mined_objects``); then up to
    ``mined_size`` of the mined samples not drawn (reason ``mined``), tier by tier
    of :data:`TIERS` and in a seeded random order within a tier, listed in that
    priority order. When they run out the share stays short: no random sample is
    added, and ``mined_short`` says how many are missing.
    """
    rng = np.random.default_rng(seed)
    n = len(pool)
    random_size = min(random_size, n)
    drawn = np.sort(rng.choice(n, size=random_size, replace=False))
    is_free = np.ones(n, dtype=bool)
    is_free[drawn] = False
    candidates = is_free & (pool["mined_objects"].to_numpy() > 0)
    tier = pool["tier"].to_numpy()
    ranked = np.concatenate(
        [rng.permutation(np.flatnonzero(candidates & (tier == t))) for t in range(len(TIERS))]
    ).astype(np.int64)
    picked = ranked[:mined_size]
    table = pd.concat(
        [pool.iloc[drawn].assign(reason=RANDOM), pool.iloc[picked].assign(reason=MINED)],
        ignore_index=True,
    )[schemas.TRAINING_SELECTION.names]
    picked_tiers = np.bincount(tier[picked], minlength=len(TIERS))
    summary = {
        "total_samples": int(n),
        "budget": int(random_size + mined_size),
        "selected_samples": int(len(table)),
        "mined_samples": int(len(picked)),
        "random_samples": int(random_size),
        "over_budget": False,
        "seed": int(seed),
        "random_share": int(random_size),
        "mined_share": int(mined_size),
        "mined_by_tier": {name: int(c) for name, c in zip(TIERS, picked_tiers)},
        "mined_short": int(mined_size - len(picked)),
    }
    return table, summary


def class_counts(detection_paths, key: str, chosen: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per detector class: objects in the chosen samples against objects in the whole set."""
    chosen = id_index(chosen)
    selected: dict[str, int] = {}
    total: dict[str, int] = {}
    for path in detection_paths:
        objects = pd.read_parquet(path, columns=[key, "class_name"])
        for name, n in objects["class_name"].value_counts().items():
            total[name] = total.get(name, 0) + int(n)
        inside = objects[is_member(objects[key], chosen)]
        for name, n in inside["class_name"].value_counts().items():
            selected[name] = selected.get(name, 0) + int(n)
    return {
        name: {"selection": selected.get(name, 0), "all": total[name]} for name in sorted(total)
    }


def training_selection(
    image_paths,
    detection_paths,
    outliers_path,
    concepts_path,
    input_kind: str,
    settings: dict,
    targets: dict[str, list[str]],
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """The whole selection from the stage tables: (table, summary with class counts).

    ``settings`` is the configuration's ``training_selection`` section (its
    ``mode`` picks :func:`choose_samples` or :func:`choose_random_plus_mined`).
    """
    mode = settings["mode"]
    if mode not in MODES:
        raise ValueError(f"training_selection.mode {mode!r} not understood; use one of {MODES}")
    key = sample_column(input_kind)
    mined = list(settings["mined"])
    tiers = mode == RANDOM_PLUS_MINED
    pool = mined_samples(
        image_paths,
        detection_paths,
        key,
        mined,
        targets,
        flagged_ids(outliers_path, "is_outlier") if "outliers" in mined else id_index(()),
        # the tiers need the final outliers even when they do not make a sample mined
        flagged_ids(concepts_path, "is_final_outlier")
        if tiers or "final_outliers" in mined
        else id_index(()),
        tiers=tiers,
    )
    if tiers:
        table, summary = choose_random_plus_mined(
            pool,
            share_size(len(pool), settings["random_fraction"]),
            share_size(len(pool), settings["mined_fraction"]),
            seed,
        )
    else:
        budget = budget_size(len(pool), settings["budget_fraction"], settings["budget_count"])
        table, summary = choose_samples(pool, budget, seed)
    summary = {
        "sample": "sample_token" if key == "sample_token" else "image_path",
        "mode": mode,
        "mined_from": [k for k in MINED_KINDS if k in mined],
        **summary,
        "class_counts": class_counts(detection_paths, key, table["sample"]),
    }
    if summary["over_budget"]:
        log.warning(
            "the %d samples with mined objects exceed the budget of %d samples: all are kept, no random fill",
            summary["mined_samples"],
            summary["budget"],
        )
    if summary.get("mined_short"):
        log.warning(
            "only %d mined samples outside the random share for a mined share of %d: "
            "%d short, none added at random",
            summary["mined_samples"],
            summary["mined_share"],
            summary["mined_short"],
        )
    return table, summary


def write_outputs(table: pd.DataFrame, summary: dict, parquet_path, csv_path, summary_path) -> None:
    """The list as parquet and CSV, and the summary as JSON (each written whole, atomically)."""
    schemas.write_table(table, schemas.TRAINING_SELECTION, parquet_path)
    with atomic.atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    atomic.write_text(summary_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
