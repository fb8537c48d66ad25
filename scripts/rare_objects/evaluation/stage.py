"""The evaluation stage: the run's results against ground truth, shard by shard.

:func:`match_shards` streams the detection shards (one in memory at a time) and
matches each image's detections to its ground-truth boxes
(:mod:`rare_objects.evaluation.matching`). :func:`object_flags` follows every
ground-truth object through the stages by its matched object's id: flagged by
the run's outlier stage and by each evaluated detector, selected, captioned by the
VLM, captioned with a top concept naming its category, final outlier, target
match. :func:`evaluate` puts the measures of
:mod:`rare_objects.evaluation.measures` together into ``evaluation.json``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rare_objects.evaluation import measures
from rare_objects.evaluation.matching import match_image
from rare_objects.io import schemas
from rare_objects.stages.targets import is_target

log = logging.getLogger("rare_objects.evaluation")

STAGE_FLAGS = schemas.EVALUATION_STAGE_FLAGS
DETECTION_COLUMNS = ["object_id", "image_path", "class_name", "confidence", "x1", "y1", "x2", "y2"]
SCOPES = ("global", "class", "global_or_class")


def match_shards(truth: pd.DataFrame, detection_paths, iou_threshold: float) -> pd.DataFrame:
    """``truth`` with ``object_id`` and ``class_name`` of its matched detection (null when
    missed) and the match's ``iou``; one detection shard is read at a time.

    The shard's columns are taken out of pandas once and its rows grouped by image with one
    sort: at 240,000 images, indexing a DataFrame per image cost ten times the matching.
    """
    by_image = truth.groupby("image_path", sort=False).indices
    boxes = truth[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
    object_id = np.full(len(truth), None, dtype=object)
    class_name = np.full(len(truth), None, dtype=object)
    found_boxes = np.full((len(truth), 4), np.nan)  # each object's matched box, NaN if missed
    for path in detection_paths:
        shard = pd.read_parquet(path, columns=DETECTION_COLUMNS)
        codes, images = pd.factorize(shard["image_path"].to_numpy(dtype=object))
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(images) + 1))
        detected = shard[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)
        confidence = shard["confidence"].to_numpy(np.float64)
        ids = shard["object_id"].to_numpy(dtype=object)
        classes = shard["class_name"].to_numpy(dtype=object)
        for k, image in enumerate(images):
            truth_rows = by_image.get(image)
            if truth_rows is None:  # an image without labels: its detections match nothing
                continue
            rows = order[bounds[k] : bounds[k + 1]]
            matched = match_image(
                boxes[truth_rows], detected[rows], confidence[rows], iou_threshold
            )
            hit = matched >= 0
            taken = rows[matched[hit]]
            object_id[truth_rows[hit]] = ids[taken]
            class_name[truth_rows[hit]] = classes[taken]
            found_boxes[truth_rows[hit]] = detected[taken]
    out = truth.copy()
    out["object_id"] = object_id
    out["class_name"] = class_name
    with np.errstate(invalid="ignore"):  # NaN where missed
        out["iou"] = _pair_iou(boxes, found_boxes)
    return out


def is_in(values: pd.Series, members) -> np.ndarray:
    """Whether each value is one of ``members``, through a hash table (pandas' isin on
    Arrow-backed strings loops in Python: seconds per million)."""
    return pd.Index(values.to_numpy(dtype=object)).isin(list(members))


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each row of ``a`` with the same row of ``b``."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda r: (r[:, 2] - r[:, 0]) * (r[:, 3] - r[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _lookup(ids: pd.Series, table: pd.DataFrame, column: str, fill) -> np.ndarray:
    """``table[column]`` for each id (``table`` indexed by object_id), ``fill`` where absent."""
    found = table[column].reindex(ids.to_numpy())
    return found.astype(object).where(found.notna(), fill).to_numpy()


def object_flags(
    matched: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    detector_flags: pd.DataFrame,
    targets: dict[str, list[str]],
    concept_of: dict[str, str],
) -> pd.DataFrame:
    """``matched`` (from :func:`match_shards`) with a boolean column per stage flag
    (:data:`STAGE_FLAGS`) and one ``outlier_<entry>`` per evaluated detector entry
    (``detector_flags``: one boolean column per entry, indexed by object_id).

    ``tables``: the run's per-object tables indexed by object_id
    (``outliers``, ``selection``, ``captions``, ``concepts``).
    """
    out = matched.copy()
    ids = out["object_id"]
    out["detected"] = ids.notna().to_numpy()
    out["outlier"] = _lookup(ids, tables["outliers"], "is_outlier", False).astype(bool)
    out["selected"] = _lookup(ids, tables["selection"], "selected", False).astype(bool)
    captions = tables["captions"]
    vlm = captions[(captions["caption_kind"] == "vlm") & captions["error"].isna()]
    out["captioned"] = is_in(ids, vlm.index)
    top = _lookup(ids, tables["concepts"], "top_concept", None)
    wanted = out["category"].map(concept_of).to_numpy(dtype=object)
    out["captioned_naming_category"] = (
        out["captioned"].to_numpy()
        & (top == wanted)
        & (
            wanted != None  # noqa: E711 - elementwise over an object array
        )
    )
    out["final_outlier"] = _lookup(ids, tables["concepts"], "is_final_outlier", False).astype(bool)
    out["target_match"] = (
        is_target(out["class_name"].fillna(""), targets) & out["detected"].to_numpy()
    )
    for entry in detector_flags.columns:
        out[f"outlier_{entry}"] = _lookup(ids, detector_flags, entry, False).astype(bool)
    return out


def detector_entries(detectors: list[str], combinations: list[list[str]]) -> dict[str, list[str]]:
    """Every evaluated ranking: each detector alone, then each combination (``a+b``)."""
    entries = {name: [name] for name in detectors}
    for members in combinations:
        entries["+".join(sorted(members))] = sorted(members)
    return entries


def entry_scores(scores: pd.DataFrame, members: list[str]) -> dict[str, np.ndarray]:
    """One entry's ranking scores over the scored objects (``scores``: the
    evaluation_scores table), on the outliers stage's scale: each member's
    percentile rank, globally and within the object's class, the highest of the
    members (``global``, ``class``), and the higher of the two (``global_or_class``,
    the ranking behind the original's OR of the two flags)."""
    classes = scores["class_name"].to_numpy(dtype=object).astype(str)
    global_rank = measures.combined_rank(
        [
            measures.percentile_ranks(scores[f"score_global_{m}"].to_numpy(np.float64))
            for m in members
        ]
    )
    class_rank = measures.combined_rank(
        [
            measures.percentile_ranks(scores[f"score_class_{m}"].to_numpy(np.float64), classes)
            for m in members
        ]
    )
    return {
        "global": global_rank,
        "class": class_rank,
        "global_or_class": measures.combined_rank([global_rank, class_rank]),
    }


def entry_flags(scores: pd.DataFrame, entries: dict[str, list[str]]) -> pd.DataFrame:
    """Per entry, the OR of its members' outlier flags (what ``outliers.detectors`` set to
    the members would flag), indexed by object_id."""
    flags = {
        name: np.logical_or.reduce([scores[f"is_outlier_{m}"].to_numpy(bool) for m in members])
        for name, members in entries.items()
    }
    return pd.DataFrame(flags, index=pd.Index(scores["object_id"], name="object_id"))


def rank_detectors(
    scores: pd.DataFrame, rare_ids: set[str], entries: dict[str, list[str]], ks: list[int]
) -> tuple[dict, dict]:
    """Per entry and scope, the ranking measures of the rare objects; and the random ranking."""
    positive = is_in(scores["object_id"], rare_ids)
    flags = entry_flags(scores, entries)
    result = {}
    for name, members in entries.items():
        ranked = entry_scores(scores, members)
        result[name] = {
            "members": members,
            "flagged": int(flags[name].sum()),
            "flagged_rare": int((flags[name].to_numpy() & positive).sum()),
            **{scope: measures.ranking_measures(ranked[scope], positive, ks) for scope in SCOPES},
        }
    return result, measures.random_ranking(positive, ks)


def best_entries(ranked: dict) -> dict:
    """The entry with the highest AUROC and the one with the highest average precision
    (on the global_or_class ranking, as the original flags)."""
    best = {}
    for measure in ("auroc", "average_precision"):
        valued = {
            name: e["global_or_class"][measure]
            for name, e in ranked.items()
            if e["global_or_class"][measure] is not None
        }
        best[measure] = max(valued, key=lambda n: (valued[n], -len(n))) if valued else None
    return best


def selection_measures(
    objects: pd.DataFrame,
    sample_of: pd.Series,
    rare: list[str],
    selected: set[str],
    summary: dict,
    draws: int,
    seed: int,
) -> dict:
    """For each rare category, the training selection's share of the pool's samples that
    hold it, beside a random selection of the same size (:func:`measures.selection_recall`)."""
    pool, budget = int(summary["total_samples"]), int(summary["selected_samples"])
    samples = objects["image_path"].map(sample_of)
    result = {}
    for i, category in enumerate(rare):
        holding = set(samples[(objects["category"] == category).to_numpy()].dropna())
        result[category] = measures.selection_recall(
            len(holding), len(holding & selected), pool, budget, draws, seed + i
        )
    return {
        "mode": summary.get("mode", "mined_plus_random_fill"),
        "pool_samples": pool,
        "selected_samples": budget,
        "categories": result,
    }


def mining_ceiling(objects: pd.DataFrame, rare: list[str]) -> dict:
    """Per rare category: its objects, those the detector missed, and the best recall any
    later stage could reach."""
    result = {}
    for category in rare:
        rows = objects[objects["category"] == category]
        missed = int((~rows["detected"]).sum())
        result[category] = {
            "objects": int(len(rows)),
            "missed_by_detector": missed,
            "max_recall": round(1 - missed / len(rows), 4) if len(rows) else None,
        }
    return result


def summary_line(report: dict) -> str:
    """The one line the log and ``make demo`` print."""
    rare = report["rare"]
    best = report["best"]
    ranked = report["detectors"]
    parts = [
        f"rare objects {rare['objects']}: detected {rare['detected']}",
        f"flagged {rare['outlier']}",
        f"captioned {rare['captioned']}",
        f"final outliers {rare['final_outlier']}",
    ]
    if best["auroc"]:
        entry = ranked[best["auroc"]]["global_or_class"]
        parts.append(
            f"best AUROC {best['auroc']} {entry['auroc']} (AP {entry['average_precision']}, "
            f"random {report['random_ranking']['average_precision']})"
        )
    selection = report.get("training_selection")
    if selection:
        shares = [
            f"{c} {v['share']:.2f} vs {v['random_expected_share']:.2f}"
            for c, v in selection["categories"].items()
            if v.get("share") is not None
        ]
        if shares:
            parts.append("selection share vs random: " + ", ".join(shares))
    return "; ".join(parts)


def read_tables(outliers, selection, captions, concepts) -> dict[str, pd.DataFrame]:
    """The run's per-object tables that the flags come from, indexed by object_id."""

    def read(paths, columns):
        return schemas.read_parts(paths, ["object_id", *columns]).set_index("object_id")

    return {
        "outliers": read(outliers, ["is_outlier"]),
        "selection": read(selection, ["selected"]),
        "captions": read(captions, ["caption_kind", "error"]),
        "concepts": read(concepts, ["top_concept", "is_final_outlier"]),
    }


def evaluate(
    truth: pd.DataFrame,
    images: pd.DataFrame,
    detection_paths,
    tables: dict[str, pd.DataFrame],
    scores: pd.DataFrame,
    selection: tuple[set[str], dict] | None,
    settings: dict,
    rare: list[str],
    targets: dict[str, list[str]],
    concept_of: dict[str, str],
    sample_column: str,
    seed: int,
) -> tuple[dict, pd.DataFrame]:
    """``evaluation.json``'s content and the per-ground-truth-object table.

    ``truth``: the run's ground truth (:mod:`rare_objects.evaluation.ground_truth`);
    ``images``: the run's image tables (``image_path``, ``status`` and the sample column);
    ``scores``: the evaluation_scores table; ``selection``: the training selection's
    samples and summary, or None; ``settings``: the ``evaluation`` section.
    """
    usable = images[images["status"] == "ok"]
    on_usable = is_in(truth["image_path"], set(usable["image_path"]))
    matched = match_shards(truth[on_usable], detection_paths, settings["iou_threshold"])
    entries = detector_entries(settings["detectors"], settings["combinations"])
    objects = object_flags(matched, tables, entry_flags(scores, entries), targets, concept_of)
    flags = STAGE_FLAGS + [f"outlier_{entry}" for entry in entries]
    is_rare = is_in(objects["category"], rare)
    rare_ids = set(objects["object_id"][is_rare & objects["detected"].to_numpy()])
    ranked, random = rank_detectors(scores, rare_ids, entries, list(settings["top_k"]))
    grouped = objects.assign(category=np.where(is_rare, "rare", "other"))
    report = {
        "iou_threshold": settings["iou_threshold"],
        "rare_categories": rare,
        "ground_truth_objects": int(len(truth)),
        "objects_on_rejected_images": int((~on_usable).sum()),
        "category_concepts": {
            c: concept_of[c] for c in sorted(set(objects["category"])) if c in concept_of
        },
        **{
            group: counts.get(group, measures.empty_counts(flags))
            for counts in [measures.category_counts(grouped, flags)]
            for group in ("rare", "other")
        },
        "categories": measures.category_counts(objects, flags),
        "ranked_objects": int(len(scores)),
        "rare_objects_ranked": len(rare_ids),
        "detectors": ranked,
        "random_ranking": random,
        "best": best_entries(ranked),
        "mining_ceiling": mining_ceiling(objects, rare),
    }
    if selection is not None:
        chosen, summary = selection
        unique = usable.drop_duplicates("image_path")
        sample_of = pd.Series(unique[sample_column].to_numpy(), index=unique["image_path"])
        report["training_selection"] = selection_measures(
            objects, sample_of, rare, chosen, summary, settings["random_draws"], seed
        )
    report["summary"] = summary_line(report)
    return report, objects


def concept_names(
    categories, overrides: dict[str, str], concept_list: list[str], source: str
) -> dict[str, str]:
    """The concept that names each ground-truth category, where the concept list has one:
    ``evaluation.category_concepts`` first, then nuScenes' documented mapping (for that
    source), then the category's own name (lower case, spaces, dots and dashes as ``_``)."""
    known = set(concept_list)
    builtin = {}
    if source == "nuscenes":
        from rare_objects.evaluation.nuscenes import CATEGORY_CONCEPTS

        builtin = CATEGORY_CONCEPTS
    result = {}
    for category in categories:
        plain = str(category).lower().replace(" ", "_").replace(".", "_").replace("-", "_")
        concept = overrides.get(category) or builtin.get(category) or plain
        if concept in known:
            result[category] = concept
    return result
