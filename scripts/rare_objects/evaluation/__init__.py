"""Evaluation of the mining against ground truth: ground-truth boxes (COCO files, nuScenes
annotation tables), one-to-one matching of detections to them, and the measures of
``evaluation.json`` (per category, per outlier detector, the training selection)."""
