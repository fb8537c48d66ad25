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

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

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


def similarity_to_probabilities(similarities: np.ndarray) -> np.ndarray:
    """Cosine similarities -> "probabilities": negatives clipped to 0, then divided by their sum.

    All similarities <= 0 give all zeros (no concept is similar at all).
    """
    clipped = np.clip(np.asarray(similarities, dtype=np.float64), 0.0, None)
    total = clipped.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        probs = np.where(total > 0, clipped / np.where(total > 0, total, 1.0), 0.0)
    return probs.astype(np.float32)


# Distinct texts encoded at once. A fixed number, not a setting: a text's embedding may
# differ in its last bits with the batch it is encoded in, and a speed knob must not
# change results. The embedder's text tower was given every caption in one call (the
# sentence-transformers encoder batches by itself), so it held the activations of all of
# them at once: n x 77 x width floats per layer, terabytes at 3,000,000 captions; 256
# keep them to tens of megabytes.
ENCODE_BLOCK = 256

# Rows taken into one Arrow chunk of a column: a chunk's strings share 32-bit offsets
# (2 GiB), and the concepts column holds every concept name for every row (16 default
# concepts, about 180 bytes a row; a chunk of 262,144 rows stays below 2 GiB up to about
# 700 concepts).
ROWS_PER_CHUNK = 262_144


def _text_codes(captions: pd.Series) -> tuple[np.ndarray, list[str]]:
    """``(codes, texts)``: each caption's position among the distinct stripped texts (-1 for a
    null, empty or non-text caption), and those texts in order of first appearance."""
    if captions.dtype == object or not pd.api.types.is_string_dtype(captions.dtype):
        # a value that is not text (a number, a category of numbers) counts as no caption
        is_text = captions.map(lambda v: isinstance(v, str), na_action="ignore")
        captions = captions.where(is_text.fillna(False).astype(bool))
    stripped = captions.astype("str").str.strip()
    stripped = stripped.where(stripped.str.len() > 0)
    codes, texts = pd.factorize(stripped, use_na_sentinel=True)
    return codes, [str(t) for t in texts]


def _arrow_column(per_text: pa.Array, codes: np.ndarray, index: pd.Index) -> pd.Series:
    """The value of each caption's text (null for a caption without one), as an Arrow column
    in chunks of :data:`ROWS_PER_CHUNK` rows."""
    chunks = [
        per_text.take(pa.array(part, mask=part < 0))
        for part in (
            codes[start : start + ROWS_PER_CHUNK] for start in range(0, len(codes), ROWS_PER_CHUNK)
        )
    ]
    column = pa.chunked_array(chunks, type=per_text.type)
    return pd.Series(pd.arrays.ArrowExtensionArray(column), index=index)


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

    Each distinct text is encoded once, :data:`ENCODE_BLOCK` at a time, and the columns
    are Arrow arrays taken per row from one value per distinct text: no Python object per
    caption (the concepts column still holds every row's names, about 180 bytes a row
    with the 16 default concepts).
    """
    concepts = [str(c) for c in concepts]
    if not concepts:
        raise ValueError("the concept list is empty")
    common = set(common_classes)
    if isinstance(captions, pd.Series):
        index, series = captions.index, captions.reset_index(drop=True)
    else:
        series = pd.Series(list(captions), dtype=object)
        index = pd.RangeIndex(len(series))
    codes, texts = _text_codes(series)
    n_concepts = len(concepts)
    order = np.zeros((len(texts), n_concepts), dtype=np.int32)
    sorted_probs = np.zeros((len(texts), n_concepts), dtype=np.float32)
    if texts:
        concept_emb = l2_normalise(
            encoder.encode([concept_text(c, prompt_template) for c in concepts])
        )
        for start in range(0, len(texts), ENCODE_BLOCK):
            block = slice(start, start + ENCODE_BLOCK)
            sims = l2_normalise(encoder.encode(texts[block])) @ concept_emb.T
            # stable descending sort by similarity: ties keep the concept order
            order[block] = np.argsort(-sims, axis=1, kind="stable")
            sorted_probs[block] = np.take_along_axis(
                similarity_to_probabilities(sims), order[block], axis=1
            )
    names = pa.array(concepts, type=pa.string())
    top_is_common = np.array([c in common for c in concepts], dtype=bool)[order[:, 0]]
    offsets = pa.array(np.arange(0, order.size + 1, n_concepts, dtype=np.int32))
    per_text = {
        "top_concept": names.take(pa.array(order[:, 0])),
        "top_concept_is_common": pa.array(top_is_common),
        "is_final_outlier": pa.array(~top_is_common),
        "concepts": pa.ListArray.from_arrays(offsets, names.take(pa.array(order.ravel()))),
        "probabilities": pa.ListArray.from_arrays(offsets, pa.array(sorted_probs.ravel())),
    }
    return pd.DataFrame(
        {column: _arrow_column(per_text[column], codes, index) for column in OUTPUT_COLUMNS},
        index=index,
    )
