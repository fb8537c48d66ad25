"""Detections to ground-truth boxes, per image, one-to-one: COCO's greedy rule.

Detections are taken in decreasing confidence; each takes the still unmatched
ground-truth box it overlaps most, if that IoU reaches the threshold
(``pycocotools.cocoeval``'s rule, with crowd boxes left out). So every
ground-truth object is matched to one detected object or to none (missed by
the detector), and no detected object matches two.
"""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (n, 4) and ``b`` (m, 4), both ``[x1, y1, x2, y2]``: an (n, m) array."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_image(
    truth_boxes: np.ndarray,
    detection_boxes: np.ndarray,
    confidences: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """For each ground-truth box of one image, the index of its detection, or -1.

    Detections in decreasing confidence (ties in their given order); each takes
    the unmatched ground-truth box of highest IoU >= ``iou_threshold`` (the first
    of equal ones).
    """
    n_truth = len(truth_boxes)
    matched = np.full(n_truth, -1, dtype=np.int64)
    if n_truth == 0 or len(detection_boxes) == 0:
        return matched
    overlaps = box_iou(detection_boxes, truth_boxes)
    free = np.ones(n_truth, dtype=bool)
    for d in np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable"):
        candidates = np.where(free, overlaps[d], -1.0)
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            matched[g] = d
            free[g] = False
            if not free.any():
                break
    return matched
