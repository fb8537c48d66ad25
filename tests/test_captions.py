"""caption_objects: VLM captions for chosen crops, simple captions for the rest, failures recorded."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from rare_objects.io import images as imgs
from rare_objects.io.schemas import CAPTIONS, write_table
from rare_objects.stages.captions import all_failed, caption_objects, simple_caption

COLOURS = {
    "red": (220, 20, 20),
    "green": (20, 200, 20),
    "blue": (20, 20, 220),
    "yellow": (230, 230, 30),
}


def colour_name(image: Image.Image) -> str:
    rgb = np.median(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)
    return min(COLOURS, key=lambda k: np.abs(np.array(COLOURS[k]) - rgb).sum())


class ColourCaptioner:
    """Says the colour of each crop; fails for blue crops and answers '' for yellow ones."""

    backend = "fake"
    model_name = "colour-v1"

    def __init__(self):
        self.calls: list[int] = []

    def caption(self, images):
        self.calls.append(len(images))
        out = []
        for im in images:
            name = colour_name(im)
            if name == "blue":
                out.append(RuntimeError("the VLM choked on a blue crop"))
            elif name == "yellow":
                out.append("   ")
            else:
                out.append(f"a {name} object")
        return out


def scene(path, boxes_colours, size=(160, 100)):
    im = Image.new("RGB", size, (128, 128, 128))
    arr = np.asarray(im).copy()
    for (x1, y1, x2, y2), colour in boxes_colours:
        arr[y1:y2, x1:x2] = COLOURS[colour]
    Image.fromarray(arr).save(path, quality=95)
    return str(path)


@pytest.fixture
def objects(tmp_path):
    a = scene(
        tmp_path / "a.jpg",
        [((10, 10, 50, 40), "red"), ((60, 10, 100, 60), "green"), ((110, 20, 150, 90), "blue")],
    )
    b = scene(tmp_path / "b.jpg", [((5, 5, 45, 45), "green"), ((50, 50, 90, 90), "yellow")])
    missing = str(tmp_path / "gone.jpg")
    rows = [
        # object_id, image_path, bbox (inset from the painted box), class, conf, needs_vlm
        ("a-0", a, (12, 12, 48, 38), "car", 0.91, True),
        ("b-0", b, (7, 7, 43, 43), "construction_vehicle", 0.55, True),
        ("a-1", a, (62, 12, 98, 58), "truck", 0.8712, False),
        ("a-2", a, (112, 22, 148, 88), "bicycle", 0.42, True),
        ("x-0", missing, (0, 0, 10, 10), "trailer", 0.3, True),
        ("b-1", b, (52, 52, 88, 88), "motorcycle", 0.61, True),
        ("x-1", missing, (0, 0, 10, 10), "animal", 0.5, False),
        ("a-3", a, (62, 12, 98, 58), "bus", 0.77, True),
    ]
    frame = pd.DataFrame(
        rows, columns=["object_id", "image_path", "bbox", "class_name", "confidence", "needs_vlm"]
    )
    frame[["x1", "y1", "x2", "y2"]] = pd.DataFrame(frame.pop("bbox").tolist(), dtype="float32")
    return frame


def test_simple_caption_definition():
    assert (
        simple_caption("construction_vehicle", 0.8712)
        == "A construction vehicle detected by YOLO with confidence 0.87."
    )
    assert simple_caption("animal", 0.5) == "An animal detected by YOLO with confidence 0.50."
    assert (
        simple_caption("traffic_light", np.float32(0.996))
        == "A traffic light detected by YOLO with confidence 1.00."
    )


def test_caption_objects(objects, tmp_path):
    opened = []
    captioner = ColourCaptioner()
    lines = []
    out = caption_objects(
        objects,
        captioner,
        batch_size=2,
        log=lines.append,
        progress_every=3,
        open_image=lambda p: (opened.append(p), imgs.open_rgb(p))[1],
    )

    assert list(out.columns) == CAPTIONS.names
    assert out["object_id"].tolist() == objects["object_id"].tolist()  # input order
    by_id = out.set_index("object_id")

    assert by_id.loc["a-0", "description"] == "a red object"
    assert by_id.loc["a-3", "description"] == "a green object"
    assert by_id.loc["b-0", "description"] == "a green object"
    for oid in ("a-0", "a-3", "b-0", "a-2", "b-1", "x-0"):
        assert by_id.loc[oid, "caption_kind"] == "vlm"
        assert by_id.loc[oid, "backend"] == "fake" and by_id.loc[oid, "model"] == "colour-v1"

    # failures are on their rows, with null descriptions; the rest went on
    assert (
        pd.isna(by_id.loc["a-2", "description"])
        and "choked on a blue crop" in by_id.loc["a-2", "error"]
    )
    assert pd.isna(by_id.loc["b-1", "description"]) and "empty caption" in by_id.loc["b-1", "error"]
    assert (
        pd.isna(by_id.loc["x-0", "description"])
        and "could not be read" in by_id.loc["x-0", "error"]
    )

    # simple captions need no image, not even a readable one
    assert by_id.loc["a-1", "description"] == "A truck detected by YOLO with confidence 0.87."
    assert by_id.loc["x-1", "description"] == "An animal detected by YOLO with confidence 0.50."
    for oid in ("a-1", "x-1"):
        assert by_id.loc[oid, "caption_kind"] == "simple" and pd.isna(by_id.loc[oid, "error"])
        assert by_id.loc[oid, "backend"] == "simple" and pd.isna(by_id.loc[oid, "model"])

    # each image opened once, and only images with VLM objects
    assert sorted(opened) == sorted(
        {objects.loc[0, "image_path"], objects.loc[1, "image_path"], objects.loc[4, "image_path"]}
    )
    # crops go in batches of at most batch_size
    assert max(captioner.calls) <= 2 and sum(captioner.calls) == 5
    # progress lines and a summary
    assert any("captions: 3/8" in ln for ln in lines) or any("captions: 4/8" in ln for ln in lines)
    assert any("8/8" in ln for ln in lines)
    assert "3 failed" in lines[-1]

    assert not all_failed(out)
    write_table(
        pa.Table.from_pandas(out, preserve_index=False), CAPTIONS, tmp_path / "captions.parquet"
    )
    back = pd.read_parquet(tmp_path / "captions.parquet")
    assert back["description"].isna().sum() == 3 and back["model"].isna().sum() == 2


def test_all_failed_and_a_captioner_that_raises(objects, caplog):
    class Broken:
        backend, model_name = "broken", "none"

        def caption(self, images):
            raise ConnectionError("server down")

    caplog.set_level(logging.INFO)
    out = caption_objects(objects, Broken(), batch_size=4)
    vlm = out[out["caption_kind"] == "vlm"]
    assert vlm["description"].isna().all()
    assert vlm["error"].notna().all()
    assert (out.loc[out["caption_kind"] == "simple", "description"].notna()).all()
    assert all_failed(out)
    assert "captions: done" in caplog.text  # default log: the rare_objects logger


def test_no_backend_gives_simple_captions_only(objects):
    out = caption_objects(objects, None, batch_size=4)
    assert (out["caption_kind"] == "simple").all()
    assert out["error"].isna().all()
    assert not all_failed(out)
    assert not all_failed(caption_objects(objects.iloc[:0], None))


def test_missing_columns_are_an_error(objects):
    with pytest.raises(ValueError, match="needs_vlm"):
        caption_objects(objects.drop(columns=["needs_vlm"]), ColourCaptioner())


def test_read_partition_reads_the_partitions_selected_rows_in_order(tmp_path):
    from rare_objects.io.schemas import SELECTION
    from rare_objects.stages.captions import REQUIRED_COLUMNS, read_partition

    rng = np.random.default_rng(2)
    n = 500
    selected = rng.random(n) < 0.6
    frame = pd.DataFrame(
        {
            "object_id": [f"obj-{i:04d}" for i in rng.permutation(n)],
            "class_name": rng.choice(["car", "truck", "trailer"], n),
            "is_outlier": rng.random(n) < 0.1,
            "target_matches": [[] for _ in range(n)],
            "is_yolo_potential": False,
            "candidate": selected,
            "cluster_id": pd.array([None] * n, dtype="Int64"),
            "selected": selected,
            "reason": "test",
            "needs_vlm": rng.random(n) < 0.5,
            "caption_partition": pd.array(
                np.where(selected, rng.integers(0, 3, n), 0), dtype="Int32"
            ),
            "image_path": [f"/images/{i % 40}.jpg" for i in range(n)],
            "confidence": rng.random(n),
            "x1": 1.0,
            "y1": 2.0,
            "x2": 30.0,
            "y2": 40.0,
            "priority": rng.random(n),
        }
    )
    frame.loc[~frame["selected"], "caption_partition"] = pd.NA
    path = tmp_path / "selection.parquet"
    write_table(frame, SELECTION, path, row_group_size=64)  # several row groups
    whole = pd.read_parquet(path)
    for part in range(3):
        expected = whole[whole["selected"] & (whole["caption_partition"] == part)]
        got = read_partition(path, part)
        assert list(got.columns) == REQUIRED_COLUMNS
        pd.testing.assert_frame_equal(got, expected[REQUIRED_COLUMNS].reset_index(drop=True))
        assert len(got) > 50
    assert len(read_partition(path, 7)) == 0
