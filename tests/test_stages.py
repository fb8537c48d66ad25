"""Stage functions without Snakemake: detection rows, embeddings, selection, export, timing."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from rare_objects.io import sources
from rare_objects.runtime import offline
from tests.conftest import CACHE
from tests.test_workflow import RESULT_FIELDS

offline.configure(CACHE / "libs")

from rare_objects.backends.embedders import open_clip as open_clip_embedder  # noqa: E402
from rare_objects.backends.object_detectors.ultralytics_yolo import (  # noqa: E402
    BatchedDetector,
    UltralyticsDetector,
)
from rare_objects.export import json_writers, rows, tree  # noqa: E402
from rare_objects.export.statistics import ObjectCounts  # noqa: E402
from rare_objects.io import images, schemas  # noqa: E402
from rare_objects.report import timing  # noqa: E402
from rare_objects.runtime.config import defaults as config_defaults  # noqa: E402
from rare_objects.stages import selection  # noqa: E402
from rare_objects.stages.detection import DetectSettings, detect_images  # noqa: E402
from rare_objects.stages.embedding import embed_objects  # noqa: E402


def detect_settings(**overrides) -> DetectSettings:
    """The schema's detector defaults on the CPU, with the test's changes."""
    return DetectSettings.from_config({**config_defaults()["detector"], **overrides}, "cpu")


@pytest.fixture(scope="module")
def random_detector():
    """A YOLOv8n with random weights: at conf 1e-9 it returns max_det boxes of every image."""
    from ultralytics import YOLO

    torch.manual_seed(0)
    return YOLO("yolov8n.yaml", task="detect")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    import open_clip

    open_clip.add_model_config(open_clip_embedder.MODEL_CONFIG_DIR)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    torch.save(open_clip.create_model(open_clip_embedder.DEMO_CLIP_NAME).state_dict(), path)
    return open_clip_embedder.load_clip(open_clip_embedder.DEMO_CLIP_NAME, str(path), "cpu")


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(
        tmp_path / "a" / "wide.png"
    )
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(
        tmp_path / "a" / "small.jpg"
    )
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    return tmp_path


def _manifest(folder):
    return sources.build_manifest(
        {
            "kind": "folder",
            "path": str(folder),
            "extensions": [".jpg", ".png"],
            "max_images": None,
            "shard_size": 10,
        },
        0,
    )


def test_detections_are_rows_in_original_pixels(random_detector, image_folder):
    settings = detect_settings(
        max_side=100, imgsz=96, conf=1e-9, max_det=30, max_objects=7, batch_size=2
    )
    detections, per_image, rejects = detect_images(
        _manifest(image_folder),
        UltralyticsDetector(random_detector, settings),
        settings,
        loader_workers=2,
    )
    assert list(rejects["reason"].str.split(":").str[0]) == ["not_an_image"]
    assert (
        per_image.set_index("image_path")["status"].to_dict()[
            str(image_folder / "a" / "broken.jpg")
        ]
        == "rejected"
    )
    assert detections.groupby("image_id").size().max() == 7
    wide = detections[detections["image_path"].str.endswith("wide.png")]
    assert (wide["image_width"] == 300).all() and (wide["image_height"] == 200).all()
    assert (wide[["x1", "x2"]].to_numpy() <= 300).all() and (
        wide[["y1", "y2"]].to_numpy() <= 200
    ).all()
    # resized to 100 px wide: boxes were scaled back up, so some exceed the resized frame
    assert wide["x2"].max() > 100
    for _, group in detections.groupby("image_id"):
        assert group["confidence"].is_monotonic_decreasing
        assert group["rank"].tolist() == list(range(len(group)))
    assert detections["object_id"].is_unique
    assert (detections["crop_width"] >= 1).all()
    table = schemas.pa.Table.from_pandas(detections, preserve_index=False)
    schemas.write_table(table, schemas.DETECTIONS, image_folder / "out.parquet")


def test_batched_detection_equals_the_predictor(random_detector, tmp_path):
    rng = np.random.default_rng(4)
    shapes = [(200, 300)] * 3 + [(300, 200)] * 2 + [(120, 500)]
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / f"im{i}.png"
        )
    manifest = _manifest(tmp_path)
    settings = detect_settings(
        max_side=400, imgsz=160, conf=1e-9, max_det=30, max_objects=30, batch_size=8
    )
    detector = BatchedDetector.for_model(random_detector, settings)
    assert detector is not None
    decoded = [
        images.resize_longest(images.open_rgb(p), settings.max_side)[0]
        for p in manifest["image_path"]
    ]
    found = detector.detect([detector.letterbox(im) for im in decoded])
    # the predictor on each group of same-shaped images (it pads mixed shapes to a square instead)
    by_shape = {}
    for i, im in enumerate(decoded):
        by_shape.setdefault(im.size, []).append(i)
    assert len(by_shape) == 3
    n_boxes = 0
    for members in by_shape.values():
        results = random_detector.predict(
            [decoded[i] for i in members],
            imgsz=settings.imgsz,
            conf=settings.conf,
            iou=settings.iou,
            max_det=settings.max_det,
            device="cpu",
            verbose=False,
        )
        for i, result in zip(members, results):
            expected = result.boxes.data
            assert found[i].shape == expected.shape
            torch.testing.assert_close(found[i][:, :4], expected[:, :4], atol=1e-3, rtol=1e-5)
            torch.testing.assert_close(found[i][:, 4], expected[:, 4], atol=1e-6, rtol=1e-5)
            assert torch.equal(found[i][:, 5], expected[:, 5])
            n_boxes += len(expected)
    assert n_boxes > 20
    # ... and the stage's rows are those boxes, mapped back to original pixels
    detections, _, _ = detect_images(
        manifest, UltralyticsDetector(random_detector, settings), settings, loader_workers=2
    )
    first = detections[detections["image_path"] == manifest["image_path"].iloc[0]]
    assert len(first) == len(found[0])


def test_crop_batch_agrees_with_open_clip_preprocessing(clip):
    assert (
        clip._tensor_steps is not None
    )  # open_clip's pipeline is recognised: the batched path runs
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (160, 200, 3), dtype=np.uint8)
    boxes = [
        (0, 0, 50, 30),
        (10.5, 20.2, 50.9, 150),
        (100, 40, 164, 104),
        (199.5, 159.5, 250, 170),
        (5, 5, 200, 160),
        (30, 60, 33, 61),
    ]
    pil = Image.fromarray(image)
    reference = torch.stack([clip.preprocess(images.crop(pil, box)) for box in boxes])
    batch = clip.crop_batch(image, boxes)
    assert batch.shape == reference.shape
    # roi_align's bilinear/box filter instead of PIL's bicubic: on noise, the hardest case, the inputs
    # differ by about 10 8-bit levels on average (unrelated crops by ~85); a crop of the model's own
    # size is copied as is; the edge pixels of a tiny crop blend with its neighbours outside the box
    levels = ((batch - reference).abs() * clip._std * 255).mean(dim=(1, 2, 3))
    assert float(levels[2]) < 1e-3
    assert float(levels.max()) < 30, levels
    fast = clip.encode_batch(batch)
    slow = clip.encode_images([images.crop(pil, box) for box in boxes])
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosine = (fast * slow).sum(axis=1)
    assert cosine.min() > 0.98, cosine


def test_crop_batch_device_ops_do_not_grow_with_the_crops(clip):
    from torch.profiler import ProfilerActivity, profile

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    counts = {}
    for n in (8, 64):
        corner = rng.uniform(0, [380, 280], size=(n, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(2, 150, size=(n, 2))], axis=1)
        clip.crop_batch(image, boxes)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            batch = clip.crop_batch(image, boxes)
        assert batch.shape[0] == n
        counts[n] = sum(
            1 for event in prof.events() if event.name.startswith(("aten::", "torchvision::"))
        )
    assert counts[8] == counts[64] > 0, counts


def test_crop_boxes_equal_crop_box_row_by_row():
    rng = np.random.default_rng(3)
    boxes = np.concatenate(
        [
            rng.uniform(-20, 120, size=(500, 4)),
            [[640 / 0.8, 1.0 - 1e-9, 3.0, 2.0 + 1e-7], [5, 5, 5, 5], [200, 200, 300, 300]],
        ]
    )
    expected = [images.crop_box(box, 100, 80) for box in boxes]
    assert images.crop_boxes(boxes, 100, 80).tolist() == [list(b) for b in expected]
    with pytest.raises(ValueError):
        images.crop_boxes([[0, 0, np.nan, 1]], 10, 10)
    with pytest.raises(ValueError):
        images.crop_boxes([[0, 0, 1, 1]], 0, 10)


def test_embeddings_cover_every_object_and_record_unreadable_images(
    random_detector, clip, image_folder
):
    settings = detect_settings(max_side=100, imgsz=96, conf=1e-9, max_det=30, max_objects=5)
    detections, _, _ = detect_images(
        _manifest(image_folder),
        UltralyticsDetector(random_detector, settings),
        settings,
        loader_workers=2,
    )
    (image_folder / "a" / "small.jpg").write_bytes(b"")  # changed after detection
    table = embed_objects(detections, clip, batch_size=3, loader_workers=2)
    frame = table.to_pandas()
    assert frame["object_id"].tolist() == detections["object_id"].tolist()
    small = detections["image_path"].str.endswith("small.jpg").to_numpy()
    assert frame.loc[small, "embedding"].isna().all()
    assert frame.loc[small, "error"].str.startswith("empty_file").all()
    vectors = np.stack(frame.loc[~small, "embedding"].to_numpy())
    assert vectors.shape[1] == clip.dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    image = Image.open(image_folder / "a" / "wide.png").convert("RGB")
    first = detections[~small].iloc[0]
    expected = clip.encode_images([images.crop(image, (first.x1, first.y1, first.x2, first.y2))])[0]
    assert float(vectors[0] @ expected) > 0.98


def test_is_target_is_target_matches_as_one_membership_test():
    from rare_objects.stages.targets import is_target, target_classes, target_matches

    targets = {"construction_vehicle": ["truck", "bus"], "trailer": ["truck"], "cow": []}
    names = pd.Series(["truck", "car", "bus", None, "cow", "trailer", "bicycle", ""])
    matches = target_matches(names, targets)
    np.testing.assert_array_equal(is_target(names, targets), matches.map(bool).to_numpy())
    for target in targets:
        np.testing.assert_array_equal(
            is_target(names, targets, target), matches.map(lambda ts, t=target: t in ts).to_numpy()
        )
    assert target_classes(targets)["trailer"] == {"trailer", "truck"}
    assert not is_target(names, {}).any()


def test_target_matches_column_is_target_matches_as_arrow_lists():
    from rare_objects.stages.targets import target_matches, target_matches_column

    targets = {"construction_vehicle": ["truck", "bus"], "trailer": ["truck"], "cow": []}
    names = pd.Series(["truck", "car", None, "bus", "cow", float("nan"), "truck", ""])
    column = target_matches_column(names, targets)
    assert str(column.dtype) == "list<item: string>[pyarrow]"
    assert column.tolist() == target_matches(names, targets).tolist()
    assert column.tolist()[:3] == [["construction_vehicle", "trailer"], [], []]
    assert target_matches_column(pd.Series([], dtype=object), targets).tolist() == []
    for dtype in ("str", "category", "string[pyarrow]"):  # as the tables are read back
        typed = target_matches_column(names.astype(dtype), targets).tolist()
        assert typed == target_matches(names, targets).tolist(), dtype


def test_target_matches_and_selection_reasons():
    targets = {
        "construction_vehicle": ["truck", "bus"],
        "trailer": ["truck"],
        "bicycle": ["bicycle"],
    }
    objects = pd.DataFrame(
        {
            "object_id": [f"o{i}" for i in range(6)],
            "class_name": ["truck", "car", "bicycle", "car", "car", "person"],
            "is_outlier": [False, True, False, True, True, False],
            "score_global": [1.0, 3.0, 1.1, 2.0, 2.5, 1.0],
            "image_id": ["i0", "i0", "i1", "i2", "i2", "i3"],
            "image_path": ["a/0.jpg", "a/0.jpg", "a/1.jpg", "a/2.jpg", "a/2.jpg", "a/3.jpg"],
            "confidence": [0.9] * 6,
            "x1": [0.0] * 6,
            "y1": [0.0] * 6,
            "x2": [5.0] * 6,
            "y2": [5.0] * 6,
        }
    )
    matrix = np.eye(6, 4, dtype=np.float32)
    matrix[3:5] = [0, 1, 0, 0]  # o3 and o4 duplicate o1's direction
    matrix[1] = [0, 1, 0, 0]
    settings = dict(
        targets=targets,
        include=["outliers", "targets"],
        vlm_for=["targets"],
        similarity_threshold=0.99,
        max_per_cluster=2,
        partitions=3,
        seed=0,
    )
    table = selection.select_objects(objects, matrix, **settings)
    assert table.loc[0, "target_matches"] == ["construction_vehicle", "trailer"]
    assert table["candidate"].tolist() == [True, True, True, True, True, False]
    # o1, o3, o4 are one cluster; the two most anomalous (o1: 3.0, o4: 2.5) are kept
    assert table["selected"].tolist() == [True, True, True, False, True, False]
    assert table.loc[5, "reason"] == "not_a_candidate"
    assert table["needs_vlm"].tolist() == [True, False, True, False, False, False]
    assert table.loc[~table["selected"], "caption_partition"].isna().all()
    chosen = table["selected"].to_numpy()
    expected = selection.caption_partition(objects["image_id"], 3)[chosen]
    assert (table.loc[chosen, "caption_partition"].to_numpy() == expected).all()
    # the same images under another root (another machine, another mount): the same jobs
    moved = objects.assign(image_path="/elsewhere/" + objects["image_path"])
    by_path = [selection.caption_partition(o["image_path"], 3) for o in (objects, moved)]
    assert (by_path[0] != by_path[1]).any()  # keyed by the path, the jobs would move
    again = selection.select_objects(moved, matrix, **settings)
    assert again["caption_partition"].equals(table["caption_partition"])

    # The rule reads only the candidates' embeddings, by object id, in file order: the same
    # table; a candidate without an embedding is an error that says so.
    asked = []

    def read_some(object_ids, drop=()):
        asked.append(list(object_ids))
        keep = [i for i in range(6) if f"o{i}" in set(object_ids) and f"o{i}" not in drop]
        return np.array([f"o{i}" for i in keep[::-1]], dtype=object), matrix[keep[::-1]]

    pd.testing.assert_frame_equal(selection.select_objects(objects, read_some, **settings), table)
    assert asked == [["o0", "o1", "o2", "o3", "o4"]]  # not o5, no candidate
    with pytest.raises(ValueError, match="1 candidate.*'o3'.*out of step"):
        selection.select_objects(objects, lambda ids: read_some(ids, drop={"o3"}), **settings)


def test_caption_partition_keeps_an_image_in_one_job():
    """Each image goes to one caption job (it is decoded once), by a hash of its id: an
    object's partition does not depend on the other rows, and the partitions are all used."""
    ids = pd.Series([sources.image_id_for(f"CAM_FRONT/frame-{i % 50:03d}.jpg") for i in range(500)])
    part = selection.caption_partition(ids, 4)
    assert part.dtype == np.int32
    assert (pd.Series(part).groupby(ids).nunique() == 1).all()
    assert set(part.tolist()) == {0, 1, 2, 3}
    assert (selection.caption_partition(ids[::-1], 4) == part[::-1]).all()
    assert (selection.caption_partition(ids.iloc[:7], 4) == part[:7]).all()
    digest = hashlib.sha1(sources.image_id_for("CAM_FRONT/frame-003.jpg").encode()).digest()
    assert part[3] == int.from_bytes(digest[:4], "little") % 4
    assert selection.caption_partition(pd.Series([None, ids[3]]), 4).tolist() == [0, part[3]]
    assert len(selection.caption_partition(pd.Series([], dtype=object), 4)) == 0
    for dtype in ("str", "category"):  # as the detections are read back
        assert (selection.caption_partition(ids.astype(dtype), 4) == part).all()


def test_statistics_and_json_fields(tmp_path):
    frame = pd.DataFrame(
        {
            "object_id": ["a-00", "a-01"],
            "image_id": ["a", "a"],
            "image_path": ["/d/a.jpg"] * 2,
            "sample_token": ["tok"] * 2,
            "camera": [None, None],
            "rank": [0, 1],
            "class_name": ["truck", "car"],
            "confidence": [0.9, 0.5],
            "x1": [1.0, 2.0],
            "y1": [1.0, 2.0],
            "x2": [5.0, 6.0],
            "y2": [5.0, 6.0],
        }
    )
    outliers = pd.DataFrame(
        {
            "object_id": ["a-00", "a-01"],
            "global_score": [-2.0, -1.0],
            "class_score": [None, None],
            "outlier_code": [1, 0],
            "is_outlier": [True, False],
        }
    )
    assembled = rows.assemble(frame, outliers, {"trailer": ["truck"]})
    records = list(rows.result_records(assembled, {}))
    assert [r["outlier_code"] for r in records] == [1, 0]
    assert records[0]["target_matches"] == ["trailer"] and records[0]["is_yolo_potential"] is True
    assert list(records[0])[:13] == RESULT_FIELDS
    with json_writers.JsonArrayWriter(tmp_path / "r.json") as writer:
        for record in records:
            writer.write(record)
    count = writer.count
    assert count == 2 and json.loads((tmp_path / "r.json").read_text()) == records
    counts = ObjectCounts()
    counts.add(assembled)
    stats = counts.statistics(2, 1, pd.DataFrame({"reason": ["truncated: x"]}), {"trailer": []})
    assert stats["total_objects"] == 2 and stats["outlier_count"] == 1
    assert stats["target_counts"] == {"trailer": 1}
    assert stats["rejected_by_reason"] == {"truncated": 1}


def test_per_object_files_follow_the_original_defaults():
    on = {
        "minimal_io": False,
        "save_crops": True,
        "save_descriptions": True,
        "save_probability_plots": True,
        "cleanup_temp_crops": True,
    }
    assert tree.per_object_file_switches(on, max_images=100)["save_crops"] is True
    assert not any(tree.per_object_file_switches(on, max_images=None).values())
    assert not any(
        tree.per_object_file_switches({**on, "minimal_io": True}, max_images=100).values()
    )
    assert (
        tree.per_object_file_switches({**on, "cleanup_temp_crops": False}, 5)[
            "keep_cropped_objects"
        ]
        is True
    )


def test_timing_summary(tmp_path):
    bench = tmp_path / "benchmarks"
    (bench / "detect").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for shard, seconds in [("a", 2.0), ("b", 3.0)]:
        (bench / "detect" / f"{shard}.tsv").write_text(
            header + f"{seconds}\t0:00:02\t100.5\t1\t1\t1\t0\t0\t0\t1\n"
        )
    (bench / "outliers.tsv").write_text(header + "1.5\t0:00:01\tNA\t1\t1\t1\t0\t0\t0\t1\n")
    summary = timing.summarise_benchmarks(sorted(map(str, bench.rglob("*.tsv"))), str(tmp_path))
    rows = summary.set_index("rule")
    assert rows.loc["detect", "jobs"] == 2 and rows.loc["detect", "total_s"] == 5.0
    text = timing.format_timing(summary)
    assert text.splitlines()[-1].split() == ["total", "3", "6.50"]
