"""The transformers caption backend on a tiny Qwen2-VL built locally (real from_pretrained + generate)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from rare_objects.runtime import offline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    offline.configure(tmp_path_factory.mktemp("cache"))  # before transformers is imported
    from rare_objects.demo.tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "qwen2vl-tiny", seed=0)


@pytest.fixture(scope="module")
def captioner(tiny_dir):
    from rare_objects.backends.captioning.transformers import TransformersCaptioner

    return TransformersCaptioner(tiny_dir, device="cpu", batch_size=4, max_new_tokens=8)


def crops() -> list[Image.Image]:
    """Crops of different sizes (so their visual token counts differ), random but fixed."""
    rng = np.random.default_rng(7)
    sizes = [(30, 40), (200, 120), (64, 64), (90, 300), (48, 20)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_is_deterministic_and_idempotent(tiny_dir, tmp_path):
    from rare_objects.demo.tiny_vlm import build_tiny_qwen2vl

    files = ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]
    before = {f: (tiny_dir / f).stat().st_mtime_ns for f in files}
    assert build_tiny_qwen2vl(tiny_dir, seed=0) == tiny_dir  # existing: returned untouched
    assert {f: (tiny_dir / f).stat().st_mtime_ns for f in files} == before
    again = build_tiny_qwen2vl(tmp_path / "again", seed=0)
    for f in files:
        assert _digest(again / f) == _digest(tiny_dir / f), f
    with pytest.raises(FileExistsError):
        build_tiny_qwen2vl(tiny_dir, seed=1)


def test_processor_has_image_and_video_processors_and_template(captioner):
    proc = captioner.processor
    assert type(proc).__name__ == "Qwen2VLProcessor"
    assert proc.image_processor is not None and proc.video_processor is not None
    assert "<|vision_start|><|image_pad|><|vision_end|>" in captioner.chat_text
    assert captioner.chat_text.endswith("<|im_start|>assistant\n")
    n_params = sum(p.numel() for p in captioner.model.parameters())
    assert n_params < 1_000_000
    assert (
        captioner.dtype.is_floating_point and str(captioner.dtype) == "torch.float32"
    )  # fp32 on CPU


def test_left_padding(captioner, tiny_dir):
    import json

    # the folder says "right" (as many checkpoints do); the captioner must switch to left
    assert json.loads((tiny_dir / "tokenizer_config.json").read_text())["padding_side"] == "right"
    assert captioner.processor.tokenizer.padding_side == "left"
    images = crops()[:3]
    inputs = captioner.processor(
        text=[captioner.chat_text] * 3,
        images=images,
        padding=True,
        return_tensors="pt",
        size=captioner.size,
    )
    mask = inputs["attention_mask"]
    lengths = mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # different sizes -> different prompt lengths
    assert bool((mask[:, -1] == 1).all())  # every row ends with real tokens
    shortest = int(lengths.argmin())
    assert mask[shortest, 0] == 0  # the padding is on the left
    pad_id = captioner.processor.tokenizer.pad_token_id
    assert int(inputs["input_ids"][shortest, 0]) == pad_id


def test_batched_captions_match_one_by_one(captioner):
    images = crops()
    batched = captioner.caption(images)
    assert len(batched) == len(images)
    assert all(isinstance(t, str) and t for t in batched), batched
    singles = [captioner.caption([im])[0] for im in images]
    # greedy decoding: with correct left padding a crop's caption does not depend on its batch
    assert batched == singles
    assert captioner.caption([]) == []


def test_oom_halves_the_batch_and_keeps_every_caption(tiny_dir, monkeypatch):
    import torch

    from rare_objects.backends.captioning.transformers import TransformersCaptioner

    c = TransformersCaptioner(tiny_dir, device="cpu", batch_size=4, max_new_tokens=8)
    images = crops()
    expected = c.caption(images)
    real_generate = c.model.generate
    calls = []

    def generate(**kwargs):
        n = kwargs["input_ids"].shape[0]
        calls.append(n)
        if n > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(**kwargs)

    monkeypatch.setattr(c.model, "generate", generate)
    assert c.caption(images) == expected
    assert calls[:3] == [4, 2, 1]  # 4 fails, its first half (2) fails, then one at a time
    assert c.batch_size == 1  # later batches keep the smaller size
    assert calls.count(1) == len(images)

    # a single crop that does not fit is recorded as its error; the others go on
    def always_oom(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(c.model, "generate", always_oom)
    results = c.caption(images[:2])
    assert len(results) == 2
    assert all(isinstance(r, Exception) and "out of GPU memory" in str(r) for r in results)


def test_other_errors_are_isolated_per_crop(tiny_dir, monkeypatch):
    from rare_objects.backends.captioning.transformers import TransformersCaptioner

    c = TransformersCaptioner(tiny_dir, device="cpu", batch_size=3, max_new_tokens=8)
    images = crops()[:3]
    expected = c.caption(images)
    real_generate = c.model.generate
    bad_grid = c.processor(
        text=[c.chat_text], images=[images[1]], return_tensors="pt", size=c.size
    )["image_grid_thw"].tolist()

    def generate(**kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise ValueError("a bad crop in this batch")
        if kwargs["image_grid_thw"].tolist() == bad_grid:
            raise ValueError("this crop is broken")
        return real_generate(**kwargs)

    monkeypatch.setattr(c.model, "generate", generate)
    results = c.caption(images)
    assert results[0] == expected[0] and results[2] == expected[2]
    assert isinstance(results[1], ValueError) and "broken" in str(results[1])
    assert c.batch_size == 3  # not an OOM: the batch size stays


def test_fit_batch_size():
    from rare_objects.backends.captioning.transformers import fit_batch_size

    gib = 2**30
    assert fit_batch_size(10 * gib, 1 * gib, max_batch=16) == 8  # 20 % kept in reserve
    assert fit_batch_size(10 * gib, 1 * gib, max_batch=4) == 4
    assert fit_batch_size(gib // 2, 1 * gib, max_batch=4) == 1  # never below one
    assert fit_batch_size(10 * gib, 1 * gib, max_batch=16, reserve_fraction=0.0) == 10
    assert fit_batch_size(10 * gib, 0, max_batch=6) == 6


def test_make_captioner_transformers(tiny_dir):
    from rare_objects.backends.captioning import make_captioner
    from rare_objects.backends.captioning.transformers import TransformersCaptioner

    c = make_captioner(
        "transformers",
        {
            "prompt": "What is it?",
            "max_new_tokens": 5,
            "transformers": {
                "model": str(tiny_dir),
                "batch_size": 2,
                "dtype": "auto",
                "min_pixels": 3136,
                "max_pixels": 12544,
                "auto_batch": True,
            },
        },
        "cpu",
    )
    assert isinstance(c, TransformersCaptioner)
    assert (c.batch_size, c.max_new_tokens, c.prompt, c.size) == (
        2,
        5,
        "What is it?",
        {"shortest_edge": 3136, "longest_edge": 12544},
    )
    assert c.backend == "transformers" and c.model_name == tiny_dir.name
    out = c.caption(crops()[:3])
    assert all(isinstance(t, str) and t for t in out)
    with pytest.raises(FileNotFoundError):
        make_captioner(
            "transformers", {"transformers": {"model": str(tiny_dir / "missing")}}, "cpu"
        )


def test_caption_objects_with_the_tiny_model(captioner, tmp_path):
    """The captions stage end to end on real files: crops from two images, VLM + simple captions."""
    import pandas as pd

    from rare_objects.stages.captions import all_failed, caption_objects

    rng = np.random.default_rng(3)
    paths = []
    for k, (w, h) in enumerate([(320, 192), (200, 150)]):
        p = tmp_path / f"img{k}.jpg"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    objects = pd.DataFrame(
        {
            "object_id": ["i0-0", "i0-1", "i1-0", "i0-2", "i1-1"],
            "image_path": [paths[0], paths[0], paths[1], paths[0], paths[1]],
            "x1": [10.5, 100.0, 0.0, 200.0, 50.0],
            "y1": [20.0, 30.0, 0.0, 100.0, 60.0],
            "x2": [60.2, 220.0, 40.0, 319.0, 199.0],
            "y2": [90.0, 150.0, 30.0, 191.0, 149.0],
            "class_name": ["bicycle", "car", "trailer", "construction_vehicle", "truck"],
            "confidence": [0.9, 0.8, 0.7, 0.6, 0.5],
            "needs_vlm": [True, False, True, True, False],
        }
    )
    out = caption_objects(objects, captioner, batch_size=2)
    assert out["object_id"].tolist() == objects["object_id"].tolist()
    vlm = out[out["caption_kind"] == "vlm"]
    assert len(vlm) == 3 and vlm["error"].isna().all()
    assert all(isinstance(t, str) and t for t in vlm["description"])
    assert set(vlm["backend"]) == {"transformers"} and set(vlm["model"]) == {captioner.model_name}
    assert out.loc[1, "description"] == "A car detected by YOLO with confidence 0.80."
    assert not all_failed(out)


def test_a_degenerate_box_is_captioned_not_refused(captioner, tmp_path):
    """Qwen2-VL's processor refuses a 320:1 image; the zero-height box of a detector (an
    open-vocabulary one with random weights gave such boxes) is padded and captioned."""
    import pandas as pd

    from rare_objects.stages.captions import caption_objects

    path = tmp_path / "frame.jpg"
    pixels = np.random.default_rng(4).integers(0, 256, (384, 640, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    flat = Image.fromarray(pixels[:1, 320:640])
    assert max(flat.size) / min(flat.size) > 200
    with pytest.raises(ValueError, match="aspect ratio"):
        captioner._generate([flat])  # the refusal the padding avoids
    objects = pd.DataFrame(
        {
            "object_id": ["flat", "tall", "ordinary"],
            "image_path": [str(path)] * 3,
            "x1": [320.0, 100.0, 10.0],
            "y1": [384.0, 0.0, 20.0],
            "x2": [640.0, 100.0, 90.0],
            "y2": [384.0, 384.0, 80.0],
            "class_name": ["truck", "car", "bicycle"],
            "confidence": [0.5, 0.6, 0.7],
            "needs_vlm": [True, True, True],
        }
    )
    out = caption_objects(objects, captioner, batch_size=2)
    assert out["error"].isna().all(), out["error"].tolist()
    assert all(isinstance(t, str) and t for t in out["description"])
