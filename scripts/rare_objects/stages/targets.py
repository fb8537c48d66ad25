"""Target classes: which configured targets each detected object matches.

A target (``config["targets"]``) names a rare class and the detector classes that may
hold it (its near classes); an object whose detector class is the target itself or one
of its near classes matches it. Selection, the export, the projection, the explorer,
the report's galleries, the training selection and the evaluation all ask this module:
:func:`target_matches` for the matching targets of each object, :func:`is_target` for
whether it matches one (vectorised, for tables of millions of rows).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa


def target_classes(targets: dict[str, list[str]]) -> dict[str, set[str]]:
    """Each target's matching detector classes: the target itself and its near classes."""
    return {target: {target, *near} for target, near in targets.items()}


def target_matches(class_names: pd.Series, targets: dict[str, list[str]]) -> pd.Series:
    """Targets whose near classes include each object's detector class."""
    by_class: dict[str, list[str]] = {}
    for target, near in targets.items():
        for name in [target, *near]:
            by_class.setdefault(name, [])
            if target not in by_class[name]:
                by_class[name].append(target)
    return class_names.map(lambda c: list(by_class.get(c, [])))


def target_matches_column(class_names: pd.Series, targets: dict[str, list[str]]) -> pd.Series:
    """:func:`target_matches` as an Arrow ``list<string>`` column: one list per class, taken
    for each row, where :func:`target_matches` makes a Python list per row (about 80 bytes
    each: 0.8 GB at 10,000,000 rows, against 4 bytes of offsets here). Its values read
    back as Python lists."""
    # factorized as they are: an object copy would make a Python str per row (about 1 GB
    # at 10,000,000 rows); only the distinct classes become Python objects
    codes, classes = pd.factorize(pd.Series(class_names), use_na_sentinel=True)
    # one list per class, and an empty one (the last) for a missing class
    per_class = target_matches(pd.Series(classes, dtype=object), targets).tolist() + [[]]
    lists = pa.array(per_class, type=pa.list_(pa.string()))
    taken = lists.take(pa.array(np.where(codes < 0, len(classes), codes)))
    return pd.Series(pd.arrays.ArrowExtensionArray(taken), index=pd.Series(class_names).index)


def is_target(
    class_names: pd.Series, targets: dict[str, list[str]], target: str | None = None
) -> np.ndarray:
    """Whether each object matches a target (bool array): any target, or only ``target``.

    The same answer as ``target_matches(class_names, targets).map(bool)`` (or ``target in``
    each match list), as one membership test over the column.
    """
    classes = target_classes(targets)
    wanted = classes[target] if target is not None else set().union(*classes.values())
    return pd.Series(class_names).isin(wanted).to_numpy()
