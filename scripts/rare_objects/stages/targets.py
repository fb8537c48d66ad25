"""Target classes: which configured targets each detected object matches.

A target (``config["targets"]``) names a rare class and the detector classes that may
hold it (its near classes); an object whose detector class is the target itself or one
of its near classes matches it. Selection, the export, the projection and the explorer
all ask this one function.
"""

from __future__ import annotations

import pandas as pd


def target_matches(class_names: pd.Series, targets: dict[str, list[str]]) -> pd.Series:
    """Targets whose near classes include each object's detector class."""
    by_class: dict[str, list[str]] = {}
    for target, near in targets.items():
        for name in [target, *near]:
            by_class.setdefault(name, [])
            if target not in by_class[name]:
                by_class[name].append(target)
    return class_names.map(lambda c: list(by_class.get(c, [])))
