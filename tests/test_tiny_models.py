"""The tiny models the workflow builds for itself: they load the standard way and work.

The detector trains for a few minutes on the CPU, so it is built once into
``tests/.cache/models/`` and reused by later sessions (delete that folder to rebuild).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rare_objects.runtime.offline import configure
from tests.conftest import CACHE, MODELS

DETECTOR_WORK = CACHE / "detector-training"  # as conftest's demo_models
configure(CACHE / "libraries")  # before ultralytics / open_clip are imported

import torch  # noqa: E402

from rare_objects.demo import scenes as demo_scenes  # noqa: E402
from rare_objects.demo import tiny_models  # noqa: E402
from rare_objects.evaluation.matching import box_iou as iou  # noqa: E402

MIN_RECALL = 0.6  # class-aware recall at IoU >= 0.5, conf 0.25, on fresh demo scenes


def detection_recall(
    model_path: str | os.PathLike,
    images_root: str | os.PathLike,
    ground_truth,
    conf: float = 0.25,
    min_iou: float = 0.5,
    imgsz: int | None = None,
) -> dict:
    """Recall of a YOLO model on demo scenes with ground truth (a :func:`generate_scenes` table).

    A ground-truth object counts as found when a detection overlaps it with IoU >= ``min_iou``
    (``recall_any_class``) and, for ``recall``, also has its class. Greedy one-to-one
    matching per image. Returns the figures and the counts behind them.
    """
    from ultralytics import YOLO

    model = YOLO(str(model_path))
    names = model.names
    found = found_any = total = n_det = 0
    planted_found = planted_total = 0
    kwargs = {"conf": conf, "verbose": False, "device": "cpu"}
    if imgsz:
        kwargs["imgsz"] = imgsz
    for rel, objs in ground_truth.groupby("image_path", sort=True):
        result = model.predict(str(Path(images_root) / rel), **kwargs)[0]
        boxes = result.boxes.xyxy.cpu().numpy().reshape(-1, 4)
        classes = [names[int(c)] for c in result.boxes.cls.cpu().numpy()]
        n_det += len(boxes)
        gt_boxes = objs[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
        ious = iou(gt_boxes, boxes) if len(boxes) else np.zeros((len(gt_boxes), 0))
        for require_class in (True, False):
            used: set[int] = set()
            for i, (cls, planted) in enumerate(zip(objs["class_name"], objs["planted"])):
                order = np.argsort(-ious[i]) if ious.shape[1] else []
                for j in order:
                    if ious[i, j] < min_iou:
                        break
                    if j in used or (require_class and classes[j] != cls):
                        continue
                    used.add(int(j))
                    if require_class:
                        found += 1
                        planted_found += bool(planted)
                    else:
                        found_any += 1
                    break
        total += len(objs)
        planted_total += int(objs["planted"].sum())
    return {
        "recall": found / max(total, 1),
        "recall_any_class": found_any / max(total, 1),
        "planted_recall": planted_found / planted_total if planted_total else None,
        "n_objects": total,
        "n_found": found,
        "n_planted": planted_total,
        "n_planted_found": planted_found,
        "n_detections": n_det,
    }


@pytest.fixture(scope="session")
def demo_detector() -> Path:
    """The tiny demo detector, trained once (minutes) and cached across test sessions.

    The same file as the workflow tests' ``demo_models`` (same arguments), so one training serves both.
    """
    return tiny_models.build_demo_detector(MODELS / "detector.pt", DETECTOR_WORK, seed=0)


@pytest.fixture(scope="session")
def demo_clip() -> Path:
    """The tiny CLIP with its default fine-tune, built once and cached."""
    return tiny_models.build_demo_clip(MODELS / "demo_clip.safetensors", seed=0)


@pytest.fixture(scope="module")
def fresh_demo(tmp_path_factory):
    """Demo scenes of a seed that neither model was built from."""
    out = tmp_path_factory.mktemp("fresh_demo")
    gt = demo_scenes.generate_scenes(out, 24, seed=1234, planted_fraction=0.2)
    return out, gt


def _state(path: Path) -> dict[str, torch.Tensor]:
    from open_clip.factory import load_state_dict

    return load_state_dict(str(path))


# ---------------------------------------------------------------------------------------------
# CLIP
# ---------------------------------------------------------------------------------------------


def test_clip_loads_through_open_clip_and_embeds(tmp_path):
    path = tiny_models.build_demo_clip(tmp_path / "clip.pt", seed=0, finetune_steps=3, n_scenes=5)
    cfg = json.loads(
        (tiny_models.MODEL_CONFIG_DIR / f"{tiny_models.DEMO_CLIP_NAME}.json").read_text()
    )

    import open_clip

    open_clip.add_model_config(tiny_models.MODEL_CONFIG_DIR)
    assert tiny_models.DEMO_CLIP_NAME in open_clip.list_models()
    model, _, preprocess = open_clip.create_model_and_transforms(
        tiny_models.DEMO_CLIP_NAME, pretrained=str(path)
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(tiny_models.DEMO_CLIP_NAME)
    # the checkpoint really was loaded: weights equal the saved ones, not a fresh init
    saved = _state(path)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)

    crops = [Image.new("RGB", (40, 90), (200, 30, 30)), Image.new("RGB", (120, 50), (30, 30, 200))]
    with torch.no_grad():
        image_emb = model.encode_image(torch.stack([preprocess(c) for c in crops]))
        text_emb = model.encode_text(tokenizer(["a photo of a car", "a photo of a person"]))
    assert image_emb.shape == (2, cfg["embed_dim"])
    assert text_emb.shape == (2, cfg["embed_dim"])
    assert torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()


def test_clip_build_is_deterministic_and_idempotent(tmp_path):
    a = tiny_models.build_demo_clip(
        tmp_path / "a.safetensors", seed=3, finetune_steps=4, n_scenes=5
    )
    b = tiny_models.build_demo_clip(
        tmp_path / "b.safetensors", seed=3, finetune_steps=4, n_scenes=5
    )
    c = tiny_models.build_demo_clip(
        tmp_path / "c.safetensors", seed=4, finetune_steps=4, n_scenes=5
    )
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.read_bytes() == b.read_bytes()
    # torch.save's files too (the workflow's clip-tiny.pt), and the JSON beside them
    small = dict(seed=3, finetune_steps=4, n_scenes=5)
    pa = tiny_models.build_demo_clip(tmp_path / "pa" / "clip.pt", **small)
    pb = tiny_models.build_demo_clip(tmp_path / "pb" / "clip.pt", **small)
    assert pa.read_bytes() == pb.read_bytes()
    assert (pa.parent / "clip.json").read_text() == (pb.parent / "clip.json").read_text()
    assert all(torch.equal(sa[k], v) for k, v in torch.load(pa).items())

    # idempotent: an existing file is returned untouched; force rebuilds
    a.write_bytes(b"sentinel")
    assert tiny_models.build_demo_clip(a, seed=3, finetune_steps=4, n_scenes=5) == a
    assert a.read_bytes() == b"sentinel"
    tiny_models.build_demo_clip(a, seed=3, finetune_steps=4, n_scenes=5, force=True)
    assert a.read_bytes() == b.read_bytes()


def test_finetuned_clip_separates_classes_and_planted_objects(demo_clip, fresh_demo):
    out, gt = fresh_demo
    model, preprocess, tokenizer = tiny_models.load_demo_clip(demo_clip)
    crops = []
    for row in gt.itertuples():
        with Image.open(out / row.image_path) as im:
            crops.append(
                im.convert("RGB").crop((int(row.x1), int(row.y1), int(row.x2), int(row.y2)))
            )
    concepts = list(demo_scenes.CLASS_NAMES) + [
        kind[2] for kind in demo_scenes.PLANTED_KINDS.values()
    ]
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            model.encode_image(torch.stack([preprocess(c) for c in crops])), dim=-1
        )
        txt = torch.nn.functional.normalize(
            model.encode_text(tokenizer([f"a photo of a {c}" for c in concepts])), dim=-1
        )
    # zero-shot: the class prompts rank the right class first for most objects
    pred = np.array(concepts)[(img @ txt[:4].T).argmax(1).numpy()]
    accuracy = float((pred == gt["class_name"].to_numpy()).mean())
    # planted objects: their image embeddings are far from the usual objects of their class
    emb = img.numpy()
    planted = gt["planted"].to_numpy()
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1)
    nearest_normal = np.where(planted[None, :], -1, sims).max(1)
    print(
        f"\ntiny CLIP zero-shot class accuracy {accuracy:.2f}; nearest-normal similarity: "
        f"planted {nearest_normal[planted].mean():.2f}, normal {nearest_normal[~planted].mean():.2f}"
    )
    assert accuracy >= 0.7
    assert nearest_normal[planted].mean() < nearest_normal[~planted].mean()


def test_clip_cli(tmp_path):
    out = tmp_path / "cli_clip.pt"
    assert (
        tiny_models.main(
            [
                "clip",
                "--out",
                str(out),
                "--finetune-steps",
                "0",
                "--cache-dir",
                str(tmp_path / "lib"),
            ]
        )
        == 0
    )
    assert out.exists()
    model, _, _ = tiny_models.load_demo_clip(out)
    assert model.visual.output_dim == 64


# ---------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------


def test_detector_loads_with_yolo(demo_detector):
    from ultralytics import YOLO

    model = YOLO(str(demo_detector))
    assert model.task == "detect"
    assert [model.names[i] for i in sorted(model.names)] == list(demo_scenes.CLASS_NAMES)
    n_params = sum(p.numel() for p in model.model.parameters())
    assert n_params < 2_000_000
    metrics = json.loads((DETECTOR_WORK / tiny_models.DETECTOR_METRICS_NAME).read_text())
    print(f"\ntiny detector: {n_params} parameters, training metrics {metrics}")


def test_detector_finds_objects_in_fresh_demo_scenes(demo_detector, fresh_demo):
    out, gt = fresh_demo
    result = detection_recall(demo_detector, out, gt, conf=0.25, min_iou=0.5)
    print(
        f"\ntiny detector on {result['n_objects']} objects of fresh demo scenes: "
        f"recall {result['recall']:.3f} (any class {result['recall_any_class']:.3f}), "
        f"planted {result['n_planted_found']}/{result['n_planted']}, {result['n_detections']} detections"
    )
    assert result["recall"] >= MIN_RECALL
    assert result["n_detections"] <= 2 * result["n_objects"]  # not a box everywhere


def test_detector_build_is_idempotent(demo_detector, tmp_path):
    before = demo_detector.stat().st_mtime_ns
    again = tiny_models.build_demo_detector(demo_detector, tmp_path / "unused_work", seed=0)
    assert again == demo_detector
    assert demo_detector.stat().st_mtime_ns == before
    assert not (tmp_path / "unused_work").exists()


def test_detector_build_is_deterministic(tmp_path):
    """Two fresh builds with one seed, in other folders and at other times, give equal files."""
    from ultralytics import YOLO

    small = dict(seed=3, epochs=1, imgsz=160, n_train=6, n_val=2, batch=4, threads=1)
    a = tiny_models.build_demo_detector(tmp_path / "a.pt", tmp_path / "a_work", **small)
    b = tiny_models.build_demo_detector(tmp_path / "b.pt", tmp_path / "b_work", **small)
    sa = torch.load(a, weights_only=False)["model"].float().state_dict()
    sb = torch.load(b, weights_only=False)["model"].float().state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.read_bytes() == b.read_bytes()
    checkpoint = torch.load(a, weights_only=False)
    assert str(tmp_path) not in repr(checkpoint["train_args"])  # no path of the build
    assert not {"date", "git", "train_results"} & checkpoint.keys()
    # ultralytics loads it as any checkpoint, with the training size as its default
    model = YOLO(str(a), task="detect")
    assert model.overrides["imgsz"] == 160
    assert [model.names[i] for i in sorted(model.names)] == list(demo_scenes.CLASS_NAMES)
