"""Outlier detectors behind a registry: a name in ``outliers.detectors`` maps to one module here.

Each detector is one module of this package (``lof``, ``isolation_forest``,
``knn_distance``) that calls :func:`register` with a :class:`Detector` when
imported (:class:`rare_objects.backends.registry.Registry`, the plug-in style of
every backend): its name in the configuration, and

``detect(X, settings, seed, rows) -> Detection``

and optionally ``check_settings(settings)`` (raise ValueError on a bad
value), called by :func:`settings_for` so a bad setting stops the run before
any detector has spent time;

- ``X``: the embedding matrix, float32 or float16 (``embedder.storage``), one
  L2-normalised row per object;
- ``rows``: None (all rows of ``X``) or the row numbers to run on (one detector
  class): the detector reads them through the index rather than copying them, and
  returns one result per entry of ``rows``;
- ``settings``: its resolved settings (:func:`settings_for`): the shared keys
  of the ``outliers`` section (``n_neighbors``, ``contamination``,
  ``exact_max_samples``) overridden by the non-null keys of its own section
  ``outliers.<name>``;
- ``seed``: the run's seed, for every random choice it makes (IsolationForest's
  trees, the approximate neighbour search's sample and k-means).

It returns one ``score`` per row with ONE convention for every detector:
**higher = more anomalous** (float32), and ``is_outlier`` (bool). The stage
(:mod:`rare_objects.stages.outliers`) runs each chosen detector on all rows
and per class, and ORs the flags; selection and the report rank by the
scores without knowing which detector made them.

Adding a detector: one module here that registers its :class:`Detector` (with a
docstring saying what its score is) plus its section ``outliers.<name>`` in
schemas/config.schema.yaml (the enum of ``outliers.detectors`` is checked
against :func:`names` by the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rare_objects.backends.registry import Registry

# Keys of the ``outliers`` section a detector inherits unless its own section sets them.
SHARED_KEYS = ("n_neighbors", "contamination", "exact_max_samples")


@dataclass(frozen=True)
class Detection:
    """One detector's result on one set of rows."""

    score: np.ndarray  # float32 (n,): higher = more anomalous
    is_outlier: np.ndarray  # bool (n,)

    def __post_init__(self):
        object.__setattr__(self, "score", np.asarray(self.score, dtype=np.float32))
        object.__setattr__(self, "is_outlier", np.asarray(self.is_outlier, dtype=bool))
        if self.score.shape != self.is_outlier.shape or self.score.ndim != 1:
            raise ValueError(
                f"score {self.score.shape} and is_outlier {self.is_outlier.shape} must be (n,)"
            )


@dataclass(frozen=True)
class Detector:
    """What the workflow needs to know about one outlier detector."""

    name: str
    """Its name in ``outliers.detectors`` and its section ``outliers.<name>``."""
    detect: Callable[..., Detection]
    """``(X, settings, seed, rows) -> Detection`` (see the module docstring)."""
    check_settings: Callable[[dict], None] | None = None
    """Raises ValueError on a bad value of its resolved settings; None when none can be bad."""
    detect_with_classes: Callable[..., tuple[Detection, list[Detection | None]] | None] | None = (
        None
    )
    """Optional ``(X, settings, seed, class_rows) -> (overall, per_class) | None``: the
    detection on all rows and, from the same work, on each class of ``class_rows``
    (``None`` for a class it leaves to ``detect``); None where it saves nothing."""


REGISTRY: Registry[Detector] = Registry("outlier detector", __name__, __path__)
register = REGISTRY.register
names = REGISTRY.names
get = REGISTRY.get


def check_contamination(contamination, allow_auto: bool = True) -> float | str:
    """``contamination`` as a number in (0, 0.5], or ``"auto"`` where the detector has a rule for it."""
    allowed = "a number in (0, 0.5]" + (" or 'auto'" if allow_auto else "")
    if isinstance(contamination, str):
        if contamination != "auto" or not allow_auto:
            raise ValueError(f"contamination {contamination!r}: use {allowed}")
        return contamination
    value = float(contamination)
    if not 0.0 < value <= 0.5:
        raise ValueError(f"contamination {contamination!r}: use {allowed}")
    return value


def settings_for(name: str, outliers: dict) -> dict:
    """Detector ``name``'s settings from the validated ``outliers`` section (defaults filled).

    The shared keys (:data:`SHARED_KEYS`), then every key of ``outliers[name]``
    that is not null. No defaults here: the schema fills them.
    """
    detector = get(name)
    settings = {key: outliers[key] for key in SHARED_KEYS}
    # where the neighbour search runs (rare_objects.neighbors.search.AnnParams.device)
    settings["device"] = outliers.get("device", "cpu")
    settings.update({k: v for k, v in outliers[name].items() if v is not None})
    if detector.check_settings is not None:
        try:
            detector.check_settings(settings)
        except ValueError as error:
            raise ValueError(f"outliers.{name}: {error}") from None
    return settings


def detect(
    name: str, X: np.ndarray, settings: dict, seed: int, rows: np.ndarray | None = None
) -> Detection:
    """Run detector ``name`` on the rows of ``X``, or on its rows ``rows`` (one result per
    entry, nothing copied out of ``X``); no rows give empty results. float16 ``X`` stays
    float16 (half the memory at 10,000,000 rows); other dtypes become float32."""
    detector = get(name)
    X = np.asarray(X)
    X = np.ascontiguousarray(X, dtype=np.float16 if X.dtype == np.float16 else np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D embedding matrix, got shape {X.shape}")
    if rows is not None:
        rows = np.asarray(rows, dtype=np.int64)
    n = X.shape[0] if rows is None else len(rows)
    if n == 0:
        return Detection(np.zeros(0, np.float32), np.zeros(0, bool))
    result = detector.detect(X, settings, seed, rows)
    if result.score.shape != (n,):
        raise ValueError(f"detector {name} returned {result.score.shape[0]} scores for {n} rows")
    return result


def detect_with_classes(
    name: str, X: np.ndarray, settings: dict, seed: int, class_rows: list[np.ndarray]
) -> tuple[Detection, list[Detection | None]] | None:
    """Detector ``name`` on all rows of ``X`` and on the classes ``class_rows`` (row numbers)
    from one piece of work where it can share it (the neighbour-based detectors share one
    neighbour search): ``(overall, per_class)``, ``per_class[i]`` None where class ``i`` is
    left to :func:`detect`; None when the detector shares nothing (then :func:`detect` runs
    on each scope). ``X`` as :func:`detect` takes it."""
    detector = get(name)
    X = np.asarray(X)
    if detector.detect_with_classes is None or X.ndim != 2 or X.shape[0] == 0:
        return None
    X = np.ascontiguousarray(X, dtype=np.float16 if X.dtype == np.float16 else np.float32)
    class_rows = [np.asarray(rows, dtype=np.int64) for rows in class_rows]
    found = detector.detect_with_classes(X, settings, seed, class_rows)
    if found is None:
        return None
    overall, per_class = found
    sizes = [X.shape[0]] + [rows.size for rows, d in zip(class_rows, per_class) if d is not None]
    scored = [overall.score.shape[0]] + [d.score.shape[0] for d in per_class if d is not None]
    if len(per_class) != len(class_rows) or sizes != scored:
        raise ValueError(f"detector {name} returned results that do not match its rows")
    return overall, per_class


__all__ = [
    "REGISTRY",
    "Detection",
    "Detector",
    "SHARED_KEYS",
    "check_contamination",
    "detect",
    "detect_with_classes",
    "get",
    "names",
    "register",
    "settings_for",
]
