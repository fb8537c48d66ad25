"""The whole workflow with the models people use now: an open-vocabulary detector (OWLv2,
``detector.backend: transformers_zero_shot``) and a transformers image encoder (SigLIP,
``embedder.backend: transformers``) whose text tower also encodes the concepts.

Both are tiny random-weight models built here with ``save_pretrained`` (tokenizers built
locally, nothing downloaded) and loaded by the workflow through the registries, as real
folders would be. Random weights give random boxes and vectors, so the checks are on
what the workflow makes of them: every stage runs, the vocabulary is the prompts, every
object has an embedding of the model's size, and the results agree with each other.
"""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from rare_objects.runtime import config as config_checks
from tests.conftest import planned_jobs, run_snakemake, workflow_config

pytestmark = pytest.mark.workflow

PROMPTS = ["car", "truck", "trailer", "bicycle", "traffic cone"]
TARGETS = {"trailer": ["trailer", "truck"], "bicycle": ["bicycle"]}


@pytest.fixture(scope="module")
def open_vocabulary_run(tmp_path_factory, demo_models):
    from rare_objects.demo.scenes import generate_scenes
    from rare_objects.demo.tiny_transformers import build_tiny_siglip
    from rare_objects.demo.tiny_transformers_detectors import build_tiny_owlv2

    workdir = tmp_path_factory.mktemp("open-vocabulary")
    images = workdir / "images"
    generate_scenes(images, n_images=8, seed=5, folders=2)
    owlv2 = build_tiny_owlv2(workdir / "owlv2", seed=0, words=PROMPTS)
    siglip = build_tiny_siglip(workdir / "siglip", seed=0)
    config = workflow_config(
        workdir / "results",
        images,
        demo_models,
        detector={
            "backend": "transformers_zero_shot",
            "prompts": PROMPTS,
            "conf": 0.0,  # random weights: keep every box, up to max_det
            "max_det": 12,
            "transformers_zero_shot": {"model": str(owlv2)},
        },
        embedder={"backend": "transformers", "transformers": {"model": str(siglip)}},
        concepts={"text_encoder": "embedder"},
        outliers={"n_neighbors": 5, "contamination": 0.1, "min_samples": 10},
        targets=TARGETS,
    )
    run_snakemake(workdir, config)
    return workdir, config, owlv2, siglip


def test_every_stage_runs_with_the_open_vocabulary_detector_and_the_transformers_embedder(
    open_vocabulary_run,
):
    workdir, config, _, siglip = open_vocabulary_run
    results = workdir / "results"
    tables = results / "tables"
    vocabulary = json.loads((tables / "detector_classes.json").read_text())
    assert vocabulary == {str(i): prompt for i, prompt in enumerate(PROMPTS)}

    detections = pd.concat(
        pd.read_parquet(p) for p in sorted((tables / "detections").glob("*.parquet"))
    )
    assert len(detections) > 20
    assert set(detections["class_name"]) <= set(PROMPTS)
    assert (detections.groupby("image_id").size() <= 12).all()
    assert (detections["x2"] <= detections["image_width"]).all()

    embedding_files = sorted((tables / "embeddings").glob("*.parquet"))
    metadata = pq.read_schema(embedding_files[0]).metadata
    assert metadata[b"embedding_model"].decode() == f"transformers:siglip:{siglip.name}"
    embeddings = pd.concat(pd.read_parquet(p) for p in embedding_files)
    assert sorted(embeddings["object_id"]) == sorted(detections["object_id"])
    assert embeddings["error"].isna().all()
    dim = int(metadata[b"dim"])
    assert {len(v) for v in embeddings["embedding"]} == {dim}

    outliers = pd.read_parquet(tables / "outliers.parquet")
    assert len(outliers) == len(detections) and outliers["is_outlier"].any()
    stats = json.loads((results / "statistics.json").read_text())
    assert stats["total_objects"] == len(detections)
    assert stats["outlier_count"] == int(outliers["is_outlier"].sum())
    # the targets name prompts, so the objects of those classes match them
    expected = int(detections["class_name"].isin(["trailer", "truck"]).sum())
    trailer = json.loads((results / "trailer_results.json").read_text())
    assert len(trailer) == expected

    concepts = pd.read_parquet(tables / "concepts.parquet")
    concept_list = config_checks.defaults()["concepts"]["list"]
    analysed = concepts["top_concept"].dropna()  # the VLM captions (simple ones have none)
    assert len(analysed) > 0 and analysed.isin(concept_list).all()
    log = (results / "logs" / "analyse_concepts.log").read_text()
    assert f"transformers:siglip:{siglip.name}" in log  # the embedder's text tower
    for name in ("tsne.png", "explorer.html", "detection_results.json", "timing.txt"):
        assert (results / name).stat().st_size > 0


def test_new_weights_copied_into_the_embedder_folder_rerun_embed_not_detect(
    open_vocabulary_run, tmp_path
):
    from rare_objects.demo.tiny_transformers import build_tiny_siglip

    workdir, config, _, siglip = open_vocabulary_run
    assert planned_jobs(workdir, config) == {}
    retrained = build_tiny_siglip(tmp_path / "siglip", seed=1)
    folder_mtime = siglip.stat().st_mtime_ns
    # in place, as a copy of new weights would (the folder's own mtime does not change)
    (siglip / "model.safetensors").write_bytes((retrained / "model.safetensors").read_bytes())
    assert siglip.stat().st_mtime_ns == folder_mtime
    planned = planned_jobs(workdir, config)
    assert "detect" not in planned and planned["embed"] >= 1
    assert {"outliers", "analyse_concepts"} <= set(planned)
