"""Caption backends: a local transformers Qwen2-VL, or an OpenAI-compatible server.

Both expose the same interface::

    captioner.caption(images: list[PIL.Image]) -> list[str | Exception]
    captioner.backend      # "transformers" or "openai"
    captioner.model_name   # recorded in the captions table

``caption`` never raises for a single bad item: the answer for each input image,
in input order, is either its caption or the exception that stopped it.

:func:`make_captioner` builds either from the workflow's ``captions`` settings.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("rare_objects.backends.captioning")

DEFAULT_PROMPT = (
    "Describe this object from a driving camera in one sentence: "
    "what it is, its shape, colour and anything unusual."
)
DEFAULT_MIN_PIXELS = 56 * 56  # 3136, Qwen2-VL's default
DEFAULT_MAX_PIXELS = 28 * 28 * 512  # 401408: a crop never needs more than 512 visual tokens
DEFAULT_MAX_NEW_TOKENS = 64


class Captioner(Protocol):
    backend: str
    model_name: str

    def caption(self, images: Sequence[Any]) -> list[str | Exception]: ...


class CaptionError(RuntimeError):
    """A caption that could not be produced (the message never holds a secret)."""


# --------------------------------------------------------------------------- batch sizing


def fit_batch_size(
    free_bytes: int, per_item_bytes: int, max_batch: int, reserve_fraction: float = 0.2
) -> int:
    """Largest batch (1..max_batch) whose working memory fits in the free GPU memory.

    As the original did before generating: keep ``reserve_fraction`` of the free
    memory in reserve and divide the rest by the estimated memory per crop.
    """
    if per_item_bytes <= 0:
        return max(1, max_batch)
    usable = max(0.0, float(free_bytes) * (1.0 - reserve_fraction))
    return int(max(1, min(max_batch, usable // per_item_bytes)))


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


# --------------------------------------------------------------------------- transformers


def _resolve_device(device: str) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str):
    import torch

    names = {
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
    }
    if dtype not in (None, "", "auto"):
        if dtype not in names:
            raise ValueError(f"unknown dtype {dtype!r}; use auto, fp32, fp16 or bf16")
        return names[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class TransformersCaptioner:
    """Qwen2-VL / Qwen2.5-VL from a local ``save_pretrained`` folder.

    Batched greedy generation with left padding; bf16 (or fp16) on a GPU, fp32
    on the CPU. On a CUDA out-of-memory error the batch is halved and retried
    (down to one crop; a single crop that still does not fit is recorded as its
    error), and later batches keep the smaller size. With ``auto_batch`` on a GPU
    the batch size is first fitted to the free GPU memory (:func:`fit_batch_size`).
    """

    backend = "transformers"

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        auto_batch: bool = True,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt: str = DEFAULT_PROMPT,
        per_item_bytes: int | None = None,
        empty_cache_every: int = 100,
    ):
        import torch
        from transformers import AutoProcessor

        try:
            from transformers import AutoModelForImageTextToText as _AutoModel
        except ImportError:  # older transformers
            from transformers import AutoModelForVision2Seq as _AutoModel

        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"caption model folder not found: {self.model_dir}")
        self.model_name = self.model_dir.name
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = max(1, int(batch_size))
        self.auto_batch = auto_batch
        self.size = {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = prompt
        self.empty_cache_every = empty_cache_every
        self._since_cache_clear = 0

        self.processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.model = _AutoModel.from_pretrained(
            self.model_dir, local_files_only=True, dtype=self.dtype
        )
        self.model.to(self.device).eval()
        tok = self.processor.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        self.chat_text = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

        if per_item_bytes is None:
            per_item_bytes = self.estimate_per_item_bytes()
        self.per_item_bytes = per_item_bytes
        if self.auto_batch and self.device.startswith("cuda"):
            free, _total = torch.cuda.mem_get_info(torch.device(self.device))
            fitted = fit_batch_size(free, self.per_item_bytes, self.batch_size)
            if fitted != self.batch_size:
                log.info(
                    "batch size %d -> %d to fit %.1f GiB free GPU memory",
                    self.batch_size,
                    fitted,
                    free / 2**30,
                )
            self.batch_size = fitted

    def estimate_per_item_bytes(self) -> int:
        """Rough working memory of one crop during generate: KV cache plus vision activations.

        Deliberately generous (x4): the OOM halving catches what it misses.
        """
        cfg = self.model.config
        text = getattr(cfg, "text_config", cfg)
        vision = getattr(cfg, "vision_config", None)
        elt = 2 if self.dtype in _half_dtypes() else 4
        patches = self.size["longest_edge"] // (14 * 14)
        tokens = patches // 4 + 64 + self.max_new_tokens
        layers = getattr(text, "num_hidden_layers", 28)
        kv_heads = getattr(text, "num_key_value_heads", None) or getattr(
            text, "num_attention_heads", 16
        )
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv = 2 * layers * kv_heads * head_dim * tokens * elt
        act = tokens * text.hidden_size * elt * 16
        vis = patches * (getattr(vision, "embed_dim", 1280) if vision else 1280) * elt * 16
        return int(4 * (kv + act + vis))

    # -- generation -----------------------------------------------------------------

    def _generate(self, images: list) -> list[str]:
        """Captions of one batch (raises on any error, the OOM included)."""
        import torch

        inputs = self.processor(
            text=[self.chat_text] * len(images),
            images=images,
            padding=True,
            return_tensors="pt",
            size=self.size,
        )
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1] :]
        texts = self.processor.batch_decode(
            new, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [t.strip() for t in texts]

    def _release(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _caption_batch(self, images: list) -> list[str | Exception]:
        try:
            return list(self._generate(images))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a per-item result
            failure, oom = exc, _is_oom(exc)
        # Out of the except block: the traceback no longer pins the failed batch's tensors.
        if oom:
            self._release()
            if len(images) == 1:
                log.warning("out of GPU memory on a single crop; recorded as its error")
                return [CaptionError(f"out of GPU memory: {_short(failure)}")]
            half = len(images) // 2
            if half < self.batch_size:
                log.warning("out of GPU memory at batch %d; halving to %d", len(images), half)
                self.batch_size = half
            del failure
            return self._caption_batch(images[:half]) + self._caption_batch(images[half:])
        if len(images) == 1:
            return [failure]
        # Another error: isolate the bad crop(s) by captioning one at a time.
        log.warning("batch of %d failed (%s); retrying one by one", len(images), _short(failure))
        del failure
        return [r for im in images for r in self._caption_batch([im])]

    def caption(self, images: Sequence[Any]) -> list[str | Exception]:
        images = list(images)
        results: list[str | Exception] = []
        i = 0
        while i < len(images):
            n = self.batch_size  # may shrink during _caption_batch
            batch = images[i : i + n]
            results.extend(self._caption_batch(batch))
            i += len(batch)
            self._since_cache_clear += len(batch)
            if self.empty_cache_every and self._since_cache_clear >= self.empty_cache_every:
                self._release()  # as the original: clear the GPU cache every 100 crops
                self._since_cache_clear = 0
        return results


def _half_dtypes():
    import torch

    return (torch.float16, torch.bfloat16)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- OpenAI-compatible


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def _image_data_url(image) -> str:
    from rare_objects.io.images import to_data_url

    return to_data_url(image)


def _retry_after_s(headers) -> float | None:
    """A 429's ``Retry-After`` in seconds, when the server sent one."""
    try:
        return float(headers.get("Retry-After", ""))
    except (TypeError, ValueError):
        return None


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
    in an ``image_url`` content part.

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

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        concurrency: int = 64,
        max_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt: str = DEFAULT_PROMPT,
        temperature: float = 0.0,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Any] | None = None,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_name = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not self._api_key:
            log.info("environment variable %s is not set: sending no API key", api_key_env)
        self.timeout_s = float(timeout_s)
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.concurrency = max(1, int(concurrency))
        self.max_tokens = int(max_tokens)
        self.prompt = prompt
        self.temperature = temperature
        self._sleep = sleep
        self._headers = {"Content-Type": "application/json"}
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._runner: _LoopThread | None = None
        self._start_lock = threading.Lock()
        self._encoders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="caption-encode")

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
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )

    def _runner_started(self) -> _LoopThread:
        with self._start_lock:
            if self._runner is None:
                self._runner = _LoopThread(self._make_session)
                weakref.finalize(self, self._runner.close)
            return self._runner

    def close(self) -> None:
        """Close the connections and stop the event loop (a later :meth:`caption` starts them again)."""
        with self._start_lock:
            runner, self._runner = self._runner, None
        if runner is not None:
            runner.close()

    # -- one request ------------------------------------------------------------------

    def _body(self, image) -> bytes:
        return json.dumps(
            {
                "model": self.model_name,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": self.prompt},
                            {"type": "image_url", "image_url": {"url": _image_data_url(image)}},
                        ],
                    }
                ],
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
        ).encode("utf-8")

    async def _attempt(self, session, body: bytes) -> str:
        import asyncio

        import aiohttp

        try:
            async with session.post(self.url, data=body, headers=self._headers) as resp:
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

    async def _caption_one(self, session, index: int, image, ahead, slots) -> str | Exception:
        import asyncio

        # Up to ``concurrency`` crops are encoded ahead of their request, in worker threads
        # (PIL's JPEG encoder releases the GIL): when a request comes back, the next one
        # goes out at once, and the event loop's thread, which limits the requests per
        # second, only sends and receives.
        async with ahead:
            try:
                body = await asyncio.get_running_loop().run_in_executor(
                    self._encoders, self._body, image
                )
            except Exception as exc:  # noqa: BLE001
                return CaptionError(self._redact(f"could not encode the crop: {_short(exc)}"))
            async with slots:
                return await self._request(session, index, body)

    async def _request(self, session, index: int, body: bytes) -> str | Exception:
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(session, body)
            except _Retryable as exc:
                message = self._redact(str(exc))
                if attempt + 1 >= attempts:
                    log.warning(
                        "item %d: giving up after %d attempts: %s", index, attempts, message
                    )
                    return CaptionError(f"failed after {attempts} attempts: {message}")
                delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
                if exc.retry_after is not None:
                    delay = min(self.max_backoff_s, max(delay, exc.retry_after))
                log.warning(
                    "item %d: attempt %d/%d failed (%s); retrying in %.2f s",
                    index,
                    attempt + 1,
                    attempts,
                    message,
                    delay,
                )
                await self._backoff(delay)
            except CaptionError as exc:
                message = self._redact(str(exc))
                log.warning("item %d: %s", index, message)
                return CaptionError(message)
            except Exception as exc:  # noqa: BLE001
                message = self._redact(_short(exc))
                log.warning("item %d: unexpected error: %s", index, message)
                return CaptionError(message)
        raise AssertionError("unreachable")

    async def _caption_all(self, session, images: list) -> list[str | Exception]:
        import asyncio

        ahead, slots = asyncio.Semaphore(2 * self.concurrency), asyncio.Semaphore(self.concurrency)
        return list(
            await asyncio.gather(
                *(self._caption_one(session, i, im, ahead, slots) for i, im in enumerate(images))
            )
        )

    def caption(self, images: Sequence[Any]) -> list[str | Exception]:
        images = list(images)
        if not images:
            return []
        runner = self._runner_started()
        return runner.run(self._caption_all(runner.session, images))


# --------------------------------------------------------------------------- factory


def make_captioner(backend: str, settings: dict | None = None):
    """Build a captioner from the workflow's ``captions`` settings.

    ``settings`` holds the shared keys (``prompt``, ``max_new_tokens``, and
    ``device`` for transformers) and the backend's own section under its name,
    e.g. ``{"prompt": ..., "transformers": {"model": ..., "batch_size": 4}}``;
    a flat dict of the backend's keys works too. ``backend="none"`` gives None
    (simple captions only).
    """
    settings = dict(settings or {})
    own = settings.get(backend) if isinstance(settings.get(backend), dict) else {}
    flat = {k: v for k, v in settings.items() if not isinstance(v, dict)}
    merged = {**flat, **own}
    prompt = merged.get("prompt", DEFAULT_PROMPT)
    max_new = int(merged.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    if backend in (None, "", "none"):
        return None
    if backend == "transformers":
        model = merged.get("model") or merged.get("model_dir")
        if not model:
            raise ValueError("captions.transformers.model is required")
        return TransformersCaptioner(
            model,
            device=merged.get("device", "auto"),
            dtype=merged.get("dtype", "auto"),
            batch_size=int(merged.get("batch_size", 4)),
            auto_batch=bool(merged.get("auto_batch", True)),
            min_pixels=int(merged.get("min_pixels", DEFAULT_MIN_PIXELS)),
            max_pixels=int(merged.get("max_pixels", DEFAULT_MAX_PIXELS)),
            max_new_tokens=max_new,
            prompt=prompt,
        )
    if backend == "openai":
        return OpenAICaptioner(
            merged.get("base_url", "http://127.0.0.1:8000/v1"),
            merged.get("model", "Qwen/Qwen2-VL-7B-Instruct"),
            api_key_env=merged.get("api_key_env", "OPENAI_API_KEY"),
            timeout_s=float(merged.get("timeout_s", 60)),
            max_retries=int(merged.get("max_retries", 3)),
            backoff_s=float(merged.get("backoff_s", 1.0)),
            concurrency=int(merged.get("concurrency", 64)),
            max_tokens=int(merged.get("max_tokens", max_new)),
            prompt=prompt,
        )
    raise ValueError(f"unknown caption backend {backend!r}; use transformers, openai or none")
