"""Compare each caption with a list of concepts (the original's ``parse_text_with_probability``).

A caption and every concept are embedded with the same text encoder; the
cosine similarities, negatives clipped to 0, are normalised to sum to 1 and
reported as "probabilities", sorted from the most to the least similar concept.
The most similar concept is the caption's ``top_concept``; a caption whose top
concept is not one of the common classes makes a final outlier.

Any object with ``encode(texts: list[str]) -> np.ndarray`` returning one
L2-normalised float32 row per text is an encoder (:class:`TextEncoder`): the
workflow's choices are in :mod:`rare_objects.backends.text_encoders` (the default
is the text tower of the embedding model, as the original; a sentence-transformers
model, the bundled MiniLM or a folder, works too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from rare_objects.io.embeddings import l2_normalise

DEFAULT_PROMPT_TEMPLATE = "a photo of a {concept}"
OUTPUT_COLUMNS = [
    "top_concept",
    "top_concept_is_common",
    "is_final_outlier",
    "concepts",
    "probabilities",
]


class TextEncoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray:
        """One L2-normalised float32 row per text."""
        ...


def concept_text(concept: str, template: str = DEFAULT_PROMPT_TEMPLATE) -> str:
    """The text embedded for a concept: ``template`` with underscores in the name made spaces."""
    return template.format(concept=concept.replace("_", " "))


def _is_missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return not isinstance(value, str) or not value.strip()


def similarity_to_probabilities(similarities: np.ndarray) -> np.ndarray:
    """Cosine similarities -> "probabilities": negatives clipped to 0, then divided by their sum.

    All similarities <= 0 give all zeros (no concept is similar at all).
    """
    clipped = np.clip(np.asarray(similarities, dtype=np.float64), 0.0, None)
    total = clipped.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(total > 0, clipped / np.where(total > 0, total, 1.0), 0.0)
    return probs.astype(np.float32)


def analyse_captions(
    captions: Sequence[str | None] | pd.Series,
    concepts: Sequence[str],
    common_classes: Iterable[str],
    encoder: TextEncoder,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
) -> pd.DataFrame:
    """One row per caption (same order, same index for a Series) with the CONCEPTS columns but object_id.

    ``concepts`` (list): every concept name, sorted by decreasing cosine
    similarity (ties kept in the given concept order); ``probabilities``: the
    matching values of :func:`similarity_to_probabilities`; ``top_concept``:
    the first; ``top_concept_is_common``: whether it is among
    ``common_classes``; ``is_final_outlier``: its negation (the original's
    "Final outlier (Top concept not common)"). Null or empty captions give
    nulls in every column.
    """
    concepts = [str(c) for c in concepts]
    if not concepts:
        raise ValueError("the concept list is empty")
    common = set(common_classes)
    index = captions.index if isinstance(captions, pd.Series) else pd.RangeIndex(len(captions))
    values = list(captions)

    valid = [i for i, v in enumerate(values) if not _is_missing(v)]
    unique = list(dict.fromkeys(values[i].strip() for i in valid))  # embed each distinct text once
    out = pd.DataFrame({c: pd.Series([None] * len(values), dtype=object) for c in OUTPUT_COLUMNS})
    if unique:
        concept_emb = l2_normalise(
            encoder.encode([concept_text(c, prompt_template) for c in concepts])
        )
        text_emb = l2_normalise(encoder.encode(unique))
        sims = text_emb @ concept_emb.T  # (n_unique, n_concepts)
        probs = similarity_to_probabilities(sims)
        # stable descending sort by similarity: ties keep the concept order
        order = np.argsort(-sims, axis=1, kind="stable")
        per_text = {}
        for k, text in enumerate(unique):
            names = [concepts[j] for j in order[k]]
            top = names[0]
            per_text[text] = (
                top,
                top in common,
                top not in common,
                names,
                [float(p) for p in probs[k, order[k]]],
            )
        for i in valid:
            top, is_common, is_final, names, p = per_text[values[i].strip()]
            out.at[i, "top_concept"] = top
            out.at[i, "top_concept_is_common"] = is_common
            out.at[i, "is_final_outlier"] = is_final
            out.at[i, "concepts"] = list(names)
            out.at[i, "probabilities"] = list(p)
    out.index = index
    return out
