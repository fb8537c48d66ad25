"""How well the demo's planted unusual objects come out: detected, outliers, final outliers.

    python -m rare_objects.demo_eval RESULTS_DIR DEMO_IMAGES_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .demo_scenes import read_ground_truth


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes a (n, 4) and b (m, 4) -> (n, m)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def match_ground_truth(truth: pd.DataFrame, results: pd.DataFrame, min_iou: float = 0.5) -> pd.DataFrame:
    """Each ground-truth object with its best-overlapping detection (or none)."""
    matched = truth.copy()
    matched["object_index_in_results"] = -1
    for path, objects in truth.groupby("abs_path"):
        found = results[results["original_path"] == path]
        if found.empty:
            continue
        overlaps = iou(objects[["x1", "y1", "x2", "y2"]].to_numpy(float), np.stack(found["bbox"].to_numpy()).astype(float))
        best = overlaps.argmax(axis=1)
        ok = overlaps[np.arange(len(objects)), best] >= min_iou
        matched.loc[objects.index[ok], "object_index_in_results"] = found.index[best[ok]]
    return matched


def planted_report(results_dir: str | Path, images_dir: str | Path) -> dict:
    images_dir = Path(images_dir)
    truth = read_ground_truth(images_dir)
    truth["abs_path"] = [str(images_dir / p) for p in truth["image_path"]]
    results = pd.DataFrame(json.loads((Path(results_dir) / "detection_results.json").read_text()))
    matched = match_ground_truth(truth, results)
    hit = matched["object_index_in_results"] >= 0
    flags = results["is_outlier"].to_numpy()
    final = results["is_final_outlier"].fillna(False).astype(bool).to_numpy()
    planted = matched[matched["planted"] & hit]
    normal = matched[~matched["planted"] & hit]
    outlier_rate = lambda rows: float(flags[rows["object_index_in_results"]].mean()) if len(rows) else float("nan")  # noqa: E731
    planted_rate, normal_rate = outlier_rate(planted), outlier_rate(normal)
    return {
        "ground_truth_objects": int(len(truth)),
        "detected_share": round(float(hit.mean()), 3),
        "planted_objects": int(truth["planted"].sum()),
        "planted_detected": int(len(planted)),
        "planted_flagged_outlier": int(flags[planted["object_index_in_results"]].sum()) if len(planted) else 0,
        "planted_outlier_rate": round(planted_rate, 3),
        "normal_outlier_rate": round(normal_rate, 3),
        "lift": round(planted_rate / normal_rate, 2) if normal_rate > 0 else None,
        "planted_final_outliers": int(final[planted["object_index_in_results"]].sum()) if len(planted) else 0,
        "all_outliers": int(flags.sum()),
        "all_objects": int(len(results)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("images_dir")
    args = parser.parse_args(argv)
    report = planted_report(args.results_dir, args.images_dir)
    (Path(args.results_dir) / "demo_evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        print(f"{key:>26}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
