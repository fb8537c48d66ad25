"""The report's galleries and tables, the explorer's map and page, without Snakemake."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rare_objects.io import images, schemas
from rare_objects.io.names import safe_name
from rare_objects.report import explorer, gallery, projection
from rare_objects.report.shown_objects import object_rows

TARGETS = {"trailer": ["truck"], "construction_vehicle": ["truck", "../../x"]}
CLASSES = ["car", "truck", "car/van", "../../x"]


def make_run(root: Path, n_images: int = 12, per_image: int = 8, seed: int = 0, dim: int = 16):
    """Detection shards over real JPEGs, an outlier table, captions, concepts and embeddings."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        path = root / "images" / f"d{i % 3}" / f"img{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path)
        for rank in range(per_image):
            x1, y1 = float(rng.uniform(0, 100)), float(rng.uniform(0, 50))
            rows.append(
                {
                    "object_id": f"im{i:03d}-{rank:02d}",
                    "image_id": f"im{i:03d}",
                    "shard": f"s{i // 4}",
                    "image_path": str(path),
                    "sample_token": f"tok{i}",
                    "camera": "CAM_FRONT",
                    "rank": rank,
                    "class_id": 0,
                    "class_name": CLASSES[int(rng.integers(0, len(CLASSES)))],
                    "confidence": float(rng.uniform(0.3, 1)),
                    "x1": x1,
                    "y1": y1,
                    "x2": x1 + 40,
                    "y2": y1 + 30,
                    "image_width": 160,
                    "image_height": 90,
                    "crop_width": 40,
                    "crop_height": 30,
                }
            )
    objects = pd.DataFrame(rows)
    detection_paths = []
    for shard, part in objects.groupby("shard"):
        path = root / "detections" / f"{shard}.parquet"
        schemas.write_table(
            pa.Table.from_pandas(part, preserve_index=False), schemas.DETECTIONS, path
        )
        detection_paths.append(path)
    n = len(objects)
    codes = rng.choice([0, 0, 0, 0, 1, 2, 3], size=n).astype(np.int8)
    outliers = pd.DataFrame(
        {
            "object_id": objects["object_id"],
            "class_name": objects["class_name"],
            "global_score": rng.normal(-1.2, 0.2, n).astype(np.float32),
            "class_score": np.where(rng.random(n) < 0.2, np.nan, rng.normal(-1.2, 0.2, n)).astype(
                np.float32
            ),
            "global_outlier": codes & 1 > 0,
            "class_outlier": codes & 2 > 0,
            "outlier_code": codes,
            "is_outlier": codes > 0,
        }
    )
    outliers["score_global"] = -outliers["global_score"]  # LOF's score, higher = more anomalous
    outliers["score_class"] = -outliers["class_score"]
    schemas.write_table(pa.Table.from_pandas(outliers), schemas.OUTLIERS, root / "outliers.parquet")
    captioned = outliers[outliers["is_outlier"]].head(15)
    captions = pd.DataFrame(
        {
            "object_id": captioned["object_id"],
            "description": [f"<b>thing</b> number {i}" for i in range(len(captioned))],
        }
    )
    concepts = pd.DataFrame(
        {
            "object_id": captioned["object_id"],
            "top_concept": rng.choice(["crane", "a/b", "car"], len(captioned)),
            "is_final_outlier": np.arange(len(captioned)) % 2 == 0,
        }
    )
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    embedding_paths = []
    for shard, part in objects.groupby("shard"):
        table = pa.table(
            {
                "object_id": part["object_id"].to_numpy(),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors[part.index].ravel()), dim
                ),
                "error": pa.nulls(len(part), pa.string()),
            }
        )
        path = root / "embeddings" / f"{shard}.parquet"
        schemas.write_table(table, schemas.embeddings_schema(dim), path)
        embedding_paths.append(path)
    return {
        "objects": objects,
        "detections": detection_paths,
        "outliers": root / "outliers.parquet",
        "outlier_table": outliers,
        "captions": captions,
        "concepts": concepts,
        "embeddings": embedding_paths,
    }


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def naive_items(run, max_per_group):
    """The same choice on the whole table at once."""
    outliers = run["outlier_table"].assign(
        score=lambda f: projection.anomaly_score(f["score_global"], f["score_class"])
    )
    parts = [
        outliers[outliers["is_outlier"]].assign(
            gallery="outliers_by_class", group=lambda f: f["class_name"]
        )
    ]
    final = run["concepts"][run["concepts"]["is_final_outlier"]]
    parts.append(
        outliers.merge(final[["object_id", "top_concept"]], on="object_id").assign(
            gallery="final_outliers_by_concept", group=lambda f: f["top_concept"]
        )
    )
    for target, near in TARGETS.items():
        parts.append(
            outliers[outliers["class_name"].isin([target, *near])].assign(
                gallery="targets", group=target
            )
        )
    frame = pd.concat(parts).sort_values(
        ["gallery", "group", "score", "object_id"], ascending=[True, True, False, True]
    )
    return frame.groupby(["gallery", "group"]).head(max_per_group)


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_choose_items_streams_to_the_same_capped_choice(run, batch_size):
    items = gallery.choose_items(
        run["outliers"], run["concepts"], TARGETS, 3, batch_size=batch_size
    )
    expected = naive_items(run, 3)
    got = items.sort_values(["gallery", "group", "rank"])
    assert list(got["object_id"]) == list(expected["object_id"])
    assert items.groupby(["gallery", "group"]).size().max() <= 3
    assert set(items["gallery"]) == set(gallery.GALLERIES)
    for _, group in items.groupby(["gallery", "group"]):  # most anomalous first
        assert list(group.sort_values("rank")["score"]) == sorted(group["score"], reverse=True)


def test_galleries_are_written_inside_their_folders_with_labels(run, tmp_path):
    items = gallery.choose_items(run["outliers"], run["concepts"], TARGETS, 4)
    out = tmp_path / "results" / "report"
    dirs = {name: out / name for name in gallery.GALLERIES}
    index = gallery.write_galleries(
        items,
        run["detections"],
        run["captions"],
        run["concepts"],
        dirs,
        out / "galleries.json",
        images.open_rgb,
        crop_size=32,
    )
    files = sorted(p for p in (tmp_path / "results").rglob("*") if p.is_file())
    assert all(p.resolve().is_relative_to(out.resolve()) for p in files)
    jpgs = [p for p in files if p.suffix == ".jpg"]
    assert len(jpgs) == len(items) == len(index)
    assert json.loads((out / "galleries.json").read_text()) == index
    groups = {entry["group"] for entry in index.values()}
    assert {"car/van", "../../x"} <= groups  # data values are kept as labels, not as paths
    by_id = run["objects"].set_index("object_id")
    for relative, entry in index.items():
        path = out / relative
        assert path.parent.name == safe_name(entry["group"])
        with Image.open(path) as crop:
            assert max(crop.size) <= 32
        labels = entry["labels"]
        assert labels["class"] == by_id.loc[entry["object_id"], "class_name"]
        assert labels["confidence"] == f"{by_id.loc[entry['object_id'], 'confidence']:.3f}"
        assert all(
            isinstance(v, str) for v in labels.values()
        )  # the report's page sorts labels as text
    captioned = {e["object_id"]: e for e in index.values() if e["labels"]["caption"]}
    assert captioned and all(
        e["labels"]["caption"].startswith("<b>thing</b>") for e in captioned.values()
    )
    finals = [e for e in index.values() if e["gallery"] == "final_outliers_by_concept"]
    assert finals and all(e["labels"]["top concept"] == e["group"] for e in finals)


def test_a_missing_original_is_left_out_not_fatal(run, tmp_path):
    items = gallery.choose_items(run["outliers"], run["concepts"], TARGETS, 50)
    gone = run["objects"]["image_path"].iloc[0]
    Path(gone).unlink()
    out = tmp_path / "r"
    index = gallery.write_galleries(
        items,
        run["detections"],
        run["captions"],
        run["concepts"],
        {name: out / name for name in gallery.GALLERIES},
        out / "g.json",
        images.open_rgb,
    )
    assert index and all(e["labels"]["image"] != gone for e in index.values())
    assert all((out / k).exists() for k in index)


def test_tables_escape_data_and_cap_rejects():
    rejects = pd.DataFrame(
        {
            "image_path": [f"a{i}.jpg" for i in range(5)] + ["<script>x</script>.jpg"],
            "sample_token": "t",
            "shard": "s",
            "stage": "detect",
            "reason": ["truncated: eof"] * 5 + ["not_an_image: <b>"],
        }
    )
    sections, note = gallery.rejected_frames(rejects, 2)
    page = gallery.html_tables("Rejected", sections, note)
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert sections[0][1].set_index("reason")["images"].to_dict() == {
        "not_an_image": 1,
        "truncated": 5,
    }
    assert len(sections[1][1]) == 3
    stats = gallery.statistics_frames(
        {"total_objects": 7, "class_distribution": {"car": 5, "bus": 2}}
    )
    assert [title for title, _ in stats] == ["Counts", "class_distribution"]


def test_choose_shown_keeps_every_mined_object_then_samples():
    reasons = np.array(
        ["sample"] * 900 + ["outlier"] * 50 + ["target"] * 40 + ["final_outlier"] * 10, dtype=object
    )
    scores = np.linspace(-2, -1, 1000)
    rows = projection.choose_shown(reasons, scores, 300, seed=3)
    assert len(rows) == 300 and np.all(np.diff(rows) > 0)
    assert set(np.flatnonzero(reasons != "sample")) <= set(rows)
    np.testing.assert_array_equal(rows, projection.choose_shown(reasons, scores, 300, seed=3))
    assert not np.array_equal(rows, projection.choose_shown(reasons, scores, 300, seed=4))
    np.testing.assert_array_equal(
        projection.choose_shown(reasons, scores, 5000, seed=0), np.arange(1000)
    )


def test_choose_shown_ranks_mined_objects_when_they_exceed_the_cap():
    reasons = np.array(
        ["target"] * 5 + ["outlier"] * 5 + ["final_outlier"] * 2 + ["sample"] * 3, dtype=object
    )
    scores = np.array([5, 4, 3, 2, 1, 1, 2, 3, 4, np.nan, 0, 0, 9, 9, 9], dtype=float)
    rows = projection.choose_shown(reasons, scores, 6, seed=0)
    # both final outliers, then the four most anomalous outliers (NaN last)
    assert set(rows) == {5, 6, 7, 8, 10, 11}


def test_read_embeddings_of_reads_only_the_wanted_rows(run):
    wanted = run["objects"]["object_id"].iloc[::7].tolist()
    ids, X = projection.read_embeddings_of(run["embeddings"], wanted + ["not-there"], batch_size=5)
    assert sorted(ids) == sorted(wanted) and X.shape == (len(wanted), 16)
    full = pd.concat([pq.read_table(p).to_pandas() for p in run["embeddings"]]).set_index(
        "object_id"
    )
    np.testing.assert_array_equal(X[0], np.asarray(full.loc[ids[0], "embedding"], dtype=np.float32))


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_project_maps_every_mined_object(run, method):
    settings = {
        "method": method,
        "max_points": 80,
        "perplexity": 30,
        "umap_n_neighbors": 15,
        "umap_min_dist": 0.1,
    }
    frame = projection.project(
        run["embeddings"],
        run["outlier_table"],
        run["concepts"],
        TARGETS,
        settings,
        seed=1,
        threads=1,
    )
    assert len(frame) == 80 and frame["object_id"].is_unique
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    assert (frame["method"] == method).all()
    outliers = run["outlier_table"]
    mined = outliers["is_outlier"] | outliers["class_name"].isin(["truck", "../../x"])
    assert int(mined.sum()) < 80
    assert set(outliers.loc[mined, "object_id"]) <= set(frame["object_id"])
    again = projection.project(
        run["embeddings"], outliers, run["concepts"], TARGETS, settings, seed=1, threads=1
    )
    pd.testing.assert_frame_equal(frame, again)


def test_projection_table_follows_its_schema(run, tmp_path):
    settings = {
        "method": "tsne",
        "max_points": 20,
        "perplexity": 5,
        "umap_n_neighbors": 15,
        "umap_min_dist": 0.1,
    }
    frame = projection.project(
        run["embeddings"], run["outlier_table"], None, TARGETS, settings, seed=0, threads=1
    )
    projection.write_projection(frame, tmp_path / "p.parquet", total_objects=96)
    projection.plot_projection(frame, tmp_path / "p.png", total_objects=96)
    schema = pq.read_schema(tmp_path / "p.parquet")
    assert schema.remove_metadata().equals(schemas.PROJECTION)
    assert schema.metadata[b"total_objects"] == b"96"
    assert (tmp_path / "p.png").stat().st_size > 5000


def test_explorer_page_and_sprites(run, tmp_path):
    outliers = run["outlier_table"]
    shown = outliers.sample(70, random_state=0).assign(
        shown_reason="sample",
        method="umap",
        x=np.arange(70, dtype=np.float32),
        y=np.ones(70, np.float32),
    )[["object_id", "class_name", "is_outlier", "shown_reason", "method", "x", "y"]]
    html = tmp_path / "results" / "explorer.html"
    html.parent.mkdir()
    n = explorer.build_explorer(
        shown,
        run["detections"],
        run["outliers"],
        run["captions"],
        run["concepts"],
        TARGETS,
        html,
        tmp_path / "results" / "explorer_files",
        images.open_rgb,
        total_objects=96,
        thumbnail_size=24,
        per_sheet=16,
    )
    assert n == 70
    sheets = sorted((tmp_path / "results" / "explorer_files").iterdir())
    assert [p.name for p in sheets] == [f"sheet-{i:04d}.jpg" for i in range(5)]  # ceil(70 / 16)
    with Image.open(sheets[0]) as sheet:
        assert sheet.size == (4 * 24, 4 * 24)
    page = html.read_text()
    assert "UMAP map: 70 of 96 objects" in page
    assert not re.search(
        r"""<script[^>]+src=|<link[^>]+href=["']https?:""", page
    )  # everything inlined
    assert "explorer_files/sheet-0000.jpg" in page


def test_explorer_frame_flags_and_fields(run):
    outliers = run["outlier_table"]
    shown = outliers.assign(shown_reason="sample", method="tsne", x=0.0, y=0.0)
    frame = explorer.explorer_frame(
        shown, run["detections"], run["outliers"], run["captions"], run["concepts"], TARGETS
    )
    assert list(frame["object_id"]) == list(outliers["object_id"])
    final_ids = set(run["concepts"].loc[run["concepts"]["is_final_outlier"], "object_id"])
    assert set(frame.loc[frame["flag"] == "final outlier", "object_id"]) == final_ids
    rest = frame[frame["flag"] != "final outlier"]
    assert (rest["flag"] == "outlier").sum() == rest["is_outlier"].sum()
    assert set(frame.loc[frame["flag"] == "target match", "class_name"]) <= {"truck", "../../x"}
    by_id = run["objects"].set_index("object_id")
    np.testing.assert_allclose(
        frame["confidence"], by_id.loc[frame["object_id"], "confidence"], rtol=1e-6
    )
    assert frame["caption"].notna().sum() == len(run["captions"])


def test_one_flag_precedence_for_the_map_and_the_explorer():
    from rare_objects.report.shown_objects import final_outlier_mask, first_flag

    final = [True, True, False, False, False]
    outlier = [True, False, True, False, False]
    target = [True, True, True, True, False]
    assert first_flag(final, outlier, target, explorer.FLAGS).tolist() == [
        "final outlier",
        "final outlier",
        "outlier",
        "target match",
        "other",
    ]
    reasons = projection.shown_reasons(final, outlier, target)
    assert reasons.dtype == object
    assert reasons.tolist() == ["final_outlier", "final_outlier", "outlier", "target", "sample"]
    concepts = pd.DataFrame({"object_id": ["a", "b", "c"], "is_final_outlier": [True, None, False]})
    mask = final_outlier_mask(concepts, ["c", "x", "a", "b"])
    assert mask.tolist() == [False, False, True, False]
    assert final_outlier_mask(None, ["a", "b"]).tolist() == [False, False]
    assert final_outlier_mask(concepts.iloc[:0], ["a"]).tolist() == [False]


def test_object_rows_streams_and_keeps_only_the_wanted(run):
    wanted = run["objects"]["object_id"].iloc[[3, 40, 77]].tolist()
    rows = object_rows(run["detections"], wanted, ["object_id", "image_path"])
    assert sorted(rows["object_id"]) == sorted(wanted)
    assert object_rows(run["detections"], [], ["object_id"]).empty
