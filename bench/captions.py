"""Caption throughput: the openai backend against a fixed-latency local server, and the transformers backend.

The openai part starts an OpenAI-compatible ``/v1/chat/completions`` server on
127.0.0.1 in a child process (asyncio, HTTP/1.1 keep-alive). It answers every
request after ``--latency-ms`` with a fixed caption, with at most
``--server-parallel`` requests being served at once (0: unlimited), like a
batching engine's ``max_num_seqs``. The caption backend (``make_captioner``,
the workflow's own settings path) then captions ``--requests-per-slot`` ×
concurrency crops at each ``--concurrency``. The baseline in the same run is
the ideal wall time, requests × latency / min(concurrency, server parallelism):
a client with no cost of its own. Printed: captions/s, ideal captions/s, the
ratio wall / ideal (target <= 1.10 at 64 and 256 with 200 ms), and the client's
CPU seconds per caption (this process and the backend's encoder processes; the
server is another process, not counted); the best of ``--repeats`` runs.

The transformers part captions ``--vlm-crops`` crops with the tiny demo VLM
(``--vlm PATH``; default: the test cache's) on the device it finds and prints
captions/s and the batch size the backend chose. ``--vlm qwen2-vl-2b`` builds
a real-size Qwen2-VL-2B configuration with random weights (meant for a GPU).

    python bench/captions.py [--latency-ms 200] [--concurrency 4 32 64 256] [--server-parallel 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "scripts"))

from _common import machine  # noqa: E402

CAPTION = "a small grey object on the road"
ANSWER = json.dumps(
    {
        "id": "cmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench-vlm",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": CAPTION},
            }
        ],
        "usage": {"prompt_tokens": 80, "completion_tokens": 8, "total_tokens": 88},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ANSWER)
) + ANSWER


# --------------------------------------------------------------------------- fixed-latency server


async def _serve(latency_s: float, parallel: int, ready, stop_after_s: float) -> None:
    slots = asyncio.Semaphore(parallel) if parallel > 0 else None

    async def answer_one() -> None:
        if slots is None:
            await asyncio.sleep(latency_s)
            return
        async with slots:
            await asyncio.sleep(latency_s)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                await answer_one()
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, backlog=4096)
    ready.put(server.sockets[0].getsockname()[1])
    async with server:
        await asyncio.sleep(stop_after_s)


def _server_main(latency_s: float, parallel: int, ready, stop_after_s: float) -> None:
    asyncio.run(_serve(latency_s, parallel, ready, stop_after_s))


class FixedLatencyServer:
    """The server above in a child process, so that its CPU time is not the client's."""

    def __init__(self, latency_s: float, parallel: int = 0, stop_after_s: float = 3600):
        ctx = mp.get_context("spawn")
        self._ready = ctx.Queue()
        self._proc = ctx.Process(
            target=_server_main, args=(latency_s, parallel, self._ready, stop_after_s), daemon=True
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def __enter__(self) -> str:
        self._proc.start()
        port = self._ready.get(timeout=60)
        return f"http://127.0.0.1:{port}/v1"

    def __exit__(self, *exc) -> None:
        self._proc.terminate()
        self._proc.join()


# --------------------------------------------------------------------------- benches


class OfficialClient:
    """The comparison: the official ``openai`` client (``AsyncOpenAI.chat.completions.create``), used
    as the backend uses its own client: one event loop, a semaphore, a pool sized to the concurrency."""

    def __init__(self, url: str, concurrency: int):
        import asyncio

        self.url, self.concurrency = url, concurrency
        self.loop = asyncio.new_event_loop()
        self.client = None

    async def _one(self, image, slots) -> str:
        from rare_objects.io.images import to_data_url

        async with slots:
            messages = [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Describe this object."},
                        {"type": "image_url", "image_url": {"url": to_data_url(image)}},
                    ],
                }
            ]
            answer = await self.client.chat.completions.create(
                model="bench-vlm", messages=messages, max_tokens=64, temperature=0.0
            )
            return answer.choices[0].message.content

    async def _all(self, images):
        import asyncio

        import httpx2
        import openai

        if self.client is None:
            limits = httpx2.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            )
            self.client = openai.AsyncOpenAI(
                base_url=self.url,
                api_key="bench",
                max_retries=0,
                http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=60),
            )
        slots = asyncio.Semaphore(self.concurrency)
        return await asyncio.gather(
            *(self._one(im, slots) for im in images), return_exceptions=True
        )

    def caption(self, images):
        return self.loop.run_until_complete(self._all(list(images)))

    def close(self):
        if self.client is not None:
            self.loop.run_until_complete(self.client.close())
        self.loop.close()


def demo_crops(n: int) -> list:
    """``n`` object crops from generated demo street scenes (their ground-truth boxes)."""
    import tempfile

    from rare_objects.demo.scenes import generate_scenes
    from rare_objects.io import images

    with tempfile.TemporaryDirectory() as tmp:
        truth = generate_scenes(tmp, n_images=max(4, n // 3), seed=11, folders=1)
        crops = []
        for row in truth.head(n).itertuples():
            with images.open_rgb(f"{tmp}/{row.image_path}") as image:
                crops.append(images.crop(image, (row.x1, row.y1, row.x2, row.y2)))
    return crops


def client_cpu_s(server_pid: int | None) -> float:
    """CPU seconds of this process and its child processes (the backend's encoder
    processes) so far, the bench server's excepted."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        if child.pid == server_pid:
            continue
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:  # an encoder pool closed meanwhile
            pass
    return total


def bench_openai(args) -> None:
    import numpy as np

    from rare_objects.backends.captioning import make_captioner

    crops = demo_crops(64)
    latency = args.latency_ms / 1000.0
    sizes = np.array([c.size for c in crops])
    print(
        f"openai backend: server latency {args.latency_ms:g} ms, server parallelism "
        f"{args.server_parallel or 'unlimited'}; {len(crops)} demo-scene crops of {sizes.min()}-{sizes.max()} px"
    )
    clients = [
        (
            "backend",
            lambda url, c: make_captioner(
                "openai",
                {
                    "openai": {
                        "base_url": url,
                        "model": "bench-vlm",
                        "api_key_env": "ROM_BENCH_NO_KEY",
                        "concurrency": c,
                    }
                },
            ),
        )
    ]
    if args.official_client:
        clients.append(("official openai client", OfficialClient))
    server = FixedLatencyServer(latency, args.server_parallel)
    with server as url:
        for (name, make), concurrency in ((m, c) for m in clients for c in args.concurrency):
            captioner = make(url, concurrency)
            n = max(64, args.requests_per_slot * concurrency)
            images = [crops[i % len(crops)] for i in range(n)]
            captioner.caption(images[: min(n, concurrency)])  # warm-up: connections, imports
            runs = []  # the best of --repeats runs: the machine's other load only ever adds time
            for _ in range(args.repeats):
                cpu0, t0 = client_cpu_s(server.pid), time.perf_counter()
                results = captioner.caption(images)
                runs.append((time.perf_counter() - t0, client_cpu_s(server.pid) - cpu0))
            wall, cpu = min(runs)
            failed = sum(not isinstance(r, str) for r in results)
            in_flight = (
                min(concurrency, args.server_parallel) if args.server_parallel else concurrency
            )
            ideal = n * latency / in_flight
            print(
                f"{name}, concurrency {concurrency:4d}: {n:5d} captions in {wall:6.2f} s = {n / wall:7.1f} captions/s, "
                f"ideal {n / ideal:7.1f}/s, ratio {wall / ideal:5.3f}, "
                f"client CPU {1000 * cpu / n:.2f} ms/caption, {failed} failed"
            )
            close = getattr(captioner, "close", None)
            if close:
                close()


def find_demo_vlm() -> Path | None:
    cache = Path(os.environ.get("RARE_OBJECTS_TEST_CACHE", REPO / "tests" / ".cache"))
    folder = cache / "models" / "qwen2vl-tiny"
    return folder if (folder / "config.json").exists() else None


def real_size_qwen2vl(tiny: Path, out: Path, device: str) -> Path:
    """Qwen2-VL-2B's architecture (text 1536 × 28 layers, vision 32 × 1280) with random bf16 weights.

    The tokenizer, processor and special-token ids are the tiny demo model's
    (its vocabulary is smaller than the embedding table, which is fine for timing).
    """
    import shutil

    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig.from_pretrained(tiny).to_dict()
    cfg["text_config"].update(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        initializer_range=0.02,
        tie_word_embeddings=True,
    )
    cfg["tie_word_embeddings"] = True
    cfg["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]
    for derived in ("head_dim", "layer_types", "max_window_layers"):
        cfg["text_config"].pop(derived, None)
    cfg["vision_config"].update(
        depth=32,
        embed_dim=1280,
        num_heads=16,
        mlp_ratio=4,
        hidden_size=1536,
        initializer_range=0.02,
    )
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(**cfg)).to(torch.bfloat16)
    model.generation_config = Qwen2VLForConditionalGeneration.from_pretrained(
        tiny
    ).generation_config
    model.save_pretrained(out)
    for f in tiny.iterdir():
        if f.is_file() and not (out / f.name).exists():
            shutil.copy(f, out / f.name)
    return out


def bench_transformers(args) -> None:
    from rare_objects.backends.captioning import make_captioner
    from rare_objects.runtime.devices import resolve_device

    tiny = Path(args.vlm) if args.vlm and args.vlm != "qwen2-vl-2b" else find_demo_vlm()
    if tiny is None:
        print("transformers backend: no demo VLM found (build the test cache or pass --vlm FOLDER)")
        return
    model = tiny
    if args.vlm == "qwen2-vl-2b":
        import tempfile

        model = real_size_qwen2vl(
            tiny, Path(tempfile.mkdtemp(prefix="rom-bench-vlm-")), resolve_device("auto")
        )
    own = {"model": str(model)}
    if args.vlm_batch:
        own["batch_size"] = args.vlm_batch
    captioner = make_captioner("transformers", {"transformers": own}, resolve_device("auto"))
    crops = demo_crops(args.vlm_crops)
    captioner.caption(crops[: captioner.batch_size])  # warm-up
    t0 = time.perf_counter()
    results = captioner.caption(crops)
    wall = time.perf_counter() - t0
    failed = sum(not isinstance(r, str) for r in results)
    print(
        f"transformers backend: {model.name} on {captioner.device} ({str(captioner.dtype).removeprefix('torch.')}), "
        f"batch size chosen {captioner.batch_size}: {len(crops)} captions in {wall:.2f} s = "
        f"{len(crops) / wall:.1f} captions/s, {failed} failed"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument(
        "--server-parallel", type=int, default=0, help="requests served at once (0: unlimited)"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[4, 32, 64, 256])
    parser.add_argument(
        "--requests-per-slot", type=int, default=8, help="captions per concurrency slot"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--vlm", default=None, help="demo VLM folder (default: the test cache's), or qwen2-vl-2b"
    )
    parser.add_argument("--vlm-crops", type=int, default=32)
    parser.add_argument(
        "--vlm-batch", type=int, default=None, help="default: the schema's batch size"
    )
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument(
        "--official-client",
        action="store_true",
        help="also time the official openai client (AsyncOpenAI) the same way, for comparison "
        "(needs `pip install openai==3.51.0`; not a project dependency)",
    )
    args = parser.parse_args()
    from rare_objects.runtime import offline

    offline.configure(REPO / ".cache" / "bench")
    print(f"machine: {machine()}; load average at start {os.getloadavg()[0]:.1f}")
    bench_openai(args)
    if not args.skip_transformers:
        bench_transformers(args)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
