"""Bench: time and peak memory of the evaluation stage (issue 17) on a nuScenes-sized run.

    .venv/bin/python bench/evaluation.py                  # 1,000,000 objects, 240,000 images
    .venv/bin/python bench/evaluation.py --quick          # 1/20 of that, a smoke run
    .venv/bin/python bench/evaluation.py --quick --profile 25   # and a cProfile of the stage

Synthetic tables shaped like a full nuScenes run (bench/_common.py style: generated,
no pixels): images in scenes of 40 keyframes x 6 cameras, one detection shard and one
images shard per scene (the workflow's shards: per scene, at most ``shard_size`` 500
images); about 1.1 ground-truth boxes per detected object, 90 % of them detected with
a jittered box (80 % of the rare ones), the other detections false positives; 2 % of
the ground-truth objects in nuScenes' rare categories; the outliers table (5 %
outliers, rare objects flagged more often), the selection (1 % selected), the caption
parts and concepts of the selected objects, the evaluation_scores table of three
detectors (rare objects score higher) and a training selection with its summary.
Generating them is not timed.

Each part runs in its own child process (bench/_common.py:run_isolated), so each
peak-RSS figure is that part's own (interpreter and libraries included):

1. the baseline: every detection shard read once (``pd.read_parquet`` of the columns
   the stage reads, ``stage.DETECTION_COLUMNS``), before and again after the stage;
   the ratio says how many such reads the evaluation costs;
2. the evaluation as ``scripts/evaluate.py`` runs it: every input read as the rule
   reads it (``stage.read_tables`` for the per-object tables), ``stage.evaluate`` with
   the schema's default ``evaluation`` settings (source ``nuscenes``, as a nuScenes
   run must set it), evaluation_objects.parquet, evaluation.json and the HTML tables;
3. the figure (``rare_objects.report.evaluation.plot``) from that evaluation.json.

``--profile N`` runs part 2 once more under cProfile (in a child) and prints its top N
functions by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import GIB, _child, machine  # noqa: E402

KEYFRAMES_PER_SCENE = 40
WIDTH, HEIGHT = 1600, 900
GT_PER_OBJECT = 1.1
DETECTED_SHARE = 0.90  # of the ground-truth boxes on usable images
RARE_DETECTED_SHARE = 0.80
RARE_SHARE = 0.02
REJECTED_SHARE = 0.001  # images the detect stage rejected
OUTLIER_SHARE = 0.05
SELECTED_SHARE = 0.01
TRAINING_SHARE = 0.10  # of the samples
DETECTORS = ["isolation_forest", "knn_distance", "lof"]
# nuScenes categories with a rough share of the annotations and the detector class
# (COCO names, as the demo detector gives them) an object of it is usually found as.
COMMON = {
    "vehicle.car": (0.43, "car"),
    "human.pedestrian.adult": (0.20, "person"),
    "movable_object.barrier": (0.12, "bench"),
    "movable_object.trafficcone": (0.09, "traffic light"),
    "vehicle.truck": (0.08, "truck"),
    "movable_object.pushable_pullable": (0.02, "suitcase"),
    "vehicle.bus.rigid": (0.015, "bus"),
    "static_object.bicycle_rack": (0.01, "bicycle"),
    "human.pedestrian.construction_worker": (0.01, "person"),
    "human.pedestrian.child": (0.005, "person"),
    "vehicle.bus.bendy": (0.001, "bus"),
    "human.pedestrian.police_officer": (0.001, "person"),
}
RARE = {
    "vehicle.construction": (0.25, "truck"),
    "vehicle.trailer": (0.20, "truck"),
    "vehicle.bicycle": (0.20, "bicycle"),
    "vehicle.motorcycle": (0.20, "motorcycle"),
    "movable_object.debris": (0.05, "suitcase"),
    "human.pedestrian.personal_mobility": (0.03, "person"),
    "human.pedestrian.stroller": (0.03, "person"),
    "vehicle.emergency.police": (0.02, "car"),
    "animal": (0.01, "dog"),
    "human.pedestrian.wheelchair": (0.005, "person"),
    "vehicle.emergency.ambulance": (0.005, "truck"),
}
CLASSES = sorted({name for _, name in [*COMMON.values(), *RARE.values()]})


def run_isolated(func, *args):
    """bench/_common.py:run_isolated, but a child that dies without reporting (killed by
    a signal: the machine is shared) ends the bench with its exit code instead of
    leaving it waiting forever on the queue."""
    import multiprocessing as mp
    import queue as queues

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, func, args, {}))
    proc.start()
    while True:
        try:
            status, result, seconds, peak = queue.get(timeout=5)
            break
        except queues.Empty:
            if proc.is_alive():
                continue
            try:  # it may have reported just before it ended
                status, result, seconds, peak = queue.get(timeout=2)
                break
            except queues.Empty:
                raise SystemExit(
                    f"{func.__name__}: child ended without a result, exit code "
                    f"{proc.exitcode} (negative: killed by that signal)"
                ) from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"child failed:\n{result}")
    return result, seconds, peak


def _hex(rng: np.random.Generator, n: int, digits: int) -> np.ndarray:
    """``n`` random lower-case hex strings of ``digits`` characters (nuScenes tokens)."""
    raw = rng.integers(0, 256, size=(n, digits // 2), dtype=np.uint8)
    return np.array([row.tobytes().hex() for row in raw], dtype=object)


def _settings() -> tuple[dict, dict]:
    """The schema's default ``evaluation`` section for a nuScenes run, and the defaults."""
    from rare_objects.runtime.config import defaults

    config = defaults()
    return config["evaluation"] | {"enabled": True, "source": "nuscenes"}, config


def _generate(root: str, n_objects: int, n_images: int, seed: int) -> dict:
    import pandas as pd
    import pyarrow as pa

    from rare_objects.demo.synthetic_nuscenes import CAMERAS
    from rare_objects.evaluation.nuscenes import CATEGORY_CONCEPTS
    from rare_objects.io import schemas

    rng = np.random.default_rng(seed)
    root = Path(root)
    per_scene = KEYFRAMES_PER_SCENE * len(CAMERAS)

    # Images: scene-major, keyframe, camera; one shard per scene.
    index = np.arange(n_images)
    scene = index // per_scene
    camera = np.array(CAMERAS, dtype=object)[index % len(CAMERAS)]
    stamp = 1533151603512404 + index // len(CAMERAS) * 500_000
    rel = [
        f"samples/{c}/n015-2018-07-24-11-22-45+0800__{c}__{t}.jpg"
        for c, t in zip(camera, stamp.tolist())
    ]
    image_path = np.array([f"/data/sets/nuscenes/{r}" for r in rel], dtype=object)
    image_id = np.array([hashlib.sha1(r.encode()).hexdigest()[:16] for r in rel], dtype=object)
    sample_token = _hex(rng, (n_images + len(CAMERAS) - 1) // len(CAMERAS), 32)[
        index // len(CAMERAS)
    ]
    shard = np.array([f"scene-{s:04d}.0000" for s in range(scene.max() + 1)], dtype=object)[scene]
    status = np.where(rng.random(n_images) < REJECTED_SHARE, "rejected", "ok").astype(object)
    ok = status == "ok"

    # Ground truth: boxes spread over the images, 2 % in rare categories.
    n_gt = int(round(n_objects * GT_PER_OBJECT))
    gt_image = np.sort(rng.integers(0, n_images, n_gt))
    names = np.array([*COMMON, *RARE], dtype=object)
    shares = np.array(
        [s * (1 - RARE_SHARE) for s, _ in COMMON.values()]
        + [s * RARE_SHARE for s, _ in RARE.values()]
    )
    shares /= shares.sum()
    gt_kind = rng.choice(len(names), size=n_gt, p=shares)
    category = names[gt_kind]
    is_rare = gt_kind >= len(COMMON)
    w = np.exp(rng.uniform(np.log(16), np.log(600), n_gt))
    h = np.clip(w * rng.uniform(0.5, 1.6, n_gt), 8, HEIGHT - 1)
    x1 = rng.uniform(0, WIDTH - w)
    y1 = rng.uniform(0, HEIGHT - h)
    box = np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)
    gt_camera = camera[gt_image]
    gt_id = _hex(rng, n_gt, 32) + ":" + gt_camera
    truth = pd.DataFrame(
        {
            "gt_id": gt_id,
            "image_path": image_path[gt_image],
            "category": category,
            "x1": box[:, 0],
            "y1": box[:, 1],
            "x2": box[:, 2],
            "y2": box[:, 3],
            "clipped": rng.random(n_gt) < 0.1,
            "visibility": rng.choice(["1", "2", "3", "4"], n_gt, p=[0.1, 0.1, 0.2, 0.6]),
        }
    )
    schemas.write_table(truth, schemas.GROUND_TRUTH, root / "ground_truth.parquet")
    stats = {
        "source": "nuscenes",
        "boxes": n_gt,
        "categories": truth["category"].value_counts().sort_index().to_dict(),
        "rare_categories": list(RARE),
    }
    (root / "ground_truth_stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    # Detections: a jittered box for most ground-truth boxes on usable images, then
    # false positives up to n_objects.
    found = ok[gt_image] & (
        rng.random(n_gt) < np.where(is_rare, RARE_DETECTED_SHARE, DETECTED_SHARE)
    )
    size = np.stack([w, h, w, h], axis=1)
    jitter = rng.normal(0, 0.04, (n_gt, 4)) * size
    det_box = (box + jitter)[found]
    det_image = gt_image[found]
    det_truth = np.flatnonzero(found)  # the ground-truth row each came from (-1: none)
    kind_class = np.array([c for _, c in [*COMMON.values(), *RARE.values()]], dtype=object)
    det_class = kind_class[gt_kind[found]]
    noisy = rng.random(len(det_class)) < 0.1
    det_class[noisy] = rng.choice(CLASSES, int(noisy.sum()))
    confidence = rng.uniform(0.3, 1.0, len(det_image))
    n_fp = max(0, n_objects - len(det_image))
    fp_image = rng.choice(np.flatnonzero(ok), n_fp)
    fw = np.exp(rng.uniform(np.log(16), np.log(300), n_fp))
    fx, fy = rng.uniform(0, WIDTH - fw), rng.uniform(0, HEIGHT - fw * 0.8)
    det_box = np.concatenate([det_box, np.stack([fx, fy, fx + fw, fy + fw * 0.8], axis=1)])
    det_box[:, [0, 2]] = np.clip(det_box[:, [0, 2]], 0, WIDTH)
    det_box[:, [1, 3]] = np.clip(det_box[:, [1, 3]], 0, HEIGHT)
    det_box[:, 2] = np.maximum(det_box[:, 2], det_box[:, 0] + 1)
    det_box[:, 3] = np.maximum(det_box[:, 3], det_box[:, 1] + 1)
    det_image = np.concatenate([det_image, fp_image])
    det_truth = np.concatenate([det_truth, np.full(n_fp, -1)])
    det_class = np.concatenate([det_class, rng.choice(CLASSES, n_fp)])
    confidence = np.concatenate([confidence, rng.uniform(0.25, 0.6, n_fp)]).astype(np.float32)
    order = np.lexsort((-confidence, det_image))  # per image, by decreasing confidence
    det_image, det_truth, det_box = det_image[order], det_truth[order], det_box[order]
    det_class, confidence = det_class[order], confidence[order]
    n = len(det_image)
    starts = np.searchsorted(det_image, det_image, side="left")
    rank = (np.arange(n) - starts).astype(np.int16)
    object_id = np.array(
        [f"{i}-{r:02d}" for i, r in zip(image_id[det_image], rank.tolist())], dtype=object
    )
    det_box = det_box.astype(np.float32)
    detections = pd.DataFrame(
        {
            "object_id": object_id,
            "image_id": image_id[det_image],
            "shard": shard[det_image],
            "image_path": image_path[det_image],
            "sample_token": sample_token[det_image],
            "camera": camera[det_image],
            "rank": rank,
            "class_id": np.searchsorted(CLASSES, det_class).astype(np.int16),
            "class_name": det_class,
            "confidence": confidence,
            "x1": det_box[:, 0],
            "y1": det_box[:, 1],
            "x2": det_box[:, 2],
            "y2": det_box[:, 3],
            "image_width": WIDTH,
            "image_height": HEIGHT,
            "crop_width": np.ceil(det_box[:, 2] - det_box[:, 0]).astype(np.int32),
            "crop_height": np.ceil(det_box[:, 3] - det_box[:, 1]).astype(np.int32),
        }
    )
    n_objects_of = np.bincount(det_image, minlength=n_images).astype(np.int32)
    images = pd.DataFrame(
        {
            "image_id": image_id,
            "shard": shard,
            "image_path": image_path,
            "sample_token": sample_token,
            "camera": camera,
            "image_width": WIDTH,
            "image_height": HEIGHT,
            "n_objects": n_objects_of,
            "status": status,
        }
    )
    det_scene = scene[det_image]
    det_bounds = np.searchsorted(det_scene, np.arange(scene.max() + 2))
    image_bounds = np.searchsorted(scene, np.arange(scene.max() + 2))
    for s in range(scene.max() + 1):
        name = f"scene-{s:04d}.0000.parquet"
        rows = detections.iloc[det_bounds[s] : det_bounds[s + 1]]
        schemas.write_table(
            pa.Table.from_pandas(rows, preserve_index=False),
            schemas.DETECTIONS,
            root / "detections" / name,
        )
        schemas.write_table(
            images.iloc[image_bounds[s] : image_bounds[s + 1]],
            schemas.IMAGES,
            root / "images" / name,
        )

    # The run's per-object tables: rare objects are flagged and score higher.
    rare_object = np.zeros(n, dtype=bool)
    rare_object[det_truth >= 0] = is_rare[det_truth[det_truth >= 0]]
    p_outlier = np.where(rare_object, 0.30, (OUTLIER_SHARE * n - 0.3 * rare_object.sum()) / n)
    code = np.zeros(n, dtype=np.int8)
    flagged = rng.random(n) < p_outlier
    code[flagged] = rng.choice([1, 2, 3], int(flagged.sum()), p=[0.45, 0.45, 0.1])
    lof = rng.normal(-1.2, 0.2, n) - 0.4 * rare_object
    outliers = pd.DataFrame(
        {
            "object_id": object_id,
            "class_name": det_class,
            "global_score": lof.astype(np.float32),
            "class_score": (lof + rng.normal(0, 0.1, n)).astype(np.float32),
            "global_outlier": code & 1 > 0,
            "class_outlier": code & 2 > 0,
            "outlier_code": code,
            "is_outlier": code > 0,
            "score_global": (-lof).astype(np.float32),
            "score_class": (-lof).astype(np.float32),
        }
    )
    schemas.write_table(outliers, schemas.OUTLIERS, root / "outliers.parquet")
    n_selected = min(int(round(n * SELECTED_SHARE)), int(flagged.sum()))
    picked = np.sort(rng.choice(np.flatnonzero(flagged), n_selected, replace=False))
    selected = np.zeros(n, dtype=bool)
    selected[picked] = True
    needs_vlm = selected & (rng.random(n) < 0.9)
    partition = np.full(n, np.nan)
    partition[picked] = np.arange(n_selected) % 4
    selection = pd.DataFrame(
        {
            "object_id": object_id,
            "class_name": det_class,
            "is_outlier": code > 0,
            "target_matches": None,
            "is_yolo_potential": False,
            "candidate": code > 0,
            "cluster_id": np.where(code > 0, rng.integers(0, 5000, n), -1),
            "selected": selected,
            "reason": np.where(selected, "outlier", "not a candidate"),
            "needs_vlm": needs_vlm,
            "caption_partition": partition,
            "image_path": image_path[det_image],
            "confidence": confidence,
            "x1": det_box[:, 0],
            "y1": det_box[:, 1],
            "x2": det_box[:, 2],
            "y2": det_box[:, 3],
            "priority": lof.astype(np.float32),
        }
    )
    selection["cluster_id"] = selection["cluster_id"].where(code > 0)
    schemas.write_table(selection, schemas.SELECTION, root / "selection.parquet")
    ids = object_id[picked]
    error = np.where(rng.random(n_selected) < 0.005, "timeout", None)
    captions = pd.DataFrame(
        {
            "object_id": ids,
            "caption_kind": np.where(needs_vlm[picked], "vlm", "simple"),
            "description": [f"an unusual object, number {i}" for i in range(n_selected)],
            "error": error,
            "backend": "openai",
            "model": "Qwen2-VL-7B-Instruct",
        }
    )
    for part in range(4):
        schemas.write_table(
            captions[partition[picked] == part],
            schemas.CAPTIONS,
            root / "captions" / f"part-{part:03d}.parquet",
        )
    concept_list = _settings()[1]["concepts"]["list"]
    truth_concept = np.array(
        [
            CATEGORY_CONCEPTS.get(c) if t >= 0 else None
            for c, t in zip(category[np.maximum(det_truth[picked], 0)], det_truth[picked])
        ],
        dtype=object,
    )
    right = (rng.random(n_selected) < 0.6) & (truth_concept != None)  # noqa: E711
    top = np.where(right, truth_concept, rng.choice(concept_list, n_selected))
    pd_concepts = pd.DataFrame(
        {
            "object_id": ids,
            "top_concept": top,
            "top_concept_is_common": np.isin(top, ["car", "truck", "bus", "pedestrian"]),
            "is_final_outlier": ~np.isin(top, ["car", "truck", "bus", "pedestrian"])
            & (rng.random(n_selected) < 0.8),
            "concepts": [list(concept_list[:3])] * n_selected,
            "probabilities": [np.array([0.5, 0.3, 0.2], np.float32)] * n_selected,
        }
    )
    schemas.write_table(pd_concepts, schemas.CONCEPTS, root / "concepts.parquet")

    # evaluation_scores: each detector's scores (rare objects higher) and its flags.
    columns = {"object_id": object_id, "class_name": det_class}
    shared = rng.normal(0, 1, n)
    for i, name in enumerate(DETECTORS):
        base = 0.6 * shared + 0.8 * rng.normal(0, 1, n) + (0.8 + 0.2 * i) * rare_object
        glob = base + rng.normal(0, 0.3, n)
        cls = base + rng.normal(0, 0.3, n)
        cut_g, cut_c = np.quantile(glob, 0.975), np.quantile(cls, 0.975)
        columns[f"score_global_{name}"] = glob.astype(np.float32)
        columns[f"score_class_{name}"] = cls.astype(np.float32)
        columns[f"is_outlier_{name}"] = (glob >= cut_g) | (cls >= cut_c)
    schemas.write_table(
        pd.DataFrame(columns),
        schemas.evaluation_scores_schema(DETECTORS),
        root / "evaluation_scores.parquet",
    )

    # The training selection: the samples holding a selected object, then random ones.
    samples = np.unique(sample_token[ok])
    mined = np.unique(sample_token[det_image[picked]])
    budget = max(len(mined), int(round(TRAINING_SHARE * len(samples))))
    rest = np.setdiff1d(samples, mined)
    fill = rng.choice(rest, min(len(rest), budget - len(mined)), replace=False)
    chosen = np.concatenate([mined, fill])
    schemas.write_table(
        pd.DataFrame(
            {
                "sample": chosen,
                "reason": ["mined"] * len(mined) + ["random_fill"] * len(fill),
                "mined_by": ["outliers"] * len(mined) + [None] * len(fill),
                "mined_objects": np.int32(1),
                "n_objects": np.int32(4),
                "n_images": np.int32(6),
            }
        ),
        schemas.TRAINING_SELECTION,
        root / "training_selection.parquet",
    )
    summary = {
        "mode": "mined_plus_random_fill",
        "total_samples": int(len(samples)),
        "selected_samples": int(len(chosen)),
    }
    (root / "training_selection_summary.json").write_text(json.dumps(summary) + "\n")
    return {
        "objects": n,
        "false_positives": n_fp,
        "images": n_images,
        "rejected": int((~ok).sum()),
        "shards": int(scene.max() + 1),
        "truth": n_gt,
        "rare_truth": int(is_rare.sum()),
        "undetected_truth": int(n_gt - found.sum()),
        "outliers": int(flagged.sum()),
        "selected": n_selected,
        "samples": int(len(samples)),
        "training_samples": int(len(chosen)),
    }


def _inputs(root: Path) -> dict:
    return {
        "detections": [str(p) for p in sorted((root / "detections").glob("*.parquet"))],
        "images": [str(p) for p in sorted((root / "images").glob("*.parquet"))],
        "captions": [str(p) for p in sorted((root / "captions").glob("*.parquet"))],
    }


def _read_detections(root: str, columns: list[str]) -> int:
    """The baseline: every detection shard read once, the columns the stage reads."""
    import pandas as pd

    rows = 0
    for path in _inputs(Path(root))["detections"]:
        rows += len(pd.read_parquet(path, columns=columns))
    return rows


def _imports() -> None:
    """The modules the evaluation imports (their time is part of the stage's)."""
    import pandas  # noqa: F401

    from rare_objects.evaluation import stage  # noqa: F401
    from rare_objects.report import evaluation, gallery  # noqa: F401


def _evaluate(root: str, out: str) -> dict:
    """What scripts/evaluate.py does, but the figure (timed on its own)."""
    import pandas as pd

    from rare_objects.evaluation import stage
    from rare_objects.io import atomic, schemas
    from rare_objects.report import evaluation as report_evaluation
    from rare_objects.report import gallery
    from rare_objects.stages.training_selection import sample_column

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = _inputs(root)
    settings, config = _settings()
    key = sample_column("nuscenes")
    truth_stats = json.loads((root / "ground_truth_stats.json").read_text(encoding="utf-8"))
    truth = pd.read_parquet(root / "ground_truth.parquet")
    images = pd.concat(
        [pd.read_parquet(p, columns=list({"image_path", "status", key})) for p in files["images"]],
        ignore_index=True,
    )
    tables = stage.read_tables(
        str(root / "outliers.parquet"),
        str(root / "selection.parquet"),
        files["captions"],
        str(root / "concepts.parquet"),
    )
    scores = pd.read_parquet(root / "evaluation_scores.parquet")
    chosen = set(pd.read_parquet(root / "training_selection.parquet", columns=["sample"])["sample"])
    summary = json.loads((root / "training_selection_summary.json").read_text(encoding="utf-8"))
    concept_of = stage.concept_names(
        sorted(set(truth["category"])),
        settings["category_concepts"],
        config["concepts"]["list"],
        settings["source"],
    )
    report, objects = stage.evaluate(
        truth,
        images,
        files["detections"],
        tables,
        scores,
        (chosen, summary),
        settings,
        truth_stats["rare_categories"],
        config["targets"],
        concept_of,
        key,
        config["seed"],
    )
    report = {"source": settings["source"], "ground_truth": truth_stats, **report}
    entries = list(stage.detector_entries(settings["detectors"], settings["combinations"]))
    schemas.write_table(
        objects, schemas.evaluation_objects_schema(entries), out / "evaluation_objects.parquet"
    )
    atomic.write_text(
        out / "evaluation.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    )
    atomic.write_text(
        out / "evaluation.html",
        gallery.html_tables(
            "Evaluation against the ground truth",
            report_evaluation.frames(report),
            report["summary"],
        ),
    )
    rare = report["rare"]
    return {
        "objects_rows": int(len(objects)),
        "detected": int(objects["detected"].sum()),
        "rare": rare["objects"],
        "rare_detected": rare["detected"],
        "summary": report["summary"],
    }


def _plot(out: str) -> None:
    from rare_objects.report import evaluation as report_evaluation

    report = json.loads((Path(out) / "evaluation.json").read_text(encoding="utf-8"))
    report_evaluation.plot(report, Path(out) / "evaluation.png")


def _profiled(root: str, out: str, top: int) -> str:
    import cProfile
    import io
    import pstats

    profile = cProfile.Profile()
    profile.runcall(_evaluate, root, out)
    text = io.StringIO()
    for order in ("cumulative", "tottime"):
        text.write(f"--- sorted by {order}\n")
        stats = pstats.Stats(profile, stream=text).strip_dirs().sort_stats(order)
        stats.print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=240_000)
    parser.add_argument("--quick", action="store_true", help="1/20 of the sizes, a smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="then profile the stage: top N lines"
    )
    args = parser.parse_args()
    if args.quick:
        args.objects, args.images = args.objects // 20, args.images // 20
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, seconds, _ = run_isolated(
            _generate, str(tmp / "in"), args.objects, args.images, args.seed
        )
        size = sum(p.stat().st_size for p in (tmp / "in").rglob("*.parquet")) / GIB
        print(
            f"data: {data['images']:,} images ({data['rejected']:,} rejected) in "
            f"{data['shards']:,} scene shards, {data['samples']:,} samples; "
            f"{data['objects']:,} detected objects ({data['false_positives']:,} false positives); "
            f"{data['truth']:,} ground-truth boxes ({data['rare_truth']:,} rare, "
            f"{data['undetected_truth']:,} undetected); {data['outliers']:,} outliers, "
            f"{data['selected']:,} selected and captioned; training selection "
            f"{data['training_samples']:,} samples; parquet {size:.2f} GiB "
            f"(generated in {seconds:.0f} s)"
        )
        from rare_objects.evaluation.stage import DETECTION_COLUMNS

        rows, base_s, base_rss = run_isolated(_read_detections, str(tmp / "in"), DETECTION_COLUMNS)
        print(
            f"baseline, every detection shard read once ({rows:,} rows, "
            f"{len(DETECTION_COLUMNS)} columns, pandas import included): {base_s:.1f} s, "
            f"peak RSS {base_rss / GIB:.2f} GiB"
        )
        result, eval_s, eval_rss = run_isolated(_evaluate, str(tmp / "in"), str(tmp / "out"))
        print(
            f"evaluation (read tables, evaluate, objects table, evaluation.json, HTML): "
            f"{eval_s:.1f} s, peak RSS {eval_rss / GIB:.2f} GiB "
            f"({eval_rss / data['truth']:,.0f} bytes per ground-truth object)"
        )
        print(
            f"  {result['objects_rows']:,} ground-truth objects on usable images, "
            f"{result['detected']:,} matched; rare {result['rare']:,}, "
            f"matched {result['rare_detected']:,}"
        )
        print(f"  summary: {result['summary']}")
        _, import_s, _ = run_isolated(_imports)
        print(
            f"  of which importing the stage's modules (pandas, scikit-learn, ...): {import_s:.1f} s"
        )
        _, plot_s, plot_rss = run_isolated(_plot, str(tmp / "out"))
        print(f"figure (report.evaluation.plot): {plot_s:.1f} s, peak RSS {plot_rss / GIB:.2f} GiB")
        _, again_s, _ = run_isolated(_read_detections, str(tmp / "in"), DETECTION_COLUMNS)
        base = (base_s + again_s) / 2
        print(
            f"baseline again after the stage: {again_s:.1f} s; ratio evaluation / baseline "
            f"(mean of the two, {base:.1f} s): {eval_s / base:.1f} reads of the detections"
        )
        written = (tmp / "out" / "evaluation_objects.parquet").stat().st_size / GIB
        print(f"evaluation_objects.parquet {written:.3f} GiB")
        if args.profile:
            text, _, _ = run_isolated(_profiled, str(tmp / "in"), str(tmp / "prof"), args.profile)
            print(text)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
