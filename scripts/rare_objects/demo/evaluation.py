"""How the demo's objects come through every stage, planted and ordinary ones apart.

Each ground-truth object is matched to a detection (IoU >= 0.5), then followed through
the results: LOF outlier, selected, captioned by the VLM, caption naming its true kind
(:func:`rare_objects.demo.scenes.caption_kind`: the planted kind for a planted object, the
class for an ordinary one), final outlier.

    python -m rare_objects.demo.evaluation RESULTS_DIR DEMO_IMAGES_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from rare_objects.demo.scenes import caption_kind, read_ground_truth


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between boxes a (n, 4) and b (m, 4) -> (n, m)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def match_ground_truth(
    truth: pd.DataFrame, results: pd.DataFrame, min_iou: float = 0.5
) -> pd.DataFrame:
    """Each ground-truth object with its best-overlapping detection (or none)."""
    matched = truth.copy()
    matched["object_index_in_results"] = -1
    for path, objects in truth.groupby("abs_path"):
        found = results[results["original_path"] == path]
        if found.empty:
            continue
        overlaps = iou(
            objects[["x1", "y1", "x2", "y2"]].to_numpy(float),
            np.stack(found["bbox"].to_numpy()).astype(float),
        )
        best = overlaps.argmax(axis=1)
        ok = overlaps[np.arange(len(objects)), best] >= min_iou
        matched.loc[objects.index[ok], "object_index_in_results"] = found.index[best[ok]]
    return matched


def _stages(rows: pd.DataFrame) -> dict:
    """Counts of ground-truth ``rows`` (with their matched result columns) at each stage."""
    detected = rows[rows["detected"]]
    captioned = detected[detected["captioned"]]
    n_captioned = len(captioned)
    correct = int(captioned["caption_correct"].sum())
    final = int(captioned["is_final_outlier"].sum())
    return {
        "objects": int(len(rows)),
        "detected": int(len(detected)),
        "flagged_outlier": int(detected["is_outlier"].sum()),
        "selected": int(detected["selected"].sum()),
        "captioned": n_captioned,
        "captioned_correctly": correct,
        "final_outliers": int(detected["is_final_outlier"].sum()),
        "detected_share": round(len(detected) / len(rows), 3) if len(rows) else None,
        "outlier_rate": round(float(detected["is_outlier"].mean()), 3) if len(detected) else None,
        "caption_accuracy": round(correct / n_captioned, 3) if n_captioned else None,
        "final_outlier_share_of_captioned": round(final / n_captioned, 3) if n_captioned else None,
    }


def _vlm_captioned(results_dir: Path, object_ids: pd.Series) -> np.ndarray:
    """Whether each object got a VLM caption without error (the captions tables)."""
    parts = sorted((results_dir / "tables" / "captions").glob("*.parquet"))
    if not parts:
        return np.zeros(len(object_ids), dtype=bool)
    captions = pd.concat(
        [pd.read_parquet(p, columns=["object_id", "caption_kind", "error"]) for p in parts]
    )
    vlm = set(
        captions.loc[(captions["caption_kind"] == "vlm") & captions["error"].isna(), "object_id"]
    )
    return object_ids.isin(vlm).to_numpy()


def planted_report(results_dir: str | Path, images_dir: str | Path) -> dict:
    """The demo's evaluation: every stage for planted and for ordinary objects (see the module doc)."""
    results_dir, images_dir = Path(results_dir), Path(images_dir)
    truth = read_ground_truth(images_dir)
    truth["abs_path"] = [str(images_dir / p) for p in truth["image_path"]]
    results = pd.DataFrame(json.loads((results_dir / "detection_results.json").read_text()))
    results["captioned"] = (
        _vlm_captioned(results_dir, results["object_id"]) & results["description"].notna()
    )
    matched = match_ground_truth(truth, results)
    hit = matched["object_index_in_results"].to_numpy() >= 0
    rows = matched["object_index_in_results"].to_numpy()[hit]
    matched["detected"] = hit
    for column in ("is_outlier", "selected", "captioned", "is_final_outlier"):
        values = results[column].astype("boolean").fillna(False).to_numpy(dtype=bool)
        matched[column] = False
        matched.loc[hit, column] = values[rows]
    descriptions = results["description"].to_numpy(dtype=object)
    true_kind = np.where(matched["planted"], matched["planted_kind"], matched["class_name"])
    named = np.array(
        [
            caption_kind(descriptions[r]) if h else None
            for r, h in zip(matched["object_index_in_results"], hit)
        ],
        dtype=object,
    )
    matched["caption_correct"] = matched["captioned"] & (named == true_kind)

    planted = _stages(matched[matched["planted"]])
    ordinary = _stages(matched[~matched["planted"]])
    captioned = matched[matched["captioned"]]
    planted_rate, normal_rate = planted["outlier_rate"], ordinary["outlier_rate"]
    return {
        "ground_truth_objects": int(len(truth)),
        "detected_share": round(float(hit.mean()), 3),
        "planted": planted,
        "ordinary": ordinary,
        "caption_accuracy": round(float(captioned["caption_correct"].mean()), 3)
        if len(captioned)
        else None,
        "outlier_lift": round(planted_rate / normal_rate, 2)
        if planted_rate is not None and normal_rate
        else None,
        "all_objects": int(len(results)),
        "all_outliers": int(results["is_outlier"].sum()),
        "all_captioned": int(results["captioned"].sum()),
        "all_final_outliers": int(
            results["is_final_outlier"].astype("boolean").fillna(False).sum()
        ),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir")
    parser.add_argument("images_dir")
    args = parser.parse_args(argv)
    report = planted_report(args.results_dir, args.images_dir)
    (Path(args.results_dir) / "demo_evaluation.json").write_text(
        json.dumps(report, indent=2) + "\n"
    )
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        print(f"{key:>22}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
