"""The COCO writer of the export: loads with pycocotools and matches detection_results.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from rare_objects.export import coco
from tests.test_export import streaming_export, tree_contents, write_inputs


def run_export(detection_paths, paths, out, writers=()):
    return streaming_export(detection_paths, paths, out, extra_writers=writers)


@pytest.fixture
def inputs(tmp_path):
    return write_inputs(tmp_path / "in", n_shards=4, images_per_shard=5)


# Which detection_results records each object set holds, written out here
# independently of the writer's own test.
IN_SET = {
    "selected": lambda r: r["selected"] is True,
    "outliers": lambda r: r["is_outlier"],
    "final_outliers": lambda r: r["is_final_outlier"] is True,
    "targets": lambda r: len(r["target_matches"]) > 0,
    "all": lambda r: True,
}


@pytest.mark.parametrize(
    "objects",
    [
        ["selected"],
        ["outliers"],
        ["final_outliers"],
        ["targets"],
        ["all"],
        ["final_outliers", "targets"],
    ],
)
def test_coco_file_loads_with_pycocotools_and_matches_detection_results(tmp_path, inputs, objects):
    detection_paths, paths = inputs
    out = tmp_path / "out"
    image_root = tmp_path / "in" / "images"
    writer = coco.CocoWriter(out / "coco.json", objects=objects, data_root=image_root)
    run_export(detection_paths, paths, out, [writer])

    results = json.loads((out / "detection_results.json").read_text())
    expected = {r["object_id"]: r for r in results if any(IN_SET[o](r) for o in objects)}
    assert expected and len(expected) < len(results) or objects == ["all"]
    dataset = COCO(str(out / "coco.json"))
    annotations = dataset.loadAnns(dataset.getAnnIds())
    assert len(annotations) == len(expected) == writer.n_annotations
    assert {a["object_id"] for a in annotations} == set(expected)
    for annotation in annotations:
        record = expected[annotation["object_id"]]
        x1, y1, x2, y2 = record["bbox"]
        np.testing.assert_allclose(annotation["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.006)
        assert annotation["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.05)
        assert annotation["iscrowd"] == 0
        assert annotation["score"] == record["confidence"]
        assert dataset.loadCats(annotation["category_id"])[0]["name"] == record["class_name"]
        for field, source in [
            ("outlier_code", "outlier_code"),
            ("global_score", "global_score"),
            ("class_score", "class_score"),
            ("selected", "selected"),
            ("selection_reason", "selection_reason"),
            ("caption", "description"),
            ("top_concept", "top_concept"),
            ("is_final_outlier", "is_final_outlier"),
            ("target_matches", "target_matches"),
        ]:
            assert annotation[field] == record[source], field
        image = dataset.loadImgs(annotation["image_id"])[0]
        assert not Path(image["file_name"]).is_absolute()
        original = image_root / image["file_name"]
        assert str(original) == record["original_path"]
        with Image.open(original) as pixels:
            assert (image["width"], image["height"]) == pixels.size
    # One image entry per original image, however many of its objects are exported.
    assert (
        len(dataset.getImgIds())
        == len({r["original_path"] for r in expected.values()})
        == writer.n_images
    )


def test_categories_are_the_detectors_classes_seen_in_the_run(tmp_path, inputs):
    detection_paths, paths = inputs
    out = tmp_path / "out"
    run_export(
        detection_paths,
        paths,
        out,
        [coco.CocoWriter(out / "coco.json", objects=["final_outliers"])],
    )
    written = json.loads((out / "coco.json").read_text())
    results = json.loads((out / "detection_results.json").read_text())
    import pandas as pd

    detections = pd.concat([pd.read_parquet(p) for p in detection_paths])
    expected = sorted(
        {(int(i) + 1, n) for i, n in zip(detections["class_id"], detections["class_name"])}
    )
    assert [(c["id"], c["name"]) for c in written["categories"]] == expected
    # every class of the run, not only those of the (few) exported objects
    assert len(expected) > len({r["class_name"] for r in results if r["is_final_outlier"] is True})
    assert all(
        Path(i["file_name"]).is_absolute() for i in written["images"]
    )  # no data root: absolute paths


def test_categories_are_the_whole_vocabulary_when_given(tmp_path, inputs):
    detection_paths, paths = inputs
    out = tmp_path / "out"
    import pandas as pd

    detections = pd.concat([pd.read_parquet(p) for p in detection_paths])
    seen = {int(i): n for i, n in zip(detections["class_id"], detections["class_name"])}
    vocabulary = {**seen, max(seen) + 1: "never_predicted", max(seen) + 7: "car/van"}
    run_export(
        detection_paths, paths, out, [coco.CocoWriter(out / "coco.json", categories=vocabulary)]
    )
    written = json.loads((out / "coco.json").read_text())
    assert [(c["id"], c["name"]) for c in written["categories"]] == [
        (i + 1, n) for i, n in sorted(vocabulary.items())
    ]
    # a vocabulary that disagrees with the detections' names is an error, not a silent relabel
    wrong = {**vocabulary, min(seen): "renamed"}
    with pytest.raises(ValueError, match="named both"):
        run_export(
            detection_paths,
            paths,
            tmp_path / "wrong",
            [coco.CocoWriter(tmp_path / "wrong" / "c.json", categories=wrong)],
        )
    assert not (tmp_path / "wrong" / "c.json").exists()


def test_the_coco_writer_leaves_the_other_outputs_byte_identical(tmp_path, inputs):
    detection_paths, paths = inputs
    run_export(detection_paths, paths, tmp_path / "plain")
    with_coco = tmp_path / "with"
    run_export(
        detection_paths,
        paths,
        with_coco,
        [coco.CocoWriter(with_coco / "coco.json", objects=["all"])],
    )
    plain = tree_contents(tmp_path / "plain")
    other = {
        k: v.replace(b"/with/", b"/plain/")
        for k, v in tree_contents(with_coco).items()
        if k != "coco.json"
    }
    assert other == plain
    assert "detection_results.json" in plain and any(k.startswith("outliers/") for k in plain)


def test_an_image_outside_the_data_root_is_a_clear_error_and_leaves_no_file(tmp_path, inputs):
    detection_paths, paths = inputs
    out = tmp_path / "out"
    writer = coco.CocoWriter(out / "coco.json", objects=["all"], data_root=tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="not below the COCO data root"):
        run_export(detection_paths, paths, out, [writer])
    assert not (out / "coco.json").exists()
    assert not list(out.glob("*.tmp"))
    assert not (out / "detection_results.json").exists()


def test_no_exported_object_gives_a_valid_empty_file(tmp_path, inputs):
    detection_paths, paths = inputs
    out = tmp_path / "out"
    import pandas as pd

    selection = pd.read_parquet(paths["selection"])
    selection["selected"] = False
    selection.to_parquet(paths["selection"])
    run_export(detection_paths, paths, out, [coco.CocoWriter(out / "coco.json")])
    dataset = COCO(str(out / "coco.json"))
    assert dataset.getAnnIds() == [] and dataset.getImgIds() == []
    assert dataset.getCatIds()


def test_unknown_object_sets_and_clashing_class_names_are_refused(tmp_path, inputs):
    with pytest.raises(ValueError, match="not understood"):
        coco.CocoWriter(tmp_path / "c.json", objects=["rare"])
    detection_paths, paths = inputs
    import pandas as pd

    from rare_objects.io import schemas

    frame = pd.read_parquet(detection_paths[0])
    frame["class_id"] = 0  # two class names under one class id
    schemas.write_table(
        schemas.pa.Table.from_pandas(frame, preserve_index=False),
        schemas.DETECTIONS,
        detection_paths[0],
    )
    with pytest.raises(ValueError, match="named both"):
        run_export(
            detection_paths, paths, tmp_path / "out", [coco.CocoWriter(tmp_path / "out" / "c.json")]
        )
    assert not (tmp_path / "out" / "c.json").exists()
