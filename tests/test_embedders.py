"""The embedder and text-encoder registries: their names, each family's declarations, tiny
random-weight models of each transformers family loaded through the registry, the start-up
check of the concepts' text encoder, and the embed rule's inputs and params.

The transformers models are built here (``rare_objects.demo.tiny_transformers``: configs,
image processors and tokenizers made in code, ``save_pretrained`` to a folder), so nothing
is downloaded and no test waits for the demo's models.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
import pytest
from PIL import Image

from rare_objects.runtime import offline
from tests.conftest import CACHE, planned_jobs, run_snakemake

offline.configure(CACHE / "libs")  # before transformers / open_clip are imported

from rare_objects.backends import checks as backend_checks  # noqa: E402
from rare_objects.backends import embedders, text_encoders  # noqa: E402
from rare_objects.backends.embedders import open_clip as open_clip_embedder  # noqa: E402
from rare_objects.demo.tiny_transformers import FAMILIES, build_tiny_encoder  # noqa: E402
from rare_objects.runtime import config as config_checks  # noqa: E402
from rare_objects.runtime import speed_settings  # noqa: E402
from rare_objects.runtime.models import ModelPath  # noqa: E402
from rare_objects.stages.embedding import embed_objects  # noqa: E402


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict:
    """A tiny model folder of every transformers family (FAMILIES), seed 0."""
    root = tmp_path_factory.mktemp("tiny-transformers")
    return {family: build_tiny_encoder(family, root / family, seed=0) for family in FAMILIES}


def transformers_section(folder) -> dict:
    return {"backend": "transformers", "transformers": {"model": str(folder)}}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (90, 140, 3), dtype=np.uint8)


BOXES = np.array([[10, 5, 60, 80], [0, 0, 140, 90], [100.4, 20.2, 103, 22], [50, 50, 52, 89.5]])


# --- the registries ---


def test_registry_names_are_the_schema_enum():
    schema = config_checks.load_schema()["properties"]["embedder"]["properties"]
    assert sorted(schema["backend"]["enum"]) == embedders.names() == ["open_clip", "transformers"]
    for name in embedders.names():
        family = embedders.get(name)
        assert family.name == name
        # both run a torch model on the configured device: the embed job's gpu resource
        assert [family.needs_gpu(d) for d in ("cpu", "auto", "cuda", "cuda:1")] == [
            False,
            True,
            True,
            True,
        ]


def test_every_key_of_the_embedder_section_is_shared_or_one_familys():
    schema = config_checks.load_schema()["properties"]["embedder"]["properties"]
    own = [key for name in embedders.names() for key in embedders.get(name).keys]
    assert len(own) == len(set(own))  # no key belongs to two families
    assert set(schema) == {"backend", *embedders.SHARED_KEYS, *own}


def test_unknown_embedder_names_the_known_ones():
    with pytest.raises(ValueError, match="open_clip, transformers"):
        embedders.get("bogus")


def test_text_encoder_choices():
    assert text_encoders.names() == ["embedder", "sentence_transformers"]
    assert text_encoders.choose("clip").name == "embedder"  # the value used before the registry
    assert text_encoders.choose("embedder").name == "embedder"
    assert text_encoders.choose("minilm").name == "sentence_transformers"
    assert text_encoders.choose("/models/my-encoder").name == "sentence_transformers"
    config = config_checks.validate({"concepts": {"text_encoder": "/models/my-encoder"}})
    folder = ModelPath("concepts.text_encoder", "/models/my-encoder", "folder")
    assert text_encoders.model_paths(config) == [folder]
    assert (
        text_encoders.model_paths(config_checks.validate({"concepts": {"text_encoder": "minilm"}}))
        == []
    )


# --- open_clip: today's presets, inputs and params ---


def test_open_clip_declarations_and_params_of_the_default_configuration():
    config = config_checks.defaults()
    family = embedders.get(config["embedder"]["backend"])
    settings = embedders.settings(config)
    assert family.name == "open_clip"
    assert family.spec(settings) == ("ViT-L-14", "openai")
    assert family.model_paths(settings) == []  # a tag, resolved offline by open_clip
    assert family.has_text_tower(settings)
    # the embed rule's param is what it was before there was a choice of embedder: a
    # finished run reruns nothing, and the transformers section is not part of it
    param = embedders.tracked(speed_settings.tracked(config, "embedder"), family)
    assert list(param.items()) == [
        ("preset", "clip_l14"),
        ("model", None),
        ("pretrained", None),
        ("precision", "auto"),
    ]
    changed = copy.deepcopy(config)
    changed["embedder"]["transformers"]["model"] = "/models/dinov2"
    assert embedders.tracked(speed_settings.tracked(changed, "embedder"), family) == param
    # embedder.storage float16 changes the embeddings: in the param (float32, the default,
    # is left out so that the param stays what it was)
    assert config["embedder"]["storage"] == "float32"
    changed["embedder"]["storage"] = "float16"
    half = embedders.tracked(speed_settings.tracked(changed, "embedder"), family)
    assert list(half.items()) == [*param.items(), ("storage", "float16")]


def test_open_clip_local_checkpoints_are_inputs_named_by_their_key():
    demo = embedders.complete_settings({"preset": "demo"}, demo_models_dir="/m")
    family = embedders.get("open_clip")
    assert family.spec(demo) == (open_clip_embedder.DEMO_CLIP_NAME, "/m/clip-tiny.pt")
    assert family.model_paths(demo) == [
        ModelPath("embedder.preset 'demo'", "/m/clip-tiny.pt", "file")
    ]
    custom = embedders.complete_settings(
        {"preset": "custom", "model": "ViT-B-16", "pretrained": "/w/b16.bin"}
    )
    assert family.spec(custom) == ("ViT-B-16", "/w/b16.bin")
    assert family.model_paths(custom) == [ModelPath("embedder.pretrained", "/w/b16.bin", "file")]


def test_open_clip_through_the_registry_is_load_clip(tmp_path, image):
    import open_clip
    import torch

    open_clip.add_model_config(open_clip_embedder.MODEL_CONFIG_DIR)
    torch.manual_seed(0)
    model = open_clip.create_model(open_clip_embedder.DEMO_CLIP_NAME)
    torch.save(model.state_dict(), tmp_path / "clip-tiny.pt")
    loaded = embedders.load({"preset": "demo"}, "cpu", demo_models_dir=tmp_path)
    direct = open_clip_embedder.load_clip(
        open_clip_embedder.DEMO_CLIP_NAME, str(tmp_path / "clip-tiny.pt"), "cpu"
    )
    assert loaded.identity == direct.identity == "open_clip:RareTiny-ViT:clip-tiny.pt"
    assert loaded._tensor_steps is not None  # the batched roi_align preprocessing
    got = loaded.encode_batch(loaded.crop_batch(image, BOXES))
    np.testing.assert_array_equal(got, direct.encode_batch(direct.crop_batch(image, BOXES)))
    assert got.shape == (len(BOXES), loaded.dim)


# --- transformers: tiny models of each family through the registry ---


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_family_embeds_crops(tiny_folders, image, family):
    section = transformers_section(tiny_folders[family])
    settings = embedders.complete_settings(section)
    declared = embedders.get("transformers")
    assert declared.model_paths(settings) == [
        ModelPath("embedder.transformers.model", str(tiny_folders[family]), "folder")
    ]
    assert declared.spec(settings) == (str(tiny_folders[family]), None)
    assert declared.has_text_tower(settings) == FAMILIES[family]

    model = embedders.load(section, "cpu")
    assert model.identity == f"transformers:{family}:{family}" and model.device == "cpu"
    vectors = model.encode_batch(model.crop_batch(image, BOXES))
    assert vectors.dtype == np.float32 and vectors.shape == (len(BOXES), model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # a crop's vector does not depend on the other crops of its batch
    for k in range(len(BOXES)):
        alone = model.encode_batch(model.crop_batch(image, BOXES[k : k + 1]))
        np.testing.assert_allclose(alone[0], vectors[k], atol=1e-5)
    joined = embedders.join_batches(
        [model.crop_batch(image, BOXES[:1]), model.crop_batch(image, BOXES[1:])]
    )
    np.testing.assert_allclose(model.encode_batch(joined), vectors, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3  # different crops, different vectors

    if FAMILIES[family]:
        texts = model.encode(["a photo of a car", "truck", "a zebra unicorn"])
        assert texts.dtype == np.float32 and texts.shape == (3, model.dim)
        np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(model.encode(["truck"])[0], texts[1], atol=1e-5)
    else:
        with pytest.raises(TypeError, match="no text tower"):
            model.encode(["a car"])


def test_tiny_builds_are_seeded(tmp_path):
    a = build_tiny_encoder("dinov2", tmp_path / "a", seed=3)
    b = build_tiny_encoder("dinov2", tmp_path / "b", seed=3)
    c = build_tiny_encoder("dinov2", tmp_path / "c", seed=4)
    weights = [(folder / "model.safetensors").read_bytes() for folder in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]


def test_embed_stage_with_a_transformers_embedder(tiny_folders, tmp_path):
    import pandas as pd

    rng = np.random.default_rng(1)
    paths = []
    for k, size in enumerate([(60, 80), (45, 30)]):
        path = tmp_path / f"{k}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    detections = pd.DataFrame(
        {
            "object_id": ["a", "b", "c", "d"],
            "image_path": [paths[0], paths[0], paths[1], str(tmp_path / "gone.png")],
            "x1": [1.0, 20, 3, 0],
            "y1": [2.0, 10, 4, 0],
            "x2": [30.0, 70, 25, 5],
            "y2": [40.0, 50, 40, 5],
        }
    )
    model = embedders.load(transformers_section(tiny_folders["siglip2"]), "cpu")
    table = embed_objects(detections, model, batch_size=1, loader_workers=0)
    again = embed_objects(detections, model, batch_size=8, loader_workers=2)
    assert table.column("object_id").to_pylist() == ["a", "b", "c", "d"]
    assert table.column("embedding").null_count == 1 and table.column("error")[3].as_py()
    np.testing.assert_allclose(
        np.stack(table.column("embedding").to_pylist()[:3]),
        np.stack(again.column("embedding").to_pylist()[:3]),
        atol=1e-5,
    )


# --- the start-up checks ---


def test_the_text_tower_of_an_embedder_without_one_is_refused(tiny_folders):
    dinov2 = transformers_section(tiny_folders["dinov2"])
    for value in ("clip", "embedder"):
        with pytest.raises(config_checks.ConfigError) as error:
            backend_checks.validate({"embedder": dinov2, "concepts": {"text_encoder": value}})
        text = str(error.value)
        assert f"concepts.text_encoder: {value!r}" in text
        assert "has none; set concepts.text_encoder to minilm" in text
        assert str(tiny_folders["dinov2"]) in text
    backend_checks.validate({"embedder": dinov2, "concepts": {"text_encoder": "minilm"}})
    siglip = transformers_section(tiny_folders["siglip"])
    backend_checks.validate({"embedder": siglip, "concepts": {"text_encoder": "clip"}})


def test_the_transformers_backend_needs_its_folder():
    with pytest.raises(config_checks.ConfigError, match="embedder.transformers.model: required"):
        backend_checks.validate({"embedder": {"backend": "transformers"}})
    with pytest.raises(config_checks.ConfigError, match="embedder.model: required"):
        backend_checks.validate({"embedder": {"preset": "custom"}})


# --- the workflow: the embed rule's inputs come from the registry ---


def _workflow_config(tmp_path, folder, **sections) -> dict:
    """A configuration whose detector weights are a stand-in file: dry runs only."""
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(images / f"{k}.jpg")
    (tmp_path / "detector.pt").write_bytes(b"a stand-in: dry runs never load it")
    config = {
        "results": str(tmp_path / "results"),
        "device": "cpu",
        "cache_dir": str(CACHE / "libs"),
        "input": {"kind": "folder", "path": str(tmp_path / "images"), "shard_size": 2},
        "demo": {"models_dir": str(tmp_path / "demo")},
        "detector": {"weights": str(tmp_path / "detector.pt")},
        "embedder": transformers_section(folder),
        "captions": {"backend": "none"},
        "concepts": {"text_encoder": "minilm"},
        "evaluation": {"enabled": False},
    }
    config.update(sections)
    return config


def _planned_files(workdir, config, rule: str) -> list[str]:
    """The output and benchmark files of ``rule``'s jobs in a dry run up to embed."""
    result = run_snakemake(workdir, config, "--dry-run", "--until", "embed")
    files, current = [], None
    for line in (result.stdout + result.stderr).splitlines():
        line = line.strip()
        if line.startswith("rule "):
            current = line[len("rule ") :].rstrip(":")
        elif current == rule and line.startswith(("output: ", "benchmark: ")):
            files += line.split(": ", 1)[1].split(", ")
    return files


def test_a_file_replaced_in_the_embedder_folder_reruns_embed(tiny_folders, tmp_path):
    folder = build_tiny_encoder("dinov2", tmp_path / "dinov2", seed=0)
    workdir = tmp_path / "run"
    config = _workflow_config(workdir, folder)
    detect, embed = (
        _planned_files(workdir, config, "detect"),
        _planned_files(workdir, config, "embed"),
    )
    assert len(embed) == 2 * 2  # two shards: the embeddings and the benchmark of each
    # as if the run had finished: every input older than the outputs that follow it, and
    # the rule scripts too (Snakemake compares a script's mtime with the outputs)
    now = time.time()
    for path in [*folder.rglob("*"), *(workdir / "images").rglob("*"), workdir / "detector.pt"]:
        os.utime(path, (now - 1000, now - 1000))
    for files, later in ((detect, 100), (embed, 200)):
        for path in files:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb"):
                pass
            os.utime(path, (now + later, now + later))
    assert planned_jobs(workdir, config, "--until", "embed") == {}
    # new weights written over the old ones, after the run: the folder's own mtime does
    # not change, only the file's
    folder_mtime = os.stat(folder).st_mtime_ns
    weights = folder / "model.safetensors"
    replacement = build_tiny_encoder("dinov2", tmp_path / "new", seed=1) / "model.safetensors"
    weights.write_bytes(replacement.read_bytes())
    os.utime(weights, (now + 300, now + 300))
    assert os.stat(folder).st_mtime_ns == folder_mtime
    assert planned_jobs(workdir, config, "--until", "embed") == {"embed": 2}


def test_a_workflow_with_dinov2_and_the_clip_text_encoder_is_refused_at_start(
    tiny_folders, tmp_path
):
    config = _workflow_config(tmp_path, tiny_folders["dinov2"], concepts={"text_encoder": "clip"})
    result = run_snakemake(tmp_path, config, "--dry-run", check=False)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "concepts.text_encoder: 'clip' embeds texts with the embedder's text tower" in text


def test_the_text_tower_of_a_transformers_embedder_loads_its_folder_for_the_concepts(
    tiny_folders, tmp_path
):
    from rare_objects.runtime.models import model_input_files

    folder = tiny_folders["siglip"]
    config = _workflow_config(tmp_path, folder, concepts={"text_encoder": "clip"})
    target = f"{config['results']}/tables/concepts.parquet"
    result = run_snakemake(tmp_path, config, "--dry-run", target)
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()]
    start = lines.index("rule analyse_concepts:")
    inputs = next(line for line in lines[start:] if line.startswith("input: "))
    inputs = inputs[len("input: ") :].split(", ")
    # the folder and every file in it, as for embed: new weights rerun the analysis
    assert set(model_input_files(folder)) <= set(inputs)
    assert f"{folder}/model.safetensors" in inputs
