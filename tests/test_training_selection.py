"""The training-selection list: budget, mined samples, seeded fill, class counts; the
random-plus-mined mode: random share, mined share by tier, mined_short."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rare_objects.io import schemas
from rare_objects.runtime import config as cfg
from rare_objects.stages import training_selection as ts

TARGETS = {"trailer": ["truck"]}
CLASSES = ["car", "truck", "person", "bicycle"]
# The schema's defaults (mode mined_plus_random_fill) with a budget of a quarter.
SETTINGS = {**cfg.defaults()["training_selection"], "budget_fraction": 0.25}


def write_tables(root, n_scenes=4, samples_per_scene=10, cameras=3, seed=0):
    """Image and detection shards (one per scene) shaped like nuScenes: each
    sample token has ``cameras`` images. Some images have no objects, one
    sample's images are all rejected; outliers and final outliers planted on a
    few objects. Returns (image paths, detection paths, outliers, concepts, truth)."""
    rng = np.random.default_rng(seed)
    image_paths, detection_paths, objects = [], [], []
    for scene in range(n_scenes):
        images, detections = [], []
        for s in range(samples_per_scene):
            token = f"sample-{scene}-{s:02d}"
            for c in range(cameras):
                image_id = f"{scene}{s:02d}{c}"
                path = f"/data/scene-{scene}/CAM{c}/{token}.jpg"
                rejected = scene == 0 and s == 0
                n = 0 if rejected else int(rng.integers(0, 4))
                images.append(
                    {
                        "image_id": image_id,
                        "shard": f"scene-{scene}",
                        "image_path": path,
                        "sample_token": token,
                        "camera": f"CAM{c}",
                        "image_width": None if rejected else 1600,
                        "image_height": None if rejected else 900,
                        "n_objects": n,
                        "status": "rejected" if rejected else "ok",
                    }
                )
                for rank in range(n):
                    class_id = int(rng.integers(0, len(CLASSES)))
                    detections.append(
                        {
                            "object_id": f"{image_id}-{rank:02d}",
                            "image_id": image_id,
                            "shard": f"scene-{scene}",
                            "image_path": path,
                            "sample_token": token,
                            "camera": f"CAM{c}",
                            "rank": rank,
                            "class_id": class_id,
                            "class_name": CLASSES[class_id],
                            "confidence": 0.5,
                            "x1": 0.0,
                            "y1": 0.0,
                            "x2": 10.0,
                            "y2": 10.0,
                            "image_width": 1600,
                            "image_height": 900,
                            "crop_width": 10,
                            "crop_height": 10,
                        }
                    )
        for rows, schema, kind, paths in (
            (images, schemas.IMAGES, "images", image_paths),
            (detections, schemas.DETECTIONS, "detections", detection_paths),
        ):
            path = root / kind / f"scene-{scene}.parquet"
            table = pa.Table.from_pandas(
                pd.DataFrame(rows, columns=schema.names), preserve_index=False
            )
            schemas.write_table(table if rows else schema.empty_table(), schema, path)
            paths.append(path)
        objects.extend(detections)
    objects = pd.DataFrame(objects)
    is_outlier = rng.random(len(objects)) < 0.15
    outliers = pd.DataFrame({"object_id": objects["object_id"], "is_outlier": is_outlier})
    outliers.to_parquet(root / "outliers.parquet")
    captioned = objects["object_id"][is_outlier]
    final = np.zeros(len(captioned), dtype=bool)
    final[:4] = True
    pd.DataFrame({"object_id": captioned, "is_final_outlier": final}).to_parquet(
        root / "concepts.parquet"
    )
    truth = objects.assign(
        is_outlier=is_outlier, is_final_outlier=objects["object_id"].isin(set(captioned[final]))
    )
    return image_paths, detection_paths, root / "outliers.parquet", root / "concepts.parquet", truth


@pytest.fixture
def tables(tmp_path):
    return write_tables(tmp_path / "tables")


def select(tables, settings=SETTINGS, seed=7, kind="nuscenes"):
    images, detections, outliers, concepts, _ = tables
    return ts.training_selection(
        images, detections, outliers, concepts, kind, settings, TARGETS, seed
    )


def test_budget_is_honoured_and_every_mined_sample_is_in(tables):
    truth = tables[-1]
    pool = 4 * 10 - 1  # the sample whose images were all rejected is not in the pool
    for settings, budget in [(SETTINGS, pool // 4), ({**SETTINGS, "budget_count": 17}, 17)]:
        table, summary = select(tables, settings)
        mined = set(truth.loc[truth["is_final_outlier"], "sample_token"])
        assert 0 < len(mined) < budget
        assert len(table) == summary["selected_samples"] == budget == summary["budget"]
        assert summary["total_samples"] == pool and not summary["over_budget"]
        assert set(table.loc[table["reason"] == "mined", "sample"]) == mined
        assert mined <= set(table["sample"])
        assert table["sample"].is_unique
        fill = table[table["reason"] == "random_fill"]
        assert len(fill) == budget - len(mined) == summary["random_samples"]
        assert fill["mined_by"].isna().all() and (fill["mined_objects"] == 0).all()
        assert "sample-0-00" not in set(table["sample"])


def test_mined_kinds_outliers_and_targets(tables):
    truth = tables[-1]
    settings = {**SETTINGS, "mined": ["outliers", "targets"], "budget_fraction": 1.0}
    table, summary = select(tables, settings)
    by_sample = table.set_index("sample")
    outlier_samples = set(truth.loc[truth["is_outlier"], "sample_token"])
    target_samples = set(truth.loc[truth["class_name"] == "truck", "sample_token"])
    assert set(by_sample.index[by_sample["reason"] == "mined"]) == outlier_samples | target_samples
    for sample in outlier_samples & target_samples:
        assert by_sample.loc[sample, "mined_by"] == "outliers,targets"
    mined_objects = (
        truth[truth["is_outlier"] | (truth["class_name"] == "truck")].groupby("sample_token").size()
    )
    assert by_sample.loc[mined_objects.index, "mined_objects"].tolist() == mined_objects.tolist()
    assert len(table) == summary["total_samples"]  # a budget of 100 % takes the whole pool


def test_mined_samples_over_the_budget_are_all_kept_and_flagged(tables, caplog):
    truth = tables[-1]
    mined = set(truth.loc[truth["is_outlier"], "sample_token"])
    with caplog.at_level("WARNING"):
        table, summary = select(tables, {**SETTINGS, "mined": ["outliers"], "budget_fraction": 0.1})
    assert summary["over_budget"] and summary["budget"] < len(mined)
    assert set(table["sample"]) == mined and (table["reason"] == "mined").all()
    assert summary["random_samples"] == 0
    assert "exceed the budget" in caplog.text


def test_the_same_seed_gives_byte_identical_files_and_another_seed_another_fill(tables, tmp_path):
    files = []
    for run, seed in (("a", 7), ("b", 7), ("c", 8)):
        table, summary = select(tables, seed=seed)
        paths = [tmp_path / run / name for name in ("list.parquet", "list.csv", "summary.json")]
        ts.write_outputs(table, summary, *paths)
        files.append([p.read_bytes() for p in paths])
    assert files[0] == files[1]
    assert files[0][0] != files[2][0]
    again = pd.read_parquet(tmp_path / "a" / "list.parquet")
    assert (
        pq.read_schema(tmp_path / "a" / "list.parquet")
        .remove_metadata()
        .equals(schemas.TRAINING_SELECTION)
    )
    csv = pd.read_csv(tmp_path / "a" / "list.csv")
    assert csv["sample"].tolist() == again["sample"].tolist()


def test_class_counts_in_the_selection_against_the_whole_set(tables):
    truth = tables[-1]
    table, summary = select(tables)
    chosen = truth[truth["sample_token"].isin(set(table["sample"]))]
    expected = {
        name: {
            "selection": int((chosen["class_name"] == name).sum()),
            "all": int((truth["class_name"] == name).sum()),
        }
        for name in sorted(set(truth["class_name"]))
    }
    assert summary["class_counts"] == expected
    assert all(0 < c["selection"] < c["all"] for c in expected.values())
    json.dumps(summary)  # plain JSON types only


def test_a_folder_input_selects_image_paths(tables):
    truth = tables[-1]
    table, summary = select(tables, {**SETTINGS, "budget_count": 5}, kind="folder")
    assert summary["sample"] == "image_path"
    assert set(table.loc[table["reason"] == "mined", "sample"]) == set(
        truth.loc[truth["is_final_outlier"], "image_path"]
    )
    assert table["sample"].str.endswith(".jpg").all() and (table["n_images"] == 1).all()


def test_unknown_mined_kind_is_refused(tables):
    with pytest.raises(ValueError, match="not understood"):
        select(tables, {**SETTINGS, "mined": ["rare"]})


# --- mode random_plus_mined --------------------------------------------------------------

RANDOM_PLUS_MINED = {
    **SETTINGS,
    "mode": "random_plus_mined",
    "mined": ["final_outliers", "outliers", "targets"],
}


def hand_pool(tiers: dict[str, int], n_plain: int) -> pd.DataFrame:
    """A pool as mined_samples(tiers=True) gives it: ``tiers[t]`` mined samples of tier
    ``t`` (named ``<t>-NN``) and ``n_plain`` samples without mined objects, sorted by sample."""
    rows = [
        {"sample": f"{t}-{i:02d}", "mined_objects": 1, "mined_by": "x", "tier": ts.TIERS.index(t)}
        for t, n in tiers.items()
        for i in range(n)
    ]
    rows += [
        {"sample": f"plain-{i:03d}", "mined_objects": 0, "mined_by": None, "tier": 3}
        for i in range(n_plain)
    ]
    pool = pd.DataFrame(rows).assign(n_images=6, n_objects=2)
    return pool.sort_values("sample", ignore_index=True)


def of_tier(table, reason, tier):
    return set(
        table.loc[
            (table["reason"] == reason) & table["sample"].str.startswith(f"{tier}-"), "sample"
        ]
    )


def test_the_mined_share_is_taken_tier_by_tier():
    tiers = {"target_and_final_outlier": 2, "target": 3, "final_outlier": 4, "other": 5}
    pool = hand_pool(tiers, n_plain=26)
    # no random share: the mined share alone, 2 + 3 whole tiers and 2 of the 4 final outliers
    table, summary = ts.choose_random_plus_mined(pool, 0, 7, seed=3)
    assert (table["reason"] == "mined").all() and len(table) == 7
    assert of_tier(table, "mined", "target_and_final_outlier") == {
        "target_and_final_outlier-00",
        "target_and_final_outlier-01",
    }
    assert len(of_tier(table, "mined", "target")) == 3
    assert len(of_tier(table, "mined", "final_outlier")) == 2
    assert not of_tier(table, "mined", "other")
    # listed in priority order: tier by tier
    order = [ts.TIERS.index(s.rsplit("-", 1)[0]) for s in table["sample"]]
    assert order == sorted(order) == [0, 0, 1, 1, 1, 2, 2]
    assert summary["mined_by_tier"] == {
        "target_and_final_outlier": 2,
        "target": 3,
        "final_outlier": 2,
        "other": 0,
    }
    assert summary["mined_short"] == 0 and summary["random_samples"] == 0
    # a larger share reaches the last tier
    table, summary = ts.choose_random_plus_mined(pool, 0, 12, seed=3)
    assert summary["mined_by_tier"] == {
        "target_and_final_outlier": 2,
        "target": 3,
        "final_outlier": 4,
        "other": 3,
    }
    assert not set(table["sample"]) & set(pool.loc[pool["mined_objects"] == 0, "sample"])


def test_a_sample_drawn_at_random_is_not_counted_again_as_mined():
    # every sample mined (one tier): the mined share is exactly the samples not drawn
    pool = hand_pool({"final_outlier": 10}, n_plain=0)
    table, summary = ts.choose_random_plus_mined(pool, 4, 6, seed=0)
    drawn = set(table.loc[table["reason"] == "random", "sample"])
    mined = set(table.loc[table["reason"] == "mined", "sample"])
    assert len(drawn) == 4 and mined == set(pool["sample"]) - drawn
    assert table["sample"].is_unique and summary["mined_short"] == 0
    # randomly drawn mined samples keep what they hold, but under reason "random"
    assert (table.loc[table["reason"] == "random", "mined_objects"] == 1).all()
    # one more asked for than is left: one short, and nobody is drawn again
    table, summary = ts.choose_random_plus_mined(pool, 4, 7, seed=0)
    assert len(table) == 10 and table["sample"].is_unique
    assert summary["mined_samples"] == 6 and summary["mined_short"] == 1


def test_mined_short_leaves_the_rest_of_the_share_empty(caplog):
    pool = hand_pool({"target": 1, "other": 2}, n_plain=17)  # 20 samples, 3 mined
    table, summary = ts.choose_random_plus_mined(pool, 0, 10, seed=5)
    assert len(table) == 3 and (table["reason"] == "mined").all()
    assert summary["mined_share"] == 10 and summary["mined_samples"] == 3
    assert summary["mined_short"] == 7 and summary["selected_samples"] == 3
    assert table["sample"].tolist()[0] == "target-00"


def test_the_same_seed_gives_the_same_table_and_another_seed_another_random_share():
    pool = hand_pool({"target": 6, "final_outlier": 20}, n_plain=74)
    first, _ = ts.choose_random_plus_mined(pool, 10, 10, seed=11)
    again, _ = ts.choose_random_plus_mined(pool, 10, 10, seed=11)
    other, _ = ts.choose_random_plus_mined(pool, 10, 10, seed=12)
    pd.testing.assert_frame_equal(first, again)

    def share(table, reason):
        return set(table.loc[table["reason"] == reason, "sample"])

    assert share(first, "random") != share(other, "random")
    # within the final-outlier tier the order is the seed's, not the samples' order
    orders = [
        ts.choose_random_plus_mined(pool, 0, 26, seed=s)[0]["sample"].tolist()[6:] for s in range(3)
    ]
    assert all(sorted(o) == sorted(orders[0]) for o in orders)
    assert len({tuple(o) for o in orders}) == 3 and orders[0] != sorted(orders[0])


@pytest.mark.parametrize(
    "n, fraction, size",
    [(39, 0.1, 3), (40, 0.1, 4), (100, 0.29, 29), (7, 0.5, 3), (10, 0.0, 0), (10, 1.0, 10)],
)
def test_share_sizes_are_the_floor_of_fraction_times_pool(n, fraction, size):
    assert ts.share_size(n, fraction) == size


def planted_tables(root):
    """Two shards by hand, one camera per sample, every flag planted:
    s-a: a truck that is a final outlier (tier 1); s-b: a truck and another object that is a
    final outlier (tier 2: the conjunction is per object); s-c: a truck (tier 2);
    s-d: a final outlier (tier 3); s-e: an outlier only (tier 4); s-f, s-g: a car;
    s-h: no object. Returns (images, detections, outliers, concepts)."""
    objects = {  # sample -> [(class, outlier, final outlier)]
        "s-a": [("truck", True, True), ("car", False, False)],
        "s-b": [("truck", False, False), ("car", True, True)],
        "s-c": [("truck", False, False)],
        "s-d": [("person", True, True)],
        "s-e": [("car", True, False)],
        "s-f": [("car", False, False)],
        "s-g": [("car", False, False)],
        "s-h": [],
    }
    image_paths, detection_paths, flags = [], [], []
    for shard, samples in (
        ("one", ["s-a", "s-b", "s-c", "s-d"]),
        ("two", ["s-e", "s-f", "s-g", "s-h"]),
    ):
        images, detections = [], []
        for token in samples:
            image = {
                "image_id": token,
                "shard": shard,
                "image_path": f"/data/{token}.jpg",
                "sample_token": token,
                "camera": "CAM_FRONT",
                "image_width": 1600,
                "image_height": 900,
                "n_objects": len(objects[token]),
                "status": "ok",
            }
            images.append(image)
            for rank, (name, outlier, final) in enumerate(objects[token]):
                object_id = f"{token}-{rank}"
                detections.append(
                    {
                        **{
                            k: image[k]
                            for k in ("image_id", "shard", "image_path", "sample_token", "camera")
                        },
                        "object_id": object_id,
                        "rank": rank,
                        "class_id": CLASSES.index(name),
                        "class_name": name,
                        "confidence": 0.5,
                        "x1": 0.0,
                        "y1": 0.0,
                        "x2": 10.0,
                        "y2": 10.0,
                        "image_width": 1600,
                        "image_height": 900,
                        "crop_width": 10,
                        "crop_height": 10,
                    }
                )
                flags.append((object_id, outlier, final))
        for rows, schema, kind, paths in (
            (images, schemas.IMAGES, "images", image_paths),
            (detections, schemas.DETECTIONS, "detections", detection_paths),
        ):
            path = root / kind / f"{shard}.parquet"
            schemas.write_table(
                pa.Table.from_pandas(
                    pd.DataFrame(rows, columns=schema.names), preserve_index=False
                ),
                schema,
                path,
            )
            paths.append(path)
    ids, outlier, final = zip(*flags)
    pd.DataFrame({"object_id": ids, "is_outlier": outlier}).to_parquet(root / "outliers.parquet")
    captioned = [i for i, o in zip(ids, outlier) if o]
    pd.DataFrame(
        {"object_id": captioned, "is_final_outlier": [f for f, o in zip(final, outlier) if o]}
    ).to_parquet(root / "concepts.parquet")
    return image_paths, detection_paths, root / "outliers.parquet", root / "concepts.parquet"


EXPECTED_TIERS = {"s-a": 0, "s-b": 1, "s-c": 1, "s-d": 2, "s-e": 3}


def test_tiers_come_from_per_object_flags_in_the_streaming_pass(tmp_path):
    images, detections, outliers, concepts = planted_tables(tmp_path)
    final = ts.flagged_ids(concepts, "is_final_outlier")
    pool = ts.mined_samples(
        images,
        detections,
        "sample_token",
        ["final_outliers", "outliers", "targets"],
        TARGETS,
        ts.flagged_ids(outliers, "is_outlier"),
        final,
        tiers=True,
    ).set_index("sample")
    assert list(pool.index) == [f"s-{c}" for c in "abcdefgh"]
    mined = pool[pool["mined_objects"] > 0]
    assert mined["tier"].to_dict() == EXPECTED_TIERS
    # the tiers do not depend on which kinds make a sample mined
    only_final = ts.mined_samples(
        images, detections, "sample_token", ["final_outliers"], TARGETS, set(), final, tiers=True
    ).set_index("sample")
    assert only_final["tier"].to_dict() == pool["tier"].to_dict()
    assert set(only_final.index[only_final["mined_objects"] > 0]) == {"s-a", "s-b", "s-d"}


def test_random_plus_mined_from_the_stage_tables(tmp_path):
    tables = (*planted_tables(tmp_path), None)
    # no random share, a mined share of half the 8 samples: the tiers 1, 2, 2, then s-d
    settings = {**RANDOM_PLUS_MINED, "random_fraction": 0.0, "mined_fraction": 0.5}
    table, summary = select(tables, settings)
    assert table["sample"].tolist()[0] == "s-a"
    assert set(table["sample"].tolist()[1:3]) == {"s-b", "s-c"}
    assert table["sample"].tolist()[3] == "s-d" and (table["reason"] == "mined").all()
    assert summary["mined_by_tier"] == {
        "target_and_final_outlier": 1,
        "target": 2,
        "final_outlier": 1,
        "other": 0,
    }
    # a share of all 8: the 5 mined samples, 3 short (the 3 others are not mined)
    table, summary = select(tables, {**settings, "mined_fraction": 1.0})
    assert set(table["sample"]) == set(EXPECTED_TIERS) and summary["mined_short"] == 3


def test_random_plus_mined_summary_sizes_and_keys(tables, caplog):
    settings = {**RANDOM_PLUS_MINED, "random_fraction": 0.25, "mined_fraction": 0.1}
    with caplog.at_level("WARNING"):
        table, summary = select(tables, settings)
    pool = 4 * 10 - 1
    assert summary["random_share"] == summary["random_samples"] == 9  # floor(0.25 * 39)
    assert summary["mined_share"] == summary["mined_samples"] == 3  # floor(0.1 * 39)
    assert (table["reason"] == "random").sum() == 9 and (table["reason"] == "mined").sum() == 3
    assert summary["total_samples"] == pool and summary["budget"] == 12
    assert summary["selected_samples"] == len(table) == 12 and table["sample"].is_unique
    assert summary["mode"] == "random_plus_mined" and not summary["over_budget"]
    assert summary["mined_short"] == 0 and sum(summary["mined_by_tier"].values()) == 3
    assert "none added at random" not in caplog.text
    old_keys = set(select(tables)[1])
    assert old_keys | {"random_share", "mined_share", "mined_by_tier", "mined_short"} == set(
        summary
    )
    assert select(tables)[1]["mode"] == "mined_plus_random_fill"
    json.dumps(summary)
    # mined_short is logged
    with caplog.at_level("WARNING"):
        _, summary = select(tables, {**settings, "random_fraction": 1.0})
    assert summary["mined_short"] == 3 and "none added at random" in caplog.text


def test_a_mode_that_is_not_known_is_refused(tables):
    with pytest.raises(cfg.ConfigError, match="training_selection.mode"):
        cfg.validate({"training_selection": {"mode": "mined_only"}})
    with pytest.raises(ValueError, match="not understood"):
        select(tables, {**SETTINGS, "mode": "mined_only"})


def test_is_member_answers_as_isin_for_every_kind_of_id_collection():
    values = pd.Series(["o1", "o2", None, "o3", "o1", "x"], dtype=object)
    for ids in (
        {"o1", "o3"},
        ["o3", "o1", "o1"],  # a repeated id
        pd.Series(["o1", "o3"], dtype="str"),
        ts.id_index(["o1", "o3"]),
        (i for i in ("o1", "o3")),  # a generator
    ):
        index = ts.id_index(ids)
        assert index.is_unique
        expected = values.isin({"o1", "o3"}).to_numpy()
        np.testing.assert_array_equal(ts.is_member(values, index), expected)
        np.testing.assert_array_equal(ts.is_member(values.astype("str"), index), expected)
    assert not ts.is_member(values, ts.id_index(())).any()
    assert len(ts.is_member(values.iloc[:0], ts.id_index({"o1"}))) == 0
