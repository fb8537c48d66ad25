"""The hand-off to MMDetection3D: info files of both layouts cut down to the training selection."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pandas as pd
import pytest

from rare_objects.export import mmdet3d
from rare_objects.io import schemas
from rare_objects.runtime import config as cfg

TOKENS = [f"{i:032x}" for i in range(12)]


def old_record(i: int) -> dict:
    """A record as nuscenes_converter.py writes it (mmdet3d before v1.1): numpy arrays inside."""
    rng = np.random.default_rng(i)
    n = i % 3 + 1
    return {
        "lidar_path": f"./data/nuscenes/samples/LIDAR_TOP/{i}.pcd.bin",
        "num_features": 5,
        "token": TOKENS[i],
        "sweeps": [{"data_path": f"sweep-{i}", "sensor2lidar_rotation": rng.random((3, 3))}],
        "cams": {
            "CAM_FRONT": {
                "data_path": f"./data/nuscenes/samples/CAM_FRONT/{i}.jpg",
                "cam_intrinsic": rng.random((3, 3)),
                "timestamp": 1533151603512404 + i,
            }
        },
        "lidar2ego_translation": [0.9, 0.0, 1.8],
        "ego2global_rotation": [0.57, -0.0, 0.01, -0.8],
        "timestamp": 1533151603547590 + i,
        "gt_boxes": rng.random((n, 7)),
        "gt_names": np.array(["car", "truck", "trailer"][:n]),
        "gt_velocity": rng.random((n, 2)),
        "num_lidar_pts": rng.integers(0, 100, n),
        "valid_flag": np.ones(n, dtype=bool),
    }


def new_record(i: int) -> dict:
    """A record as update_infos_to_v2.py writes it (v1.1+): sample_idx is the list position."""
    rng = np.random.default_rng(i)
    return {
        "sample_idx": i,
        "token": TOKENS[i],
        "timestamp": 1533151603.54759 + i,
        "ego2global": rng.random((4, 4)).tolist(),
        "images": {
            "CAM_FRONT": {
                "img_path": f"{i}.jpg",
                "cam2img": rng.random((3, 3)).tolist(),
                "sample_data_token": f"sd-{i}",
                "lidar2cam": rng.random((4, 4)).astype(np.float32),
            }
        },
        "lidar_points": {"num_pts_feats": 5, "lidar_path": f"{i}.pcd.bin"},
        "instances": [
            {"bbox_3d": rng.random(7).tolist(), "bbox_label": 0, "bbox_label_3d": 0},
            {"bbox_3d": rng.random(7).tolist(), "bbox_label": 1, "num_lidar_pts": np.int64(4)},
        ],
        "cam_instances": {"CAM_FRONT": []},
    }


def info_file(layout: str, n: int = 10) -> dict:
    if layout == "data_list":
        return {
            "metainfo": {
                "categories": {"car": 0, "truck": 1, "trailer": 2},
                "dataset": "nuscenes",
                "version": "v1.0-trainval",
                "info_version": "1.1",
            },
            "data_list": [new_record(i) for i in range(n)],
        }
    return {"infos": [old_record(i) for i in range(n)], "metadata": {"version": "v1.0-trainval"}}


def deep_equal(a, b) -> bool:
    """Equal values, dict key order, types and numpy arrays (dtype and shape) included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


def write_selection(path, samples):
    table = pd.DataFrame(
        {
            "sample": samples,
            "reason": "mined",
            "mined_by": "final_outliers",
            "mined_objects": 1,
            "n_objects": 1,
            "n_images": 6,
        }
    )
    schemas.write_table(table, schemas.TRAINING_SELECTION, path)
    return path


def write_pickle(path, data, protocol=2):  # mmengine.dump writes protocol 2
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


@pytest.mark.parametrize("layout", ["data_list", "infos"])
def test_exactly_the_selected_records_are_kept_unchanged_and_in_order(tmp_path, layout):
    data = info_file(layout)
    source = write_pickle(tmp_path / "nuscenes_infos_train.pkl", data)
    # selection order differs from the file's, and two tokens are not in the file
    selected = [TOKENS[7], TOKENS[2], TOKENS[11], TOKENS[5], TOKENS[0], TOKENS[10]]
    tokens = mmdet3d.selected_tokens(write_selection(tmp_path / "sel.parquet", selected))
    assert tokens == selected
    out = tmp_path / "results" / "training_selection" / "nuscenes_infos_train.pkl"
    counts = mmdet3d.filter_info_file(source, tokens, out)
    assert counts == {
        "layout": layout,
        "kept": 4,
        "total": 10,
        "selected": 6,
        "missing": 2,
        "missing_example": TOKENS[11],
        "protocol": 2,
    }
    assert out.read_bytes()[:2] == b"\x80\x02"  # the input's protocol
    written = pickle.loads(out.read_bytes())
    header = "metainfo" if layout == "data_list" else "metadata"
    assert list(written) == list(data)  # top-level keys in the input's order
    assert deep_equal(written[header], data[header])
    expected = [data[layout][i] for i in (0, 2, 5, 7)]  # the file's order
    assert [r["token"] for r in written[layout]] == [TOKENS[i] for i in (0, 2, 5, 7)]
    assert deep_equal(written[layout], expected)
    assert not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize("layout", ["data_list", "infos"])
def test_kept_records_are_the_same_objects(layout):
    data = info_file(layout)
    before = copy.deepcopy(data)
    filtered, counts = mmdet3d.filter_infos(data, [TOKENS[3], TOKENS[1]])
    assert [r is data[layout][i] for r, i in zip(filtered[layout], (1, 3))] == [True, True]
    header = "metainfo" if layout == "data_list" else "metadata"
    assert filtered[header] is data[header]
    assert deep_equal(data, before)  # the input is left as it was
    assert counts["kept"] == 2 and counts["missing"] == 0 and counts["missing_example"] is None


def test_an_empty_selection_keeps_no_record_and_other_top_level_keys_stay(tmp_path):
    data = {"metainfo": {"dataset": "nuscenes"}, "data_list": [new_record(0)], "extra": [1, 2]}
    filtered, counts = mmdet3d.filter_infos(data, [])
    assert filtered == {"metainfo": {"dataset": "nuscenes"}, "data_list": [], "extra": [1, 2]}
    assert counts["kept"] == 0 and counts["total"] == 1 and counts["selected"] == 0


@pytest.mark.parametrize(
    "data, message",
    [
        ([new_record(0)], "not an MMDetection3D info file"),
        ({"data_list": [new_record(0)]}, "not an MMDetection3D info file"),
        ({"metadata": {}, "data_list": []}, "not an MMDetection3D info file"),
        (
            {"metainfo": {}, "data_list": [], "metadata": {}, "infos": []},
            "not an MMDetection3D info file",
        ),
        ({"metainfo": {}, "data_list": {"a": 1}}, "not a list of records"),
        (
            {"metainfo": {}, "data_list": [new_record(0), {"sample_idx": 1}]},
            "record 1 of 'data_list' has no 'token'",
        ),
        ({"metadata": {}, "infos": ["abc"]}, "record 0 of 'infos' has no 'token'"),
    ],
)
def test_a_malformed_info_file_stops_with_its_name(tmp_path, data, message):
    source = write_pickle(tmp_path / "broken_infos.pkl", data)
    out = tmp_path / "out" / "broken_infos.pkl"
    with pytest.raises(mmdet3d.InfoFileError, match=message) as error:
        mmdet3d.filter_info_file(source, [TOKENS[0]], out)
    assert str(source) in str(error.value)
    assert not out.exists()


def test_a_file_that_is_no_pickle_stops_with_its_name(tmp_path):
    source = tmp_path / "infos.pkl"
    source.write_text("metainfo: {}\n")
    with pytest.raises(mmdet3d.InfoFileError, match="not a readable pickle") as error:
        mmdet3d.filter_info_file(source, [], tmp_path / "out.pkl")
    assert str(source) in str(error.value)


@pytest.mark.parametrize("protocol, written", [(0, 4), (2, 2), (4, 4), (5, 5)])
def test_the_input_protocol_is_kept_when_it_can_be_told(tmp_path, protocol, written):
    source = write_pickle(tmp_path / "in.pkl", info_file("infos", 3), protocol=protocol)
    out = tmp_path / "out.pkl"
    counts = mmdet3d.filter_info_file(source, [TOKENS[1]], out)
    assert counts["protocol"] == written
    assert out.read_bytes()[:2] == bytes([0x80, written])
    assert deep_equal(pickle.loads(out.read_bytes())["infos"], [old_record(1)])


def test_output_names_are_safe_and_never_collide():
    outputs = mmdet3d.info_outputs(
        ["data/nuscenes/nuscenes_infos_train.pkl", "/abs/other/my infos (v2).pkl", "../x/.."]
    )
    names = list(outputs)
    assert names[0] == "nuscenes_infos_train.pkl"
    assert names[1].startswith("my_infos_v2_-") and names[1].endswith(".pkl")
    assert all("/" not in n and n not in (".", "..", "") for n in names)
    assert outputs[names[0]] == "data/nuscenes/nuscenes_infos_train.pkl"
    for paths in (
        ["a/nuscenes_infos_train.pkl", "b/nuscenes_infos_train.pkl"],
        ["a/infos.pkl", "a/infos.pkl"],
    ):
        with pytest.raises(ValueError, match="would both be written to"):
            mmdet3d.info_outputs(paths)


def test_the_configuration_check_refuses_a_folder_input_and_name_clashes():
    def problems(kind, infos):
        config = cfg.validate(
            {"input": {"kind": kind}, "training_selection": {"mmdet3d_infos": infos}}
        )
        return mmdet3d.config_problems(config)

    assert cfg.defaults()["training_selection"]["mmdet3d_infos"] == []
    assert problems("folder", []) == []
    assert problems("nuscenes", ["data/nuscenes_infos_train.pkl"]) == []
    (message,) = problems("folder", ["data/nuscenes_infos_train.pkl"])
    assert "training_selection.mmdet3d_infos: only for input.kind nuscenes" in message
    (message,) = problems("nuscenes", ["a/i.pkl", "b/i.pkl"])
    assert "training_selection.mmdet3d_infos" in message and "'a/i.pkl'" in message
    with pytest.raises(cfg.ConfigError, match="mmdet3d_infos"):
        cfg.validate({"training_selection": {"mmdet3d_infos": [""]}})


def test_the_log_line_counts_kept_and_missing():
    counts = {"layout": "infos", "kept": 4, "total": 10, "selected": 6, "missing": 2}
    line = mmdet3d.describe("x.pkl", {**counts, "missing_example": "abc"})
    assert "kept 4 of 10 records" in line and "2 selected sample tokens" in line and "abc" in line
    assert "not in the file" not in mmdet3d.describe(
        "x.pkl", {**counts, "missing": 0, "missing_example": None}
    )
