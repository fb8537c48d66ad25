"""End to end: the caption rule through the ``openai`` backend, against a local server.

The caption jobs run as Snakemake scripts in their own processes (where the backend
forks its encoder processes) and talk to a fake OpenAI-compatible server in this
process. First the server is down: each caption job fails with a message that says
so, and nothing after the captions runs. Then the server is up and the same command
finishes: every object sent to the VLM has the server's caption, and the API key is
in no log.
"""

from __future__ import annotations

import re
import socket

import pandas as pd
import pytest

from tests.conftest import planned_jobs, run_snakemake, workflow_config
from tests.fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.workflow

SECRET = "sk-workflow-SECRET-83be1c"
KEY_ENV = "ROM_TEST_WORKFLOW_OPENAI_KEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_caption_jobs_through_an_openai_server_dead_then_alive(
    tmp_path, demo_scene_dir, demo_models, monkeypatch
):
    monkeypatch.setenv(KEY_ENV, SECRET)  # the snakemake child process inherits it
    port = free_port()
    workdir = tmp_path / "run"
    results = workdir / "results"
    config = workflow_config(
        results,
        demo_scene_dir,
        demo_models,
        captions={
            "backend": "openai",
            "partitions": 2,
            "max_new_tokens": 12,
            "vlm_for": ["targets", "outliers"],
            "openai": {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "model": "served-vlm",
                "api_key_env": KEY_ENV,
                "timeout_s": 5,
                "max_retries": 1,
                "backoff_s": 0.05,
                "concurrency": 8,
            },
        },
    )
    concepts = results / "tables" / "concepts.parquet"

    # Nobody listens on the port: every caption job fails and says why; no concepts.
    dead = run_snakemake(workdir, config, str(concepts), "--keep-going", check=False)
    assert dead.returncode != 0
    logs = sorted((results / "logs" / "caption").glob("part-*.log"))
    assert logs, dead.stderr[-3000:]
    for log in logs:
        text = log.read_text()
        assert re.search(r"every VLM caption of partition \d failed", text), text[-2000:]
        assert "connection error" in text
    assert not concepts.exists()
    assert not list((results / "tables" / "captions").glob("part-*.parquet"))

    # The server is up: the same command finishes.
    with FakeOpenAIServer(port=port, lifetime_s=900) as server:
        run_snakemake(workdir, config, str(concepts))
        requests = list(server.requests)
    captions = pd.concat(
        pd.read_parquet(p) for p in sorted((results / "tables" / "captions").glob("part-*.parquet"))
    )
    vlm = captions[captions["caption_kind"] == "vlm"]
    assert len(vlm) > 0 and vlm["error"].isna().all()
    assert (vlm["backend"] == "openai").all() and (vlm["model"] == "served-vlm").all()
    assert vlm["description"].str.fullmatch(r"object \d+x\d+").all()
    assert len(requests) == len(vlm)  # one request per object, none retried
    sent = sorted(f"object {r['width']}x{r['height']}" for r in requests)
    assert sent == sorted(vlm["description"])
    assert {r["authorization"] for r in requests} == {f"Bearer {SECRET}"}
    assert {r["model"] for r in requests} == {"served-vlm"}
    assert len(pd.read_parquet(concepts)) == len(captions)
    for path in results.rglob("*"):
        if path.is_file() and path.suffix in {".log", ".txt", ".json", ".tsv"}:
            assert SECRET not in path.read_text(errors="replace"), path

    # The client's concurrency and encoder processes change no request: no job reruns
    # (x-speed-only in the schema). The server's settings do (timeout_s decides which
    # captions come back as errors).
    def with_openai(**values):
        openai = {**config["captions"]["openai"], **values}
        return {**config, "captions": {**config["captions"], "openai": openai}}

    # (the run stopped at the concepts: the jobs after them are planned in every case)
    after_concepts = planned_jobs(workdir, config)
    assert "export_results" in after_concepts and "caption" not in after_concepts
    assert planned_jobs(workdir, with_openai(concurrency=3)) == after_concepts
    assert planned_jobs(workdir, with_openai(encode_processes=0)) == after_concepts
    planned = planned_jobs(workdir, with_openai(timeout_s=9))
    assert planned["caption"] == config["captions"]["partitions"]
    assert planned["analyse_concepts"] == 1


def _caption_only_run(workdir, base_url: str, n_images: int = 30, per_image: int = 5) -> dict:
    """Images, a selection table that sends every object to the VLM, and a configuration
    whose only job to run is the caption rule (``--allowed-rules caption``)."""
    from rare_objects.demo.caption_workload import write_caption_workload

    images, _ = write_caption_workload(workdir, n_images, per_image, image_size=(200, 60), seed=0)
    models = workdir / "no-demo-models"  # never built: only the caption rule may run
    return workflow_config(
        workdir / "results",
        images,
        models,
        captions={
            "backend": "openai",
            "partitions": 1,
            "vlm_for": ["all"],
            "openai": {"base_url": base_url, "model": "served-vlm", "concurrency": 2},
        },
    )


def test_a_killed_caption_job_reruns_to_the_table_of_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import time

    import yaml

    from tests.conftest import REPO, SNAKEMAKE

    part = "results/tables/captions/part-000.parquet"
    with FakeOpenAIServer(work_s=0.05, lifetime_s=600) as server:
        whole = tmp_path / "whole"
        config = _caption_only_run(whole, server.base_url)
        run_snakemake(whole, config, str(whole / part), "--allowed-rules", "caption")
        expected = pd.read_parquet(whole / part)
        assert len(expected) == 150 and expected["error"].isna().all()

        killed = tmp_path / "killed"
        config = _caption_only_run(killed, server.base_url)
        (killed / "run-config.yaml").write_text(yaml.safe_dump(config))
        command = [
            str(SNAKEMAKE),
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(killed),
            "--configfile",
            str(killed / "run-config.yaml"),
            "--cores",
            "2",
            str(killed / part),
            "--allowed-rules",
            "caption",
        ]
        job = subprocess.Popen(
            command,
            cwd=killed,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log = killed / "results" / "logs" / "caption" / "part-000.log"
        deadline = time.monotonic() + 300
        while not (log.exists() and "captions: 50/150" in log.read_text()):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended early"
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)  # the whole job, as a node failure would
        job.wait()
        assert not (killed / part).exists()  # nothing half-written is left as the output

        run_snakemake(killed, config, "--unlock")
        run_snakemake(killed, config, str(killed / part), "--allowed-rules", "caption")
        pd.testing.assert_frame_equal(pd.read_parquet(killed / part), expected)
