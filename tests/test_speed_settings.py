"""Settings that change only speed (``x-speed-only`` in the schema) change no result.

The rules pass their sections without these keys (rare_objects.runtime.speed_settings),
so a changed value reruns no job (tests/test_reruns.py); here each is shown to give the
same results with the demo's trained tiny models on the CPU, on images of three sizes:
the loader threads bit for bit; another batch size the same objects, ids, classes and
crops, with boxes, scores and embeddings equal up to the last bits of a float (the
libraries' kernels split another batch differently); captions through a server equal
for every concurrency and number of encoder processes, and the trained tiny VLM's
captions equal for every batch size (greedy decoding, left padding).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from PIL import Image

from rare_objects.io import sources
from rare_objects.runtime import offline
from tests.conftest import CACHE

offline.configure(CACHE / "libs")

from rare_objects.backends.object_detectors import ultralytics_yolo  # noqa: E402
from rare_objects.runtime import config as config_checks  # noqa: E402
from rare_objects.runtime import speed_settings  # noqa: E402
from rare_objects.stages.detection import DetectSettings, detect_images  # noqa: E402
from rare_objects.stages.embedding import embed_objects  # noqa: E402

SPEED_ONLY = {
    ("images", "loader_workers"),
    ("detector", "batch_size"),
    ("embedder", "batch_size"),
    ("captions", "transformers", "batch_size"),
    ("captions", "transformers", "auto_batch"),
    ("captions", "openai", "concurrency"),
    ("captions", "openai", "encode_processes"),
}


def test_the_schema_marks_these_keys_speed_only_and_says_so():
    assert set(speed_settings.speed_only_keys()) == SPEED_ONLY
    schema = config_checks.load_schema()
    for path in SPEED_ONLY:
        node = schema
        for part in path:
            node = node["properties"][part]
        assert "reruns no job" in node["description"], path


def test_tracked_sections_leave_them_out_and_the_rule_section_puts_them_back():
    config = config_checks.defaults()
    config["images"]["loader_workers"] = 5
    config["captions"]["transformers"]["batch_size"] = 3
    images = speed_settings.tracked(config, "images")
    assert "loader_workers" not in images and images["min_side"] == config["images"]["min_side"]
    captions = speed_settings.tracked(config, "captions")
    assert (
        "batch_size" not in captions["transformers"]
        and "auto_batch" not in (captions["transformers"])
    )
    assert set(captions["openai"]) == set(config["captions"]["openai"]) - {
        "concurrency",
        "encode_processes",
    }
    assert "batch_size" in config["captions"]["transformers"]  # the config is not changed
    job = types.SimpleNamespace(
        params=types.SimpleNamespace(images=images, captions=captions), config=config
    )
    assert speed_settings.rule_section(job, "images") == config["images"]
    assert speed_settings.rule_section(job, "captions") == config["captions"]


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    """18 demo scenes, two thirds of them shrunk: three image sizes in every batch; and
    a broken file among them (its row comes at once, the others' when their batch runs)."""
    from rare_objects.demo.scenes import generate_scenes

    folder = tmp_path_factory.mktemp("mixed")
    generate_scenes(folder, n_images=18, seed=5, folders=2)
    paths = sorted(folder.rglob("*.jpg"))
    for i, path in enumerate(paths):
        if i % 3:
            image = Image.open(path).convert("RGB")
            image.resize((image.width * (4 - i % 3) // 4, image.height * 2 // 3)).save(path)
    paths[2].with_name(paths[2].stem + "-broken.jpg").write_bytes(b"not an image")
    return sources.build_manifest(
        {
            "kind": "folder",
            "path": str(folder),
            "extensions": [".jpg"],
            "max_images": None,
            "shard_size": 100,
        },
        0,
    )


@pytest.fixture(scope="module")
def detector(demo_models):
    return ultralytics_yolo.load_detector(demo_models / "detector.pt")


@pytest.fixture(scope="module")
def clip(demo_models):
    from rare_objects.backends import embedders

    return embedders.load({"preset": "demo"}, "cpu", demo_models_dir=demo_models)


def _detect(manifest, model, batch_size, loader_workers):
    settings = DetectSettings.from_config(
        {
            **config_checks.defaults()["detector"],
            "imgsz": 320,
            "conf": 0.05,
            "batch_size": batch_size,
        },
        "cpu",
    )
    detector = ultralytics_yolo.UltralyticsDetector(model, settings)
    return detect_images(manifest, detector, settings, loader_workers=loader_workers)


FLOATS = ["x1", "y1", "x2", "y2", "confidence"]


def _assert_same_detections(got, expected, exact: bool):
    """Equal tables; with another batch size the floats may differ in their last bits
    (the libraries' kernels block a batch differently), never anything else."""
    for mine, theirs in zip(got, expected):
        if exact:
            assert mine.equals(theirs)
            continue
        others = [c for c in theirs.columns if c not in FLOATS]
        assert mine[others].equals(theirs[others])  # ids, classes, ranks, crop boxes
        if len(theirs) and "x1" in theirs:
            difference = (mine[FLOATS] - theirs[FLOATS]).abs().max()
            assert difference[["x1", "y1", "x2", "y2"]].max() < 1e-3, difference  # pixels
            assert difference["confidence"] < 1e-5, difference


def test_detections_do_not_depend_on_the_batch_size_or_the_loader_threads(mixed_images, detector):
    readable = [p for p in mixed_images["image_path"] if not p.endswith("-broken.jpg")]
    assert len({Image.open(p).size for p in readable}) == 3
    expected = _detect(mixed_images, detector, 1, 0)
    assert len(expected[0]) > 40 and len(expected[2]) == 1  # objects; the broken file
    assert expected[1]["image_path"].tolist() == mixed_images["image_path"].tolist()
    # loader threads: bit for bit
    _assert_same_detections(_detect(mixed_images, detector, 1, 2), expected, exact=True)
    for batch_size, workers in [(3, 2), (8, 1), (32, 0)]:
        _assert_same_detections(
            _detect(mixed_images, detector, batch_size, workers), expected, exact=False
        )


def test_the_predict_path_runs_each_size_alone(mixed_images, detector, monkeypatch):
    """Models without the batched path (exported formats, end-to-end models) go through
    ultralytics' predict, one call per image size: a mixed batch in one call would be
    letterboxed to a full square and give other boxes."""
    monkeypatch.setattr(ultralytics_yolo.BatchedDetector, "for_model", classmethod(lambda *_: None))
    expected = _detect(mixed_images, detector, 1, 0)
    assert len(expected[0]) > 40
    for batch_size, workers in [(4, 2), (18, 0)]:
        _assert_same_detections(
            _detect(mixed_images, detector, batch_size, workers), expected, exact=False
        )


def test_embeddings_do_not_depend_on_the_batch_size_or_the_loader_threads(
    mixed_images, detector, clip
):
    detections = _detect(mixed_images, detector, 8, 2)[0]
    expected = embed_objects(detections, clip, batch_size=1, loader_workers=0)
    assert expected.num_rows > 40
    assert embed_objects(detections, clip, batch_size=1, loader_workers=2).equals(expected)
    vectors = np.stack(expected.column("embedding").to_numpy(zero_copy_only=False))
    for batch_size, workers in [(5, 2), (64, 1), (1000, 0)]:
        got = embed_objects(detections, clip, batch_size=batch_size, loader_workers=workers)
        assert got.column("object_id").equals(expected.column("object_id"))
        got_vectors = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(got_vectors, vectors, rtol=0, atol=1e-6)


def test_captions_do_not_depend_on_the_batch_size(mixed_images, detector, demo_models):
    from rare_objects.backends.captioning.transformers import TransformersCaptioner
    from rare_objects.io import images

    detections = _detect(mixed_images, detector, 8, 2)[0].head(16)
    crops = [
        images.crop(images.open_rgb(row.image_path), (row.x1, row.y1, row.x2, row.y2))
        for row in detections.itertuples()
    ]
    captions = {}
    for batch_size in (1, 5, 16):
        captioner = TransformersCaptioner(
            demo_models / "qwen2vl-tiny",
            device="cpu",
            batch_size=batch_size,
            max_new_tokens=12,
            min_pixels=3136,
            max_pixels=6272,
        )
        captions[batch_size] = captioner.caption(crops)
    assert all(isinstance(text, str) and text for text in captions[1]), captions[1]
    assert captions[5] == captions[1] and captions[16] == captions[1]


def test_server_captions_do_not_depend_on_concurrency_or_encoder_processes(monkeypatch):
    from rare_objects.backends.captioning.openai import OpenAICaptioner
    from tests.fake_openai_server import FakeOpenAIServer

    monkeypatch.setenv("ROM_TEST_SPEED_KEY", "sk-test")
    rng = np.random.default_rng(3)
    crops = [
        Image.fromarray(rng.integers(0, 256, (8 + i, 10 + 3 * i, 3), dtype=np.uint8))
        for i in range(24)
    ]
    answers = []
    with FakeOpenAIServer(work_s=0.001) as server:
        for concurrency, encode_processes in [(1, 0), (8, 2), (64, 1)]:
            captioner = OpenAICaptioner(
                server.base_url,
                "m",
                api_key_env="ROM_TEST_SPEED_KEY",
                concurrency=concurrency,
                encode_processes=encode_processes,
            )
            try:
                answers.append(captioner.caption(crops))
            finally:
                captioner.close()
    assert answers[0] == [f"object {10 + 3 * i}x{8 + i}" for i in range(24)]
    assert answers[1] == answers[0] and answers[2] == answers[0]
