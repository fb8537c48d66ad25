"""Outliers of the embeddings: the chosen detectors, globally and per detector class, OR-combined.

Each detector of ``outliers.detectors`` (see
:mod:`rare_objects.backends.outlier_detectors`; default ``[lof]``, the
original's method) runs once on all rows and once per class with at least
``min_samples`` rows, as the original runs its LOF. The neighbour-based
detectors take a big class's neighbours from their search over all rows
(``outliers.class_search: from_global``, :mod:`rare_objects.neighbors.groups`)
rather than searching the class again. A row is a global outlier
when any detector flags it on all rows, a class outlier when any flags it in
its class; ``outlier_code`` = 1 (global), 2 (class), 3 (both) or 0 and
``is_outlier`` their OR.

Scores, higher = more anomalous (the detectors' convention): ``score_global``
and ``score_class`` are the detector's own score when one detector runs;
with several (on different scales) each detector's score becomes its
percentile rank in that scope (share of the scope's rows scoring at most as
high, in (0, 1]) and the row gets the highest, so selection and the report
rank the same way whichever detectors ran. With several detectors, each one's
own scores are kept too (``score_global_<name>``, ``score_class_<name>``).
``global_score``/``class_score`` stay what they always were, scikit-learn's
LOF ``negative_outlier_factor_`` (lower = more anomalous), for the JSON;
they are null when ``lof`` is not among the detectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from rare_objects.backends import outlier_detectors

OUTLIER_COLUMNS = [
    "class_name",
    "global_score",
    "class_score",
    "global_outlier",
    "class_outlier",
    "outlier_code",
    "is_outlier",
    "score_global",
    "score_class",
]


def read_objects(
    embedding_paths, detection_paths
) -> tuple[pd.api.extensions.ExtensionArray, np.ndarray, np.ndarray]:
    """The stage's input: ``(object_ids, X, class_names)``, one row per valid embedding
    (:func:`rare_objects.io.embeddings.read_embedding_matrix`, in its order) with the
    object's detector class from the detection shards (NaN where it has none). ``X`` is
    float16 when the shards store float16 (``embedder.storage``), read as stored.

    The ids are held through the whole stage, so they stay Arrow strings (a pandas
    array of ``pd.ArrowDtype``) and are matched to the detections by pyarrow: no Python
    ``str`` is made per object (10,000,000 ids of 35 characters are 0.43 GB as Arrow
    strings, 0.96 GB as objects, and the memory of freed objects is rarely given back).
    ``class_names`` is an object array holding one string per class name.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from rare_objects.io import schemas
    from rare_objects.io.embeddings import read_embedding_matrix, stored_dtype_of

    ids, X = read_embedding_matrix(
        embedding_paths, dtype=stored_dtype_of(embedding_paths), arrow_strings=True
    )
    detections = schemas.read_parts_table(detection_paths, ["object_id", "class_name"])
    object_ids = pd.array(ids.pop("object_id"), dtype=pd.ArrowDtype(pa.string()))
    found = pc.index_in(pa.array(object_ids), value_set=detections["object_id"])
    classes = detections["class_name"].take(found).dictionary_encode()
    class_names = np.asarray(classes.to_pandas(), dtype=object)  # NaN where none
    return object_ids, X, class_names


def check_detectors(detectors) -> list[str]:
    detectors = list(detectors)
    if not detectors:
        raise ValueError("outliers.detectors is empty: choose at least one detector")
    for name in detectors:
        outlier_detectors.get(name)
    if len(set(detectors)) != len(detectors):
        raise ValueError(f"outliers.detectors lists a detector twice: {detectors}")
    return detectors


def _combined(scores: list[np.ndarray]) -> np.ndarray:
    """One score per row: the detector's own, or the highest percentile rank of several."""
    if len(scores) == 1:
        return scores[0]
    n = len(scores[0])
    ranks = [rankdata(s, method="max") / n for s in scores]
    return np.max(ranks, axis=0).astype(np.float32)


def _nullable(values: np.ndarray) -> pd.arrays.FloatingArray:
    column = pd.array(values, dtype="Float32")
    column[np.isnan(values)] = pd.NA
    return column


def classes_of_at_least(names: np.ndarray, min_samples: int) -> list[np.ndarray]:
    """The row numbers (ascending) of each class of ``names`` with at least ``min_samples``
    rows, classes in the order of their names; rows without a name (None, NaN) are one
    class of their own.

    Hashed (pandas' factorize), not sorted as strings: at 10,000,000 rows a string copy of
    the names and its sort would hold over a gigabyte beside the embeddings.
    """
    if not len(names):
        return []
    codes, _ = pd.factorize(pd.Series(names, dtype=object), sort=True, use_na_sentinel=False)
    counts = np.bincount(codes)
    by_class = np.split(np.argsort(codes, kind="stable"), np.cumsum(counts)[:-1])
    return [rows for rows in by_class if rows.size >= min_samples]


def class_aware_outliers(X: np.ndarray, class_names, outliers: dict, seed: int) -> pd.DataFrame:
    """Every detector of ``outliers["detectors"]`` on all rows plus per class with >= ``min_samples`` rows.

    ``outliers`` is the validated ``outliers`` section of the configuration.
    Returns one row per input row (same order) with :data:`OUTLIER_COLUMNS`
    (plus each detector's own scores when several run, as in
    :func:`rare_objects.io.schemas.outliers_schema`); class scores are null (pandas ``Float32``
    NA) for classes below ``min_samples``, whose ``class_outlier`` is False.
    """
    detectors = check_detectors(outliers["detectors"])
    X = np.asarray(X)
    if X.dtype != np.float16:  # float16 (embedder.storage) stays so: half the memory
        X = np.asarray(X, dtype=np.float32)
    names = np.asarray(class_names, dtype=object)
    n = X.shape[0]
    if names.shape != (n,):
        raise ValueError(f"class_names has {names.shape[0]} entries for {n} rows")
    settings = {name: outlier_detectors.settings_for(name, outliers) for name in detectors}
    global_scores, class_scores = {}, {}
    global_outlier = np.zeros(n, dtype=bool)
    class_outlier = np.zeros(n, dtype=bool)
    class_rows = classes_of_at_least(names, outliers["min_samples"])
    shared = outliers["class_search"] == "from_global"
    from_global = {}  # detector -> its per-class results from its run on all rows
    for name in detectors:
        both = None
        if shared:
            both = outlier_detectors.detect_with_classes(name, X, settings[name], seed, class_rows)
        if both is None:
            found, from_global[name] = outlier_detectors.detect(name, X, settings[name], seed), {}
        else:
            found, per_class = both
            from_global[name] = {c: d for c, d in enumerate(per_class) if d is not None}
        global_scores[name] = found.score
        global_outlier |= found.is_outlier
        class_scores[name] = np.full(n, np.nan, dtype=np.float32)
    class_combined = np.full(n, np.nan, dtype=np.float32)
    for c, rows in enumerate(class_rows):
        in_class = []
        for name in detectors:
            found = from_global[name].pop(c, None)
            if found is None:
                # the class's rows read through their index: no copy of a class of millions
                found = outlier_detectors.detect(name, X, settings[name], seed, rows=rows)
            class_scores[name][rows] = found.score
            class_outlier[rows] |= found.is_outlier
            in_class.append(found.score)
        class_combined[rows] = _combined(in_class)
    code = global_outlier.astype(np.int8) | (class_outlier.astype(np.int8) << 1)
    has_lof = "lof" in class_scores
    # LOF's score is -negative_outlier_factor_ (exact float32 negation): the old columns' values.
    legacy_global = -global_scores["lof"] if has_lof else np.full(n, np.nan, np.float32)
    legacy_class = -class_scores["lof"] if has_lof else np.full(n, np.nan, np.float32)
    frame = pd.DataFrame(
        {
            "class_name": pd.Series(names, dtype=object),
            "global_score": _nullable(legacy_global),
            "class_score": _nullable(legacy_class),
            "global_outlier": global_outlier,
            "class_outlier": class_outlier,
            "outlier_code": code.astype(np.int8),
            "is_outlier": code != 0,
            "score_global": _combined([global_scores[d] for d in detectors]),
            "score_class": _nullable(class_combined),
        }
    )
    if len(detectors) > 1:
        for name in detectors:
            frame[f"score_global_{name}"] = global_scores[name]
            frame[f"score_class_{name}"] = _nullable(class_scores[name])
    return frame
