"""The ``openai`` caption backend: an OpenAI-compatible chat-completions server (vLLM, Ollama, ...).

The model runs in the server, so a caption job needs no GPU and loads no local
file; it keeps ``captions.openai.concurrency`` requests in flight.
"""

from __future__ import annotations

import functools
import json
import logging
import multiprocessing
import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from rare_objects.backends.captioning import (
    Backend,
    CaptionError,
    fill_defaults,
    register,
    short_error,
)

log = logging.getLogger("rare_objects.backends.captioning.openai")

NAME = "openai"


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _request_bodies(body_parts: tuple[bytes, bytes], images: list) -> list[bytes | str | Exception]:
    """The request bodies of a chunk of crops; for a crop that cannot be encoded, its error text.

    Runs in an encoder process (or thread). An item is a crop or a ``CropSource``,
    cut here (its image decoded here, once for the chunk's consecutive crops of it);
    one that cannot be cut gives its ``CropUnavailable``. A body is the fixed JSON
    before the image's data URL, the URL, and the fixed JSON after it: base64 needs
    no JSON escaping, so only the URL is built per crop. Encoding errors travel back
    as text, so that an exception that cannot be pickled still reaches the caller.
    """
    from rare_objects.io.images import CropSource, CropUnavailable, cut_crops, to_data_url

    images = list(images)
    sources = [i for i, item in enumerate(images) if isinstance(item, CropSource)]
    for i, cut in zip(sources, cut_crops(images[i] for i in sources)):
        images[i] = cut
    before, after = body_parts
    bodies: list[bytes | str | Exception] = []
    for image in images:
        if isinstance(image, CropUnavailable):
            bodies.append(image)
            continue
        try:
            bodies.append(before + to_data_url(image).encode("ascii") + after)
        except Exception as exc:  # noqa: BLE001 - recorded for this crop, the others go on
            bodies.append(short_error(exc))
    return bodies


def _ready() -> bool:
    return True


def _encoder_pool(processes: int) -> Executor:
    """Where crops are encoded: ``processes`` forked worker processes, or one thread.

    The workers are forked at once, before this captioner starts its event-loop
    thread, so that no thread of its own is copied mid-work into a child. Fork,
    not spawn: a spawned child re-runs the parent's main script, which for a
    Snakemake rule is the rule's whole script.
    """
    if processes > 0 and "fork" in multiprocessing.get_all_start_methods():
        pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("fork"))
        pool.submit(_ready).result()
        return pool
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption-encode")


def _retry_after_s(headers) -> float | None:
    """A 429's ``Retry-After`` in seconds, when the server sent one."""
    try:
        return float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


# Crops handed to an encoder at once (see OpenAICaptioner.caption_stream): one hand-over
# per crop (a future, a lock and a wake-up) cost the loop's thread about as much as the
# HTTP request itself.
ENCODE_CHUNK = 32


class _LoopThread:
    """An asyncio event loop in a daemon thread, and the HTTP session that lives in it.

    Kept apart from the captioner so that a finaliser can close the session
    (and stop the thread) without holding the captioner alive.
    """

    def __init__(self, make_session):
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="caption-http", daemon=True
        )
        self.thread.start()
        # The session must be made in the loop that uses it (its connections bind to that loop).
        self.session = self.run(make_session())

    def run(self, coroutine, timeout: float | None = None):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            if threading.current_thread() is not self.thread and self.thread.is_alive():
                self.run(self.session.close(), timeout=10)
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        except Exception:  # noqa: BLE001 - closing at interpreter exit: nothing left to report to
            pass
        if not self.thread.is_alive():
            self.loop.close()


class OpenAICaptioner:
    """Captions from an OpenAI-compatible ``/chat/completions`` server (vLLM, Ollama, ...).

    Up to ``concurrency`` requests are in flight at once, all from one asyncio
    event loop (aiohttp), over a pool of as many keep-alive connections, so that
    each request reuses an open connection and a batching server (vLLM's
    ``max_num_seqs``) sees a full batch. Each crop goes as a base64 JPEG data URL
    in an ``image_url`` content part, encoded ahead of its request by
    ``encode_processes`` forked worker processes (which also decode the image and cut
    the crop when given a ``CropSource``), so that the event loop's
    thread, whose CPU caps the captions per second, does not take turns with
    the encoders for the GIL.

    Not the official ``openai`` client: against the same local server
    (``bench/captions.py``) its ``AsyncOpenAI`` spent 2.5-4.5 ms of client CPU
    per caption (request-parameter transforms, response models, httpx's
    connection pool scanning every connection per request; 1.2-1.5 ms with its
    aiohttp transport and raw responses), against about 0.4 ms here, and one
    event loop's CPU is what caps the captions per second at high concurrency.

    The API key is read from the environment variable named ``api_key_env`` and
    sent as ``Authorization: Bearer``; it is never logged, and it is replaced by
    ``***`` in every error message. Server errors (5xx), 429, time-outs
    (``timeout_s`` per request), connection errors and malformed answers are
    retried ``max_retries`` times with exponential backoff (``backoff_s``,
    doubled each time, capped at ``max_backoff_s``; a 429's ``Retry-After`` is
    honoured up to that cap); other 4xx answers are not retried.

    The event loop runs in a daemon thread of its own, so that :meth:`caption`
    can be called from any synchronous code; the session and its connections
    live until :meth:`close` (or until the captioner is garbage-collected).
    ``sleep`` replaces the backoff's ``asyncio.sleep`` (tests record delays with it).
    """

    backend = NAME
    takes_crop_sources = True
    """Items may be ``CropSource``: the encoders cut the crops (see :func:`_request_bodies`)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        timeout_s: float | None = None,
        max_retries: int | None = None,
        backoff_s: float | None = None,
        concurrency: int | None = None,
        encode_processes: int | None = None,
        max_tokens: int | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Any] | None = None,
    ):
        """An argument left None takes the schema's default: ``captions.openai``'s for
        the server's keys, ``captions.max_new_tokens`` for ``max_tokens``,
        ``captions.prompt`` for ``prompt``."""
        option = fill_defaults(
            NAME,
            api_key_env=api_key_env,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            concurrency=concurrency,
            encode_processes=encode_processes,
            max_new_tokens=max_tokens,
            prompt=prompt,
        )
        import yarl  # aiohttp's URL type: parsed once here, not once per request

        self.url = base_url.rstrip("/") + "/chat/completions"
        self._url = yarl.URL(self.url)
        self.model_name = model
        self.api_key_env = api_key_env = option["api_key_env"]
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            log.info("environment variable %s is not set: sending no API key", api_key_env)
        self.timeout_s = float(option["timeout_s"])
        self.max_retries = max(0, int(option["max_retries"]))
        self.backoff_s = float(option["backoff_s"])
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = max(1, int(option["concurrency"]))
        self.max_tokens = int(option["max_new_tokens"])
        self.prompt = option["prompt"]
        self.temperature = temperature
        self._sleep = sleep
        self._headers = {"Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._runner: _LoopThread | None = None
        self._start_lock = threading.Lock()
        self.encode_processes = max(0, int(option["encode_processes"]))
        self._body_parts = self._body_template()
        self._encoders: Executor | None = None
        self._encoders_started()  # now: before any thread of this captioner exists (see _encoder_pool)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICaptioner(url={self.url!r}, model={self.model_name!r}, api_key_env={self.api_key_env!r})"

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _cut(self, text: str, limit: int = 200) -> str:
        """``text`` for an error message: redacted before it is cut."""
        text = self._redact(text)
        return text if len(text) <= limit else text[:limit] + "..."

    # -- the session and its event loop --------------------------------------------------

    async def _make_session(self):
        import aiohttp

        # One keep-alive connection per request in flight; nothing else limits them.
        connector = aiohttp.TCPConnector(
            limit=self.concurrency, limit_per_host=self.concurrency, keepalive_timeout=60
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers=self._headers,
        )

    def _runner_started(self) -> _LoopThread:
        with self._start_lock:
            if self._runner is None:
                self._runner = _LoopThread(self._make_session)
                weakref.finalize(self, self._runner.close)
            return self._runner

    def _encoders_started(self) -> Executor:
        with self._start_lock:
            if self._encoders is None:
                self._encoders = _encoder_pool(self.encode_processes)
                weakref.finalize(self, self._encoders.shutdown, wait=False, cancel_futures=True)
            return self._encoders

    def close(self) -> None:
        """Close the connections, stop the event loop and the encoders (a later :meth:`caption`
        starts them again)."""
        with self._start_lock:
            runner, self._runner = self._runner, None
            encoders, self._encoders = self._encoders, None
        if runner is not None:
            runner.close()
        if encoders is not None:
            encoders.shutdown(wait=True, cancel_futures=True)

    # -- one request ------------------------------------------------------------------

    def _body_template(self) -> tuple[bytes, bytes]:
        """The request's JSON before and after the place where each crop's data URL goes."""
        marker = f"image-{uuid.uuid4().hex}"  # cannot be in the prompt or the model's name
        before, after = json.dumps(
            {
                "model": self.model_name,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": self.prompt},
                            {"type": "image_url", "image_url": {"url": marker}},
                        ],
                    }
                ],
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
        ).split(marker)
        return before.encode("utf-8"), after.encode("utf-8")

    async def _attempt(self, session, body: bytes) -> str:
        import asyncio

        import aiohttp

        try:
            async with session.post(self._url, data=body) as resp:
                status = resp.status
                raw = await resp.read()
                headers = resp.headers
        except asyncio.TimeoutError:
            raise _Retryable(f"timed out after {self.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise _Retryable(
                f"connection error: {type(exc).__name__}: {self._cut(str(exc))}"
            ) from None
        if status == 429 or status >= 500:
            retry_after = _retry_after_s(headers) if status == 429 else None
            raise _Retryable(
                f"HTTP {status}: {self._cut(raw.decode('utf-8', 'replace'))}", retry_after
            )
        if status >= 400:
            raise CaptionError(
                f"HTTP {status} (not retried): {self._cut(raw.decode('utf-8', 'replace'))}"
            )
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _Retryable(
                f"malformed answer ({type(exc).__name__}): "
                f"{self._cut(raw.decode('utf-8', 'replace'))}"
            ) from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _Retryable(f"malformed answer: content is {type(content).__name__}")
        return content.strip()

    async def _backoff(self, delay: float) -> None:
        import asyncio

        if self._sleep is None:
            await asyncio.sleep(delay)
            return
        waited = self._sleep(delay)
        if asyncio.iscoroutine(waited):
            await waited

    async def _request(self, session, index: int, body: bytes) -> str | Exception:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(session, body)
            except _Retryable as exc:
                message = self._redact(str(exc))
                if attempt + 1 >= attempts:
                    log.warning(
                        "item %s: giving up after %d attempts: %s", index, attempts, message
                    )
                    return CaptionError(f"failed after {attempts} attempts: {message}")
                delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
                if exc.retry_after is not None:
                    delay = min(self.max_backoff_s, max(delay, exc.retry_after))
                log.warning(
                    "item %s: attempt %d/%d failed (%s); retrying in %.2f s",
                    index,
                    attempt + 1,
                    attempts,
                    message,
                    delay,
                )
                await self._backoff(delay)
            except CaptionError as exc:
                message = self._redact(str(exc))
                log.warning("item %s: %s", index, message)
                return CaptionError(message)
            except Exception as exc:  # noqa: BLE001
                message = self._redact(short_error(exc))
                log.warning("item %s: unexpected error: %s", index, message)
                return CaptionError(message)
        raise AssertionError("unreachable")

    # -- the rolling feed ------------------------------------------------------------

    async def _serve_feed(self, session, feed, answers) -> None:
        # ``concurrency`` worker coroutines take (key, body) pairs from ``feed`` in the order
        # they were encoded, each sending one request at a time, and put (key, answer) on
        # ``answers`` for the calling thread; None ends a worker. No task or semaphore per
        # crop: their wake-ups cost the event loop's thread, which caps the requests per
        # second. The feed is kept ahead of the workers, so a worker whose answer came back
        # takes its next body at once, without waiting for a group of crops to finish.
        import asyncio

        async def worker() -> None:
            while True:
                item = await feed.get()
                if item is None:
                    return
                key, encoded = item
                if isinstance(encoded, Exception):  # the crop could not be cut
                    answer = encoded
                elif isinstance(encoded, str):
                    answer = CaptionError(self._redact(f"could not encode the crop: {encoded}"))
                else:
                    answer = await self._request(session, key, encoded)
                answers.put((key, answer))

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))

    def caption_stream(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
        """Captions of ``(key, image)`` pairs, as ``(key, caption or exception)`` pairs in the
        order the answers come back: one rolling feed for a whole job.

        ``concurrency`` requests stay in flight from the first crop to the last, with no
        barrier between groups of crops (a job of many groups would otherwise wait for the
        slowest request of each). ``items`` is read as the requests need it: at most
        2 x ``concurrency`` crops (and one encoder chunk) ahead of their answers, so a job
        holds that many crops whatever its size, and the next crops are cut meanwhile.
        Crops (or ``CropSource`` items, cut there) are JPEG-encoded by the encoder
        processes, ENCODE_CHUNK per hand-over.
        """
        import asyncio
        import queue

        encoders = self._encoders_started()  # before the event loop's thread (see _encoder_pool)
        runner = self._runner_started()
        loop = runner.loop
        answers: queue.SimpleQueue = queue.SimpleQueue()
        feed: asyncio.Queue = asyncio.Queue()
        serving = asyncio.run_coroutine_threadsafe(
            self._serve_feed(runner.session, feed, answers), loop
        )
        window = max(2 * self.concurrency, ENCODE_CHUNK)
        outstanding = 0

        def to_feed(keys: list, encoded) -> None:  # in the encoders' thread, when a chunk is done
            try:
                bodies = encoded.result()
            except Exception as exc:  # noqa: BLE001 - a broken encoder pool: every crop's error
                bodies = [short_error(exc)] * len(keys)
            loop.call_soon_threadsafe(_put_all, feed, list(zip(keys, bodies)))

        def next_answer():
            while True:
                try:
                    return answers.get(timeout=1.0)
                except queue.Empty:
                    if serving.done():  # the workers ended without answering: say why
                        serving.result()
                        raise CaptionError(
                            "the request workers stopped before every answer"
                        ) from None

        try:
            for chunk in _chunks(items, ENCODE_CHUNK):
                keys = [key for key, _ in chunk]
                encoded = encoders.submit(
                    _request_bodies, self._body_parts, [image for _, image in chunk]
                )
                encoded.add_done_callback(functools.partial(to_feed, keys))
                outstanding += len(chunk)
                while outstanding >= window:
                    yield next_answer()
                    outstanding -= 1
                while not answers.empty():
                    yield answers.get()
                    outstanding -= 1
            while outstanding:
                yield next_answer()
                outstanding -= 1
        finally:
            if outstanding:  # the caller stopped early: drop what is still queued or in flight
                serving.cancel()
            else:
                for _ in range(self.concurrency):
                    loop.call_soon_threadsafe(feed.put_nowait, None)
                serving.result()

    def caption(self, images: Sequence[Any]) -> list[str | Exception]:
        if not len(images):
            return []
        results: list[str | Exception | None] = [None] * len(images)
        for index, answer in self.caption_stream(enumerate(images)):
            results[index] = answer
        return results


def _put_all(feed, pairs) -> None:
    for pair in pairs:
        feed.put_nowait(pair)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _make(settings: dict, device: str | None) -> OpenAICaptioner:
    own = settings[NAME]
    return OpenAICaptioner(
        own["base_url"],
        own["model"],
        api_key_env=own["api_key_env"],
        timeout_s=own["timeout_s"],
        max_retries=own["max_retries"],
        backoff_s=own["backoff_s"],
        concurrency=own["concurrency"],
        encode_processes=own["encode_processes"],
        max_tokens=settings["max_new_tokens"],
        prompt=settings["prompt"],
    )


register(
    Backend(
        name=NAME,
        make=_make,
        # a caption job feeds it through caption_stream (one rolling feed); this is the size
        # of a caption() call's group where a caller batches instead
        batch_size=lambda settings: settings[NAME]["concurrency"] * 2,
    )
)
