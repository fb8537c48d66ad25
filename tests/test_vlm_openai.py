"""The OpenAI-compatible caption backend against a real local HTTP server with injected faults."""

from __future__ import annotations

import functools
import logging
import os
import socket

import pandas as pd
import pytest
from PIL import Image

from rare_objects.backends.captioning import CaptionError, make_captioner
from rare_objects.backends.captioning.openai import OpenAICaptioner
from tests.fake_openai_server import FakeOpenAIServer

SECRET = "sk-test-SECRET-4f9c2a7e1b"
KEY_ENV = "ROM_TEST_OPENAI_KEY"


def crop(width: int, height: int, shade: int = 120) -> Image.Image:
    return Image.new("RGB", (width, height), (shade, 255 - shade, 60))


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def test_faults_are_retried_recorded_and_the_key_never_leaks(api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 included
    faults = {
        41: [500],  # server error, then success
        42: ["timeout"],  # no answer within the client's time-out, then success
        43: ["malformed"],  # body is not JSON, then success
        44: [503, 503, 503, 503],  # fails every attempt: recorded as its error
        45: [401],  # not retried; the server echoes the key in its message
        46: [429, "no_choices"],  # rate limit, JSON without choices, then success
    }
    widths = list(range(40, 48))
    images = [crop(w, 20 + w % 7) for w in widths]
    with FakeOpenAIServer(faults=faults, hang_s=1.5) as server:
        captioner = OpenAICaptioner(
            server.base_url,
            "fake-vlm",
            api_key_env=KEY_ENV,
            timeout_s=0.5,
            max_retries=3,
            backoff_s=0.01,
            concurrency=3,
        )
        results = captioner.caption(images)

        # order kept, nothing lost
        assert len(results) == len(images)
        for w, im, result in zip(widths, images, results):
            if w in (44, 45):
                assert isinstance(result, CaptionError), (w, result)
            else:
                assert result == f"object {im.width}x{im.height}", (w, result)

        # retries happened as injected: attempts per image
        attempts = {w: len(server.requests_for(w)) for w in widths}
        assert attempts == {40: 1, 41: 2, 42: 2, 43: 2, 44: 4, 45: 1, 46: 3, 47: 1}
        assert "4 attempts" in str(results[widths.index(44)])
        assert "503" in str(results[widths.index(44)])
        assert "401" in str(results[widths.index(45)])

        # the key went to the server, as a bearer token, and the model name too
        assert {r["authorization"] for r in server.requests} == {f"Bearer {SECRET}"}
        assert {r["model"] for r in server.requests} == {"fake-vlm"}
        assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}

        # bounded concurrency
        assert 1 <= server.max_in_flight <= 3

    # ... and nowhere else: not in logs, errors or the captioner's repr
    assert "Incorrect API key provided" in str(results[widths.index(45)])
    assert "***" in str(results[widths.index(45)])
    assert "attempt" in caplog.text  # the retries were logged
    for text in (
        [caplog.text, repr(captioner), str(captioner)]
        + [str(r) for r in results]
        + [repr(r) for r in results]
    ):
        assert SECRET not in text
        assert SECRET[:12] not in text


def test_backoff_doubles_and_one_request_at_a_time(api_key):
    delays = []
    with FakeOpenAIServer(faults={30: [500, 500, 500], 31: [502]}) as server:
        captioner = OpenAICaptioner(
            server.base_url,
            "m",
            api_key_env=KEY_ENV,
            timeout_s=5,
            max_retries=3,
            backoff_s=0.02,
            concurrency=1,
            sleep=lambda s: delays.append(s),
        )
        results = captioner.caption([crop(30, 30), crop(31, 12), crop(32, 9)])
        assert results == ["object 30x30", "object 31x12", "object 32x9"]
        assert server.max_in_flight == 1
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.02])


def test_no_retries_when_max_retries_is_zero(api_key):
    with FakeOpenAIServer(faults={30: [500, 500]}) as server:
        captioner = OpenAICaptioner(
            server.base_url, "m", api_key_env=KEY_ENV, max_retries=0, backoff_s=0
        )
        (result,) = captioner.caption([crop(30, 30)])
        assert isinstance(result, CaptionError)
        assert len(server.requests) == 1


def test_without_a_key_no_authorization_header(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FakeOpenAIServer() as server:
        captioner = OpenAICaptioner(server.base_url, "m", api_key_env=KEY_ENV)
        assert captioner.caption([crop(33, 21)]) == ["object 33x21"]
        assert server.requests[0]["authorization"] is None


def test_connection_refused_is_retried_then_recorded(api_key):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    delays = []
    captioner = OpenAICaptioner(
        f"http://127.0.0.1:{port}/v1",
        "m",
        api_key_env=KEY_ENV,
        timeout_s=2,
        max_retries=2,
        backoff_s=0.01,
        sleep=delays.append,
    )
    results = captioner.caption([crop(20, 20), crop(21, 20)])
    assert all(isinstance(r, CaptionError) and "connection" in str(r) for r in results)
    assert len(delays) == 4  # 2 retries for each of the 2 crops
    assert captioner.caption([]) == []


def test_requests_fill_the_concurrency_and_reuse_their_connections(api_key):
    images = [crop(50 + i % 10, 20 + i // 10) for i in range(40)]
    with FakeOpenAIServer(faults={52: ["bad_json"]}, work_s=0.05) as server:
        captioner = OpenAICaptioner(
            server.base_url, "m", api_key_env=KEY_ENV, concurrency=8, backoff_s=0.01
        )
        first = captioner.caption(images)
        second = captioner.caption(images[:16])
        captioner.close()
        assert first == [
            f"object {im.width}x{im.height}" for im in images
        ]  # a JSON body that is not JSON: retried
        assert second == first[:16]
        assert server.max_in_flight == 8
        # 57 requests over at most 8 connections, kept open from one call to the next
        connections = {r["connection"] for r in server.requests}
        assert len(server.requests) == 57
        assert len(connections) <= 8
        # after close() a new call opens new connections
        assert captioner.caption(images[:2]) == first[:2]
        assert not {r["connection"] for r in server.requests[-2:]} & connections


@pytest.mark.parametrize("encode_processes", [2, 0])
def test_bodies_are_built_ahead_and_a_crop_that_cannot_be_encoded_is_recorded(
    api_key, encode_processes
):
    import psutil

    # JSON's special characters and a string like the body template's marker: the prompt
    # must reach the server exactly as given.
    prompt = 'Say "what" it is\\ \n \u00e9\u4e2d image-00 \u2028 {"url": "x"}'
    images = [crop(60 + i, 20 + i) for i in range(40)]
    images[7] = Image.new("RGB", (0, 5))  # a degenerate box: JPEG cannot write it
    before = {p.pid for p in psutil.Process().children()}
    with FakeOpenAIServer() as server:
        captioner = OpenAICaptioner(
            server.base_url,
            "m",
            api_key_env=KEY_ENV,
            concurrency=5,
            encode_processes=encode_processes,
            prompt=prompt,
            max_tokens=17,
        )
        encoders = [p for p in psutil.Process().children() if p.pid not in before]
        assert len(encoders) == encode_processes
        results = captioner.caption(images)
        assert isinstance(results[7], CaptionError)
        assert "could not encode the crop: ValueError: cannot write empty image" in str(results[7])
        others = [r for i, r in enumerate(results) if i != 7]
        assert others == [f"object {im.width}x{im.height}" for i, im in enumerate(images) if i != 7]
        assert len(server.requests) == 39  # the crop that failed sent nothing
        assert {r["prompt"] for r in server.requests} == {prompt}
        assert {(r["max_tokens"], r["temperature"]) for r in server.requests} == {(17, 0.0)}
        captioner.close()
        # close() stops the encoder processes; a later call starts them again
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in encoders)
        assert captioner.caption(images[:3]) == results[:3]
        captioner.close()


def test_default_concurrency_keeps_a_batching_server_busy():
    from rare_objects.runtime import config

    default = config.defaults()["captions"]["openai"]["concurrency"]
    assert default >= 32
    assert make_captioner("openai", {"openai": {}}).concurrency == default


def test_make_captioner_openai_from_workflow_settings(api_key):
    settings = {
        "prompt": "What is this?",
        "max_new_tokens": 20,
        "openai": {
            "base_url": "http://127.0.0.1:9/v1/",
            "model": "served-model",
            "api_key_env": KEY_ENV,
            "timeout_s": 7,
            "max_retries": 2,
            "backoff_s": 0.5,
            "concurrency": 2,
        },
    }
    c = make_captioner("openai", settings)
    assert isinstance(c, OpenAICaptioner)
    assert (
        c.url,
        c.model_name,
        c.timeout_s,
        c.max_retries,
        c.backoff_s,
        c.concurrency,
        c.max_tokens,
        c.prompt,
    ) == (
        "http://127.0.0.1:9/v1/chat/completions",
        "served-model",
        7.0,
        2,
        0.5,
        2,
        20,
        "What is this?",
    )
    assert c.backend == "openai"
    assert make_captioner("none", settings) is None
    with pytest.raises(ValueError):
        make_captioner("bogus", settings)


def test_one_slow_request_does_not_hold_up_the_feed(api_key, tmp_path):
    # caption_objects hands the whole partition to the captioner as one rolling feed: while
    # the first crop's request hangs, the workers go on with every other crop. (In groups of
    # 2 x concurrency crops, as before, the rest would wait for the slow request's group.)
    from rare_objects.io import images as imgs
    from rare_objects.stages.captions import caption_objects

    path = tmp_path / "frame.png"
    Image.new("RGB", (200, 60), (90, 140, 60)).save(path)
    widths = list(range(30, 90))
    objects = pd.DataFrame(
        {
            "object_id": [f"o{w}" for w in widths],
            "image_path": str(path),
            "class_name": "car",
            "confidence": 0.9,
            "needs_vlm": True,
            "x1": 0.0,
            "y1": 0.0,
            "x2": [float(w) for w in widths],
            "y2": 20.0,
        }
    )
    concurrency = 4
    with FakeOpenAIServer(faults={30: ["slow"]}, hang_s=3.0, work_s=0.01) as server:
        captioner = OpenAICaptioner(
            server.base_url, "m", api_key_env=KEY_ENV, concurrency=concurrency, timeout_s=30
        )
        out = caption_objects(
            objects, captioner, batch_size=2 * concurrency, open_image=imgs.open_rgb
        )
        answered = list(server.answered)
        captioner.close()
    assert out["description"].tolist() == [f"object {w}x20" for w in widths]  # input order
    assert sorted(answered) == widths
    # every other crop was answered before the slow one came back
    assert answered[-1] == 30 and len(answered) - 1 > 2 * concurrency


@pytest.mark.parametrize("encode_processes", [2, 0])
def test_encoders_cut_the_crops_and_the_table_equals_cutting_them_here(
    api_key, tmp_path, encode_processes
):
    # With the rule's opener (a partial, it pickles) the caption stage hands the captioner
    # CropSources and its encoders decode the images; with an opener that cannot travel to
    # another process (a lambda) the stage decodes them itself. Same table either way,
    # unreadable images and uncuttable boxes included, and nothing sent for those.
    from rare_objects.io import images as imgs
    from rare_objects.runtime import config
    from rare_objects.stages.captions import caption_objects

    frames = []
    for k, size in enumerate([(200, 60), (90, 120)]):
        path = tmp_path / f"frame-{k}.png"
        Image.new("RGB", size, (90 + 40 * k, 140, 60)).save(path)
        frames.append(str(path))
    gone = str(tmp_path / "gone.png")
    rows = []
    for i in range(30):
        path = [frames[0], frames[1], gone][i % 3]
        rows.append((f"o{i}", path, 0.0, 1.0, 10.0 + i, 30.0, i % 4 != 0))
    rows.append(("nan-box", frames[0], float("nan"), 0.0, 5.0, 5.0, True))
    objects = pd.DataFrame(
        rows, columns=["object_id", "image_path", "x1", "y1", "x2", "y2", "needs_vlm"]
    ).assign(class_name="car", confidence=0.9)
    rule_opener = imgs.opener(config.defaults()["images"])

    opened_by = tmp_path / "opened-by.txt"
    recording_opener = functools.partial(_open_recording_pid, opened_by)  # pickles, as the rule's
    tables, sent = [], []
    for opener in (rule_opener, lambda path: imgs.open_rgb(path), recording_opener):
        with FakeOpenAIServer() as server:
            captioner = OpenAICaptioner(
                server.base_url,
                "m",
                api_key_env=KEY_ENV,
                concurrency=4,
                encode_processes=encode_processes,
            )
            tables.append(caption_objects(objects, captioner, batch_size=8, open_image=opener))
            sent.append(sorted(r["width"] for r in server.requests))
            captioner.close()

    for other in (1, 2):
        pd.testing.assert_frame_equal(tables[0], tables[other])
        assert sent[0] == sent[other]
    # where the images were decoded: in the encoder processes, or in this one without them
    pids = set(opened_by.read_text().split())
    assert (str(os.getpid()) in pids) == (encode_processes == 0) and pids
    out = tables[0].set_index("object_id")
    for i in range(30):
        row = out.loc[f"o{i}"]
        if i % 4 == 0:
            assert row["caption_kind"] == "simple"
        elif i % 3 == 2:
            assert pd.isna(row["description"])
            assert (
                row["error"]
                == f"image could not be read: ImageRejected: {gone}: missing: no such file"
            )
        else:
            assert row["description"] == f"object {min(10 + i, [200, 90][i % 3])}x29", i
    assert out.loc["nan-box", "error"].startswith("crop failed: ValueError")
    readable = [i for i in range(30) if i % 4 and i % 3 != 2]
    assert sent[0] == sorted(min(10 + i, [200, 90][i % 3]) for i in readable)


def _open_recording_pid(record, path):
    from rare_objects.io import images as imgs

    with open(record, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    return imgs.open_rgb(path)
