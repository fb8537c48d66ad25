"""The parquet schemas of every table the workflow writes: the one place for them.

Each stage writes through :func:`write_table`, which casts to the schema and so
fails loudly if a stage drifts from the contract; a table written in parts (per
shard, per caption partition) is read back as one with :func:`read_parts`.
"""

from __future__ import annotations

import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rare_objects.io import atomic

SCHEMA_VERSION = "1"

# One row per detected object. object_id is stable across runs and data
# additions: "<image_id>-<rank>", image_id being a hash of the image's path
# relative to the input root, rank the object's position by score (0 = best).
DETECTIONS = pa.schema(
    [
        ("object_id", pa.string()),
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("image_path", pa.string()),
        ("sample_token", pa.string()),
        ("camera", pa.string()),
        ("rank", pa.int16()),
        ("class_id", pa.int16()),
        ("class_name", pa.string()),
        ("confidence", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("crop_width", pa.int32()),
        ("crop_height", pa.int32()),
    ]
)

# Images a stage could not use, with the reason; nothing is dropped silently.
REJECTS = pa.schema(
    [
        ("image_path", pa.string()),
        ("sample_token", pa.string()),
        ("shard", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)

# Per-image summary of the detect stage (so that images with zero objects are
# still accounted for).
IMAGES = pa.schema(
    [
        ("image_id", pa.string()),
        ("shard", pa.string()),
        ("image_path", pa.string()),
        ("sample_token", pa.string()),
        ("camera", pa.string()),
        ("image_width", pa.int32()),
        ("image_height", pa.int32()),
        ("n_objects", pa.int32()),
        ("status", pa.string()),  # "ok" or "rejected"
    ]
)


# embedder.storage: the value type of the embedding column. float16 halves the files and
# what a gather stage may hold (rare_objects.io.embeddings reads either, as float32 or float16).
EMBEDDING_STORAGE = {"float32": pa.float32(), "float16": pa.float16()}
DEFAULT_EMBEDDING_STORAGE = "float32"


def embedding_value_type(storage: str = DEFAULT_EMBEDDING_STORAGE) -> pa.DataType:
    """The arrow type of one embedding value for ``storage`` (``float32`` or ``float16``)."""
    try:
        return EMBEDDING_STORAGE[storage]
    except KeyError:
        known = ", ".join(EMBEDDING_STORAGE)
        raise ValueError(f"embedding storage {storage!r}: expected one of {known}") from None


def embeddings_schema(dim: int, storage: str = DEFAULT_EMBEDDING_STORAGE) -> pa.Schema:
    """One row per object: its L2-normalised image embedding, ``dim`` values of
    ``storage`` (``float32``, the default, or ``float16``: embedder.storage).

    ``error`` is null when the embedding is valid; otherwise the embedding is
    null and ``error`` says why (e.g. the image changed since detection).
    """
    return pa.schema(
        [
            ("object_id", pa.string()),
            ("embedding", pa.list_(embedding_value_type(storage), dim)),
            ("error", pa.string()),
        ]
    )


def embeddings_metadata(model: str, dim: int, storage: str = DEFAULT_EMBEDDING_STORAGE) -> dict:
    """The parquet metadata of an embeddings shard: the model, ``dim`` and, when it is not
    the default float32, ``embedding_dtype`` (a float32 shard is the bytes it always was)."""
    embedding_value_type(storage)  # checks it
    metadata = {"embedding_model": model, "dim": dim}
    if storage != DEFAULT_EMBEDDING_STORAGE:
        metadata["embedding_dtype"] = storage
    return metadata


def write_embeddings(
    table: pa.Table,
    path: str | os.PathLike,
    *,
    model: str,
    dim: int,
    storage: str = DEFAULT_EMBEDDING_STORAGE,
) -> None:
    """Write an embeddings shard (the embed stage's table) to ``path``, atomically.

    float16 values are written without a dictionary: parquet's dictionary encoding keeps
    them in one (there are at most 65,536 of them), and decoding it made reading the
    shard about 5 times slower than plain values (bench/storage.py). float32 shards are
    written as they always were (parquet falls back to plain values there by itself).
    """
    options = {}
    if storage != DEFAULT_EMBEDDING_STORAGE:
        options["use_dictionary"] = ["object_id", "error"]
    write_table(
        table,
        embeddings_schema(dim, storage),
        path,
        embeddings_metadata(model, dim, storage),
        **options,
    )


# One row per object with a valid embedding (rare_objects.stages.outliers).
# outlier_code is a bit mask: 1 = outlier of a detector over all objects,
# 2 = outlier of a detector within its class, 3 = both, 0 = inlier;
# is_outlier == (outlier_code != 0), the original's OR-combination.
# score_global/score_class: the detectors' anomaly score, higher = more
# anomalous (several detectors: the highest percentile rank among them).
# global_score/class_score: scikit-learn's LOF negative_outlier_factor_
# (lower = more anomalous), null when lof is not among the detectors.
# Class scores are null where the class had fewer than min_samples objects.
OUTLIERS = pa.schema(
    [
        ("object_id", pa.string()),
        ("class_name", pa.string()),
        ("global_score", pa.float32()),
        ("class_score", pa.float32()),
        ("global_outlier", pa.bool_()),
        ("class_outlier", pa.bool_()),
        ("outlier_code", pa.int8()),
        ("is_outlier", pa.bool_()),
        ("score_global", pa.float32()),
        ("score_class", pa.float32()),
    ]
)


def outliers_schema(detectors: list[str]) -> pa.Schema:
    """OUTLIERS plus each detector's own scores when several run (score_{global,class}_<name>)."""
    if len(detectors) < 2:
        return OUTLIERS
    extra = [
        pa.field(f"score_{scope}_{name}", pa.float32())
        for name in detectors
        for scope in ("global", "class")
    ]
    return pa.schema(list(OUTLIERS) + extra)


# One row per object considered for captioning, with why it was kept or dropped.
SELECTION = pa.schema(
    [
        ("object_id", pa.string()),
        ("class_name", pa.string()),
        ("is_outlier", pa.bool_()),
        ("target_matches", pa.list_(pa.string())),
        ("is_yolo_potential", pa.bool_()),
        ("candidate", pa.bool_()),  # matched the selection criteria
        ("cluster_id", pa.int64()),  # diversity cluster (null if not a candidate)
        ("selected", pa.bool_()),
        ("reason", pa.string()),
        ("needs_vlm", pa.bool_()),  # VLM caption (else the simple caption)
        ("caption_partition", pa.int32()),  # null when not selected
        # What a caption job needs, so it reads this table alone:
        ("image_path", pa.string()),
        ("confidence", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("priority", pa.float32()),  # -score_global: lower is kept first
    ]
)

CAPTIONS = pa.schema(
    [
        ("object_id", pa.string()),
        ("caption_kind", pa.string()),  # "vlm" or "simple"
        ("description", pa.string()),
        ("error", pa.string()),
        ("backend", pa.string()),
        ("model", pa.string()),
    ]
)

CONCEPTS = pa.schema(
    [
        ("object_id", pa.string()),
        ("top_concept", pa.string()),
        ("top_concept_is_common", pa.bool_()),
        ("is_final_outlier", pa.bool_()),
        ("concepts", pa.list_(pa.string())),
        ("probabilities", pa.list_(pa.float32())),
    ]
)

# The training-selection list: one row per chosen sample (a nuScenes sample
# token, or an image path for a folder input). reason is "mined" (the sample
# holds a mined object; mined_by names the kinds, comma-separated) or
# "random_fill" (the seeded random share up to the budget).
TRAINING_SELECTION = pa.schema(
    [
        ("sample", pa.string()),
        ("reason", pa.string()),
        ("mined_by", pa.string()),
        ("mined_objects", pa.int32()),
        ("n_objects", pa.int32()),
        ("n_images", pa.int32()),
    ]
)

# One row per object on the explorer's map (rare_objects.report.projection): every
# mined object plus a seeded sample of the rest, with its 2-D coordinates.
# shown_reason: final_outlier, outlier, target or sample; method: tsne or umap.
PROJECTION = pa.schema(
    [
        ("object_id", pa.string()),
        ("class_name", pa.string()),
        ("is_outlier", pa.bool_()),
        ("shown_reason", pa.string()),
        ("method", pa.string()),
        ("x", pa.float32()),
        ("y", pa.float32()),
    ]
)


def write_table(
    table: pa.Table | pd.DataFrame,
    schema: pa.Schema,
    path: str | os.PathLike,
    metadata: dict | None = None,
    **parquet_options,
) -> None:
    """Cast ``table`` (an arrow table or a DataFrame) to ``schema``; write it atomically to ``path``.

    ``parquet_options``: further keywords of :func:`pyarrow.parquet.write_table`."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    table = table.select(schema.names).cast(schema)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic.atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", **parquet_options)


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def _part_paths(paths) -> list:
    return [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)


def read_parts(paths, columns: list[str] | None = None) -> pd.DataFrame:
    """One table written in parts (the caption partitions, the detection or image shards,
    the rejects of every shard) as one DataFrame: the rows of each of ``paths`` (a path or
    a list of them) in order, with a fresh index; only ``columns`` when given."""
    return pd.concat(
        [pd.read_parquet(p, columns=columns) for p in _part_paths(paths)], ignore_index=True
    )


def read_parts_table(paths, columns: list[str] | None = None) -> pa.Table:
    """:func:`read_parts` as one Arrow table: for a stage that keeps the strings of
    millions of rows as Arrow data rather than one Python object each."""
    return pa.concat_tables(
        [pq.read_table(p, columns=columns) for p in _part_paths(paths)],
        promote_options="default",
    )


# Ground-truth boxes on the run's images (rare_objects.evaluation.ground_truth), whatever
# the source: gt_id is the COCO annotation id or "<sample_annotation token>:<camera>",
# boxes in original pixels clipped to the image (clipped says it left the image),
# visibility the nuScenes visibility token (null for COCO).
GROUND_TRUTH = pa.schema(
    [
        ("gt_id", pa.string()),
        ("image_path", pa.string()),
        ("category", pa.string()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("clipped", pa.bool_()),
        ("visibility", pa.string()),
    ]
)


# What the evaluation follows each ground-truth object through, in evaluation.json's order.
EVALUATION_STAGE_FLAGS = [
    "outlier",
    "selected",
    "captioned",
    "captioned_naming_category",
    "final_outlier",
    "target_match",
]


def evaluation_objects_schema(entries: list[str]) -> pa.Schema:
    """One row per ground-truth object on a usable image: its match (object_id null when
    the detector missed it) and whether it was flagged by each evaluated detector entry
    (outlier_<entry>), the run's outlier stage, selection, captioning and concepts."""
    flags = [
        "detected",
        *EVALUATION_STAGE_FLAGS,
        *(f"outlier_{entry}" for entry in entries),
    ]
    return pa.schema(
        [
            *GROUND_TRUTH,
            ("object_id", pa.string()),
            ("class_name", pa.string()),
            ("iou", pa.float32()),
            *((flag, pa.bool_()) for flag in flags),
        ]
    )


def evaluation_scores_schema(detectors: list[str]) -> pa.Schema:
    """One row per object with a valid embedding: for each evaluated detector, its scores
    (higher = more anomalous; the class score null below outliers.min_samples) and its
    OR-combined flag, each as the outliers stage gives them with that detector alone."""
    fields = [("object_id", pa.string()), ("class_name", pa.string())]
    for name in detectors:
        fields += [
            (f"score_global_{name}", pa.float32()),
            (f"score_class_{name}", pa.float32()),
            (f"is_outlier_{name}", pa.bool_()),
        ]
    return pa.schema(fields)
