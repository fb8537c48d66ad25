"""Object detectors behind a registry: ultralytics YOLO and transformers zero-shot models.

The zero-shot families run as tiny random-weight models built here
(rare_objects.demo.tiny_transformers_detectors: save_pretrained folders, tokenizers
built locally) and loaded through the registry as the workflow loads them; random
weights give random scores, so the checks are on structure: boxes inside the images,
classes among the prompts, the limits, the same objects whatever the batch size.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rare_objects.io import sources
from rare_objects.runtime import offline
from tests.conftest import CACHE, planned_jobs, run_snakemake, workflow_config

offline.configure(CACHE / "libs")

from rare_objects.backends import checks as backend_checks  # noqa: E402
from rare_objects.backends import object_detectors  # noqa: E402
from rare_objects.backends.object_detectors import ultralytics_yolo  # noqa: E402
from rare_objects.demo import tiny_transformers_detectors as tiny  # noqa: E402
from rare_objects.runtime import config as config_checks  # noqa: E402
from rare_objects.runtime import speed_settings  # noqa: E402
from rare_objects.stages.detection import DetectSettings, detect_images  # noqa: E402

PROMPTS = ["car", "truck", "traffic cone", "bicycle", "zebra crossing"]
ZERO_SHOT = "transformers_zero_shot"


def _section(**values) -> dict:
    """The validated ``detector`` section with ``values``."""
    return config_checks.validate({"detector": values})["detector"]


def _zero_shot(folder, **values) -> dict:
    return _section(
        backend=ZERO_SHOT, prompts=PROMPTS, transformers_zero_shot={"model": str(folder)}, **values
    )


# --- the registry, the schema, the settings ---


def test_the_schema_enum_lists_the_registered_detectors():
    schema = config_checks.load_schema()["properties"]["detector"]["properties"]
    assert sorted(schema["backend"]["enum"]) == object_detectors.names()
    assert object_detectors.names() == [ZERO_SHOT, "ultralytics"]
    for backend in object_detectors.backends():
        for key in backend.own_keys:  # each family's keys are in the schema's section
            assert key in schema, (backend.name, key)


def test_the_default_detect_params_are_those_of_before_the_registry():
    """A finished run of the default (ultralytics) configuration reruns no detection: the
    detect rule's param holds exactly the keys it held before, in the same order."""
    config = config_checks.defaults()
    backend = object_detectors.get(config["detector"]["backend"])
    param = backend.rule_settings(
        speed_settings.tracked(config, "detector"), object_detectors.backends()
    )
    assert list(param) == ["weights", "max_side", "imgsz", "conf", "iou", "max_det", "max_objects"]
    assert backend.vocabulary_settings(config["detector"]) == {}  # detector_classes: no params
    assert backend.model_paths(config["detector"]) == {
        "detector.weights": config["detector"]["weights"]
    }


def test_a_zero_shot_detector_is_tracked_by_its_own_keys(tmp_path):
    section = _zero_shot(tmp_path)
    backend = object_detectors.get(ZERO_SHOT)
    param = backend.rule_settings(section, object_detectors.backends())
    assert "weights" not in param and "imgsz" not in param and "backend" not in param
    assert param["prompts"] == PROMPTS and param[ZERO_SHOT] == {"model": str(tmp_path)}
    assert backend.vocabulary_settings(section) == {"prompts": PROMPTS}
    assert backend.model_paths(section) == {f"detector.{ZERO_SHOT}.model": str(tmp_path)}
    assert backend.model_kinds() == {f"detector.{ZERO_SHOT}.model": "folder"}
    assert backend.classes(section) == dict(enumerate(PROMPTS))
    assert backend.vocabulary(section) == PROMPTS


def test_a_zero_shot_detector_needs_its_model_folder_and_plain_prompts():
    with pytest.raises(config_checks.ConfigError) as error:
        backend_checks.validate({"detector": {"backend": ZERO_SHOT}})
    assert f"detector.{ZERO_SHOT}.model: required when detector.backend is {ZERO_SHOT!r}" in str(
        error.value
    )
    with pytest.raises(config_checks.ConfigError, match=r"detector\.prompts\.1"):
        config_checks.validate({"detector": {"prompts": ["car", "st. bernard"]}})
    with pytest.raises(config_checks.ConfigError, match=r"detector\.prompts"):
        config_checks.validate({"detector": {"prompts": ["car", "car"]}})


def test_target_problems_name_the_targets_that_match_nothing():
    vocabulary = ["car", "truck", "person", "bicycle"]
    targets = {
        "bicycle": ["bicycle"],
        "construction_vehicle": ["truck", "bus", "train"],
        "motorcycle": ["motorcycle"],
        "truck": [],
    }
    nothing, some = object_detectors.target_problems(targets, vocabulary)
    assert nothing == ["motorcycle: none of its classes ['motorcycle'] is a detector class"]
    assert some == ["construction_vehicle: near classes ['bus', 'train'] are no detector class"]


# --- ultralytics ---


@pytest.fixture(scope="module")
def yolo_weights(tmp_path_factory):
    """A random YOLOv8n saved as ultralytics saves weights, with its own class names."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolov8n.yaml", task="detect").model
    model.names = {0: "car", 1: "truck", 2: "person", 3: "bicycle"}
    path = tmp_path_factory.mktemp("yolo") / "tiny.pt"
    torch.save({"epoch": -1, "model": model, "ema": None, "train_args": {}}, path)
    return path


def test_the_yolo_vocabulary_is_read_at_start_without_loading_the_model(yolo_weights, tmp_path):
    names = ultralytics_yolo.read_names(yolo_weights)
    loaded = ultralytics_yolo.load_detector(yolo_weights)
    assert names == {0: "car", 1: "truck", 2: "person", 3: "bicycle"}
    assert ultralytics_yolo.model_classes(loaded) == names
    backend = object_detectors.get("ultralytics")
    assert backend.vocabulary(_section(weights=str(yolo_weights))) == list(names.values())
    assert backend.classes(_section(weights=str(yolo_weights))) == names
    (tmp_path / "model.onnx").write_bytes(b"not a torch checkpoint")
    assert ultralytics_yolo.read_names(tmp_path / "model.onnx") is None  # unknown: not checked
    assert ultralytics_yolo.read_names(tmp_path / "missing.pt") is None


def test_yolo_through_the_registry_takes_the_batched_path(yolo_weights):
    section = _section(weights=str(yolo_weights), imgsz=96, conf=1e-9)
    detector = object_detectors.load(section, DetectSettings.from_config(section, "cpu"))
    assert isinstance(detector, ultralytics_yolo.UltralyticsDetector)
    assert detector.batched is not None and detector.names[3] == "bicycle"


# --- transformers zero-shot: OWLv2 and Grounding DINO ---


@pytest.fixture(scope="module", params=sorted(tiny.BUILDERS))
def zero_shot_model(request, tmp_path_factory):
    """(family, folder) of a tiny random-weight zero-shot detector, built here."""
    folder = tmp_path_factory.mktemp("zero-shot") / request.param
    return request.param, tiny.BUILDERS[request.param](folder, seed=0, words=PROMPTS)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory):
    """Images of three sizes (one larger than max_side) and a broken file."""
    folder = tmp_path_factory.mktemp("zs-images")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(120, 200)] * 3 + [(200, 120)] * 2 + [(90, 300)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "9-broken.png").write_bytes(b"not an image")
    return sources.build_manifest(
        {
            "kind": "folder",
            "path": str(folder),
            "extensions": [".png"],
            "max_images": None,
            "shard_size": 100,
        },
        0,
    )


def _run(folder, manifest, batch_size=4, loader_workers=0, **values):
    section = _zero_shot(folder, **{"conf": 0.0, "max_side": 160, **values})
    settings = DetectSettings.from_config({**section, "batch_size": batch_size}, "cpu")
    detector = object_detectors.load(section, settings)
    return detector, detect_images(manifest, detector, settings, loader_workers=loader_workers)


def test_zero_shot_detections_are_rows_in_original_pixels(zero_shot_model, mixed_images):
    family, folder = zero_shot_model
    detector, (detections, per_image, rejects) = _run(folder, mixed_images, max_objects=7)
    assert type(detector.model).__name__.lower().startswith(family.replace("-", ""))
    assert detector.names == dict(enumerate(PROMPTS))
    assert list(rejects["reason"].str.split(":").str[0]) == ["not_an_image"]
    assert per_image["image_path"].tolist() == mixed_images["image_path"].tolist()
    assert len(detections) > 0 and detections.groupby("image_id").size().max() <= 7
    assert set(detections["class_name"]) <= set(PROMPTS)
    assert (detections["class_name"] == detections["class_id"].map(dict(enumerate(PROMPTS)))).all()
    assert (detections[["x1", "y1", "x2", "y2"]].to_numpy() >= 0).all()
    assert (detections["x2"] <= detections["image_width"]).all()
    assert (detections["y2"] <= detections["image_height"]).all()
    assert (detections["crop_width"] >= 1).all() and detections["object_id"].is_unique
    for _, group in detections.groupby("image_id"):
        assert group["confidence"].is_monotonic_decreasing
        assert group["rank"].tolist() == list(range(len(group)))
    # the 300 px wide image was resized to max_side 160: its boxes were scaled back up
    wide = detections[detections["image_width"] == 300]
    assert len(wide) and wide["x2"].max() > 160


def test_zero_shot_boxes_keep_conf_iou_and_max_det(zero_shot_model, mixed_images):
    _, folder = zero_shot_model
    section = _zero_shot(folder, conf=0.3, iou=0.3, max_det=5, max_side=160)
    settings = DetectSettings.from_config(section, "cpu")
    detector = object_detectors.load(section, settings)
    from torchvision.ops import box_iou

    decoded = [Image.open(p).convert("RGB") for p in mixed_images["image_path"][:6]]
    found = detector.detect([detector.prepare(image) for image in decoded])
    assert any(len(boxes) for boxes in found)
    for boxes in found:
        assert boxes.shape[1] == 6 and len(boxes) <= 5
        assert (boxes[:, 4] > 0.3).all()
        for label in boxes[:, 5].unique():
            same = boxes[boxes[:, 5] == label, :4]
            overlap = box_iou(same, same).nan_to_num(0).fill_diagonal_(0)  # 0-area boxes: nan
            assert (overlap <= 0.3 + 1e-6).all()


def test_zero_shot_detections_do_not_depend_on_the_batch_size(zero_shot_model, mixed_images):
    _, folder = zero_shot_model
    _, expected = _run(folder, mixed_images, batch_size=1)
    floats = ["x1", "y1", "x2", "y2", "confidence"]
    for batch_size, workers in [(3, 2), (8, 0)]:
        _, got = _run(folder, mixed_images, batch_size=batch_size, loader_workers=workers)
        for mine, theirs in zip(got, expected):
            others = [c for c in theirs.columns if c not in floats]
            pd.testing.assert_frame_equal(mine[others], theirs[others])
            if "x1" in theirs:
                np.testing.assert_allclose(mine[floats], theirs[floats], rtol=0, atol=1e-3)


def test_grounding_dino_names_a_box_by_the_prompt_of_its_best_token(tmp_path):
    """Grounding DINO scores text tokens, not prompts: a box's class is the prompt whose
    token it scores highest, its score that token's; separators and special tokens name
    no class."""
    import types

    from rare_objects.backends.object_detectors import transformers_zero_shot

    folder = tiny.build_tiny_grounding_dino(tmp_path / "gd", words=PROMPTS)
    section = _zero_shot(folder, conf=0.5)
    detector = object_detectors.load(section, DetectSettings.from_config(section, "cpu"))
    inputs = detector.family.inputs(detector, [Image.new("RGB", (80, 60))])
    tokens = detector.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert tokens[:6] == ["[CLS]", "car", ".", "truck", ".", "traffic"]
    logits = torch.full((1, 3, len(tokens)), -10.0)
    logits[0, 0, tokens.index("cone")] = 2.0  # traffic cone (prompt 2)
    logits[0, 1, tokens.index("[SEP]")] = 5.0  # no prompt: dropped at conf 0.5
    logits[0, 2, tokens.index("truck")] = 0.5  # truck (prompt 1)
    outputs = types.SimpleNamespace(logits=logits, pred_boxes=torch.full((1, 3, 4), 0.5))
    ((boxes, scores, labels),) = transformers_zero_shot._grounding_detections(
        detector, outputs, inputs, [(60, 80)]
    )
    assert labels.tolist() == [2, 1]
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([2.0, 0.5])))
    torch.testing.assert_close(boxes, torch.tensor([[20.0, 15.0, 60.0, 45.0]] * 2))


def test_a_missing_zero_shot_folder_says_what_to_do(tmp_path):
    section = _zero_shot(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="transformers_zero_shot.model"):
        object_detectors.load(section, DetectSettings.from_config(section, "cpu"))


# --- the workflow: the vocabulary rule, model inputs, the targets check at start ---


@pytest.fixture(scope="module")
def small_images(tmp_path_factory):
    from rare_objects.demo.scenes import generate_scenes

    folder = tmp_path_factory.mktemp("zs-scenes")
    generate_scenes(folder, n_images=3, seed=2, folders=1)
    return folder


def _workflow_config(tmp_path, images, **detector) -> dict:
    # the demo models' folder holds nothing: they are the build rules' outputs, never needed here
    return workflow_config(
        tmp_path / "results",
        images,
        tmp_path / "no-demo-models",
        detector=detector,
        targets={"bicycle": ["bicycle"], "trailer": ["truck"]},
    )


@pytest.fixture(scope="module")
def zero_shot_run(tmp_path_factory, small_images):
    """The detect and detector_classes jobs of a workflow with a tiny OWLv2 run once."""
    workdir = tmp_path_factory.mktemp("zs-run")
    folder = tiny.build_tiny_owlv2(workdir / "owlv2", seed=0, words=PROMPTS)
    config = _workflow_config(
        workdir,
        small_images,
        backend=ZERO_SHOT,
        prompts=PROMPTS,
        conf=0.3,
        transformers_zero_shot={"model": str(folder)},
    )
    run_snakemake(workdir, config, "--until", "detect", "detector_classes")
    return workdir, config


UNTIL = ("--until", "detect", "detector_classes")


@pytest.mark.workflow
def test_the_zero_shot_vocabulary_and_detections_follow_the_prompts(zero_shot_run):
    workdir, config = zero_shot_run
    results = workdir / "results"
    vocabulary = json.loads((results / "tables" / "detector_classes.json").read_text())
    assert vocabulary == {str(i): prompt for i, prompt in enumerate(PROMPTS)}
    detections = pd.read_parquet(next((results / "tables" / "detections").glob("*.parquet")))
    assert set(detections["class_name"]) <= set(PROMPTS)
    assert planned_jobs(workdir, config, *UNTIL) == {}
    # another family's settings change nothing
    other = {**config, "detector": {**config["detector"], "imgsz": 96, "weights": "x/other.pt"}}
    assert planned_jobs(workdir, other, *UNTIL) == {}
    # new prompts: a new vocabulary and new detections
    changed = {**config, "detector": {**config["detector"], "prompts": [*PROMPTS, "stroller"]}}
    planned = planned_jobs(workdir, changed, *UNTIL)
    assert planned == {"detect": 1, "detector_classes": 1}


@pytest.mark.workflow
def test_a_file_rewritten_in_the_zero_shot_model_folder_reruns_detection(zero_shot_run):
    """A folder is compared by its own mtime, which a file rewritten inside it does not
    change: each file of the model folder is an input too (small files by checksum)."""
    workdir, config = zero_shot_run
    folder = config["detector"][ZERO_SHOT]["model"]
    path = os.path.join(folder, "config.json")
    content, times = open(path, "rb").read(), (os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns)
    folder_mtime = os.stat(folder).st_mtime_ns
    try:
        with open(path, "wb") as handle:  # in place, as if another model's file were copied in
            handle.write(content + b"\n")
        assert os.stat(folder).st_mtime_ns == folder_mtime
        assert planned_jobs(workdir, config, *UNTIL) == {"detect": 1, "detector_classes": 1}
    finally:
        with open(path, "wb") as handle:
            handle.write(content)
        os.utime(path, ns=times)
    assert planned_jobs(workdir, config, *UNTIL) == {}


@pytest.mark.workflow
def test_targets_the_detector_cannot_name_are_refused_at_start(
    tmp_path, small_images, yolo_weights
):
    folder = tmp_path / "owlv2"  # checked at start: it must exist, its files are not read
    folder.mkdir()
    config = _workflow_config(
        tmp_path, small_images, backend=ZERO_SHOT, transformers_zero_shot={"model": str(folder)}
    )
    config["targets"] = {"forklift": ["crane", "forklift"], "bicycle": ["bicycle", "tandem"]}
    result = run_snakemake(tmp_path, config, "--dry-run", check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "targets the detector cannot name (1)" in text
    assert "forklift: none of its classes ['forklift', 'crane'] is a detector class" in text
    assert "the detector's vocabulary: car, truck, bus, trailer, construction vehicle" in text
    # YOLO weights: the names stored in them; a near class it cannot name only warns
    config = _workflow_config(tmp_path, small_images, weights=str(yolo_weights))
    config["targets"] = {"bicycle": ["bicycle", "tandem"]}
    result = run_snakemake(tmp_path, config, "--dry-run", check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bicycle: near classes ['tandem'] are no detector class" in result.stderr
    config["targets"] = {"motorcycle": ["motorcycle"]}
    result = run_snakemake(tmp_path, config, "--dry-run", check=False)
    assert result.returncode != 0
    assert "the detector's vocabulary: car, truck, person, bicycle" in result.stdout + result.stderr
