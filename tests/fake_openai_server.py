"""A fake OpenAI-compatible chat-completions server for tests (real HTTP on 127.0.0.1).

Requests are identified by the image they carry: the server decodes the data
URL's JPEG and keys its behaviour by the image's width. ``faults[width]`` is a
list of faults consumed one per request for that image; when it is used up the
request succeeds with ``"object {width}x{height}"``. Faults:

    500 / 503 / 429 / 400 / 401  answer that HTTP status ("401" echoes the key it got)
    "timeout"                      sleep ``hang_s`` before answering (longer than the client's time-out)
    "slow"                         sleep ``hang_s``, then answer with success (a slow request in flight)
    "malformed"                    200 with a body that is not JSON
    "no_choices"                   200 with JSON lacking "choices"
    "bad_json"                     200, Content-Type application/json, with a body that is not JSON

Everything is recorded in ``requests`` (width, height, fault, authorization header, model, prompt, max_tokens, temperature, path,
the client's address and port, i.e. which connection carried it) and ``max_in_flight``. Use as a context manager; the server also stops itself
after ``lifetime_s`` in case a test forgets. ``port`` 0 takes a free port.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class FakeOpenAIServer:
    def __init__(
        self,
        faults: dict | None = None,
        hang_s: float = 1.5,
        work_s: float = 0.05,
        lifetime_s: float = 60.0,
        port: int = 0,
    ):
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.hang_s = hang_s
        self.work_s = work_s
        self.lifetime_s = lifetime_s
        self.port = port
        self.requests: list[dict] = []
        self.answered: list[int] = []  # the width of each successful answer, in the order sent
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None
        self._running = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):  # noqa: N802
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._running = True
        self._thread.start()
        self._timer = threading.Timer(self.lifetime_s, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._timer:
            self._timer.cancel()
        with self._lock:
            httpd, self._running = (self._httpd if self._running else None), False
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- requests --------------------------------------------------------------------

    def requests_for(self, width: int) -> list[dict]:
        with self._lock:
            return [r for r in self.requests if r["width"] == width]

    def _send(self, handler, status: int, body: bytes, content_type="application/json"):
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (time-out)
            pass

    def _handle(self, handler) -> None:
        hung = False
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            length = int(handler.headers.get("Content-Length", 0))
            payload = json.loads(handler.rfile.read(length))
            auth = handler.headers.get("Authorization")
            url = text = None
            for part in payload["messages"][0]["content"]:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                elif part.get("type") == "text":
                    text = part["text"]
            header, b64 = url.split(",", 1)
            assert header.startswith("data:image/"), header
            with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
                width, height = im.size
            with self._lock:
                queue = self.faults.get(width, [])
                fault = queue.pop(0) if queue else None
                self.requests.append(
                    {
                        "width": width,
                        "height": height,
                        "fault": fault,
                        "authorization": auth,
                        "model": payload.get("model"),
                        "prompt": text,
                        "max_tokens": payload.get("max_tokens"),
                        "temperature": payload.get("temperature"),
                        "path": handler.path,
                        "connection": handler.client_address,
                    }
                )
            time.sleep(self.work_s)
            if fault == "timeout":
                # The client gives up on this request (and may retry) while this handler still
                # hangs: stop counting it as in flight so that max_in_flight counts the client's
                # open requests only.
                with self._lock:
                    self.in_flight -= 1
                    hung = True
                self._stop.wait(self.hang_s)
                fault = None  # answers (too late) with a success
            elif fault == "slow":
                self._stop.wait(self.hang_s)
                fault = None
            if fault in (500, 502, 503, 429, 400):
                self._send(
                    handler, fault, json.dumps({"error": {"message": f"injected {fault}"}}).encode()
                )
            elif fault == 401:
                message = f"Incorrect API key provided: {(auth or '').removeprefix('Bearer ')}"
                self._send(handler, 401, json.dumps({"error": {"message": message}}).encode())
            elif fault == "malformed":
                self._send(handler, 200, b'{"choices": [ this is not json', "text/plain")
            elif fault == "bad_json":
                self._send(handler, 200, b'{"choices": [{"message": ')
            elif fault == "no_choices":
                self._send(handler, 200, json.dumps({"object": "chat.completion"}).encode())
            else:
                answer = {
                    "id": "cmpl-test",
                    "object": "chat.completion",
                    "model": payload.get("model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": f"object {width}x{height}"},
                        }
                    ],
                }
                self._send(handler, 200, json.dumps(answer).encode())
                with self._lock:
                    self.answered.append(width)
        finally:
            if not hung:
                with self._lock:
                    self.in_flight -= 1
