"""A controllable mock engine *process* for the supervisor's fault tests (stdlib only).

    python -m modelyard.testing.mock_engine --port P [--mode MODE] [--child] [--log-lines N]

OpenAI-compatible enough for the supervisor and an SDK client: ``GET /health`` (200 when ready,
503 before), ``GET /v1/models``, ``POST /v1/chat/completions`` and ``/v1/completions`` (valid,
non-streaming answers), vLLM's ``POST /sleep`` and ``POST /wake_up`` (+ ``GET /is_sleeping``;
a sleeping engine answers inference with 503).

Modes:
  ``ok``                  healthy at once
  ``slow-start:<s>``      listens at once, /health answers 503 for the first s seconds
  ``never-ready``         /health always 503
  ``crash-on-request``    a chat request makes the process exit(3) mid-request (no response)
  ``crash-after:<n>``     the same, once n inference requests were answered (n=1: the warm-up passes)
  ``crash-once:<path>``   like crash-after:1, but only while ``path`` does not exist (it is created
                          first): the restarted engine serves (a crash, then a clean recovery)
  ``crash-at-start``      exit(2) before listening (for crash loops)
  ``ignore-sigterm``      SIGTERM is logged and ignored (only SIGKILL stops it)
``--child`` starts a grandchild process (same process group; it ignores SIGTERM too in
``ignore-sigterm`` mode) and prints ``MOCK_CHILD <pid>``, to check that a stop reaches the whole group.
``--log-lines N`` prints N numbered lines at start (log rotation). Port already in use: exit 98.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_CHILD = "import signal, sys, time\nif sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(3600)"


class _State:
    def __init__(self, mode: str) -> None:
        self.mode, self.t0, self.sleeping, self.requests = mode, time.monotonic(), False, 0
        self.ready_after = float(mode.split(":", 1)[1]) if mode.startswith("slow-start:") else 0.0

    def ready(self) -> bool:
        return self.mode != "never-ready" and time.monotonic() - self.t0 >= self.ready_after


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()  # head and body are two writes: without NODELAY, Nagle + delayed ACK add 40 ms
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt: str, *args: Any) -> None:  # one line per request on stderr
            sys.stderr.write(f"mock_engine: {self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return {}

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                ok = state.ready()
                self._send(200 if ok else 503, {"status": "ok" if ok else "loading"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "mock", "object": "model", "created": 0,
                                                             "owned_by": "modelyard"}]})
            elif self.path == "/is_sleeping":
                self._send(200, {"is_sleeping": state.sleeping})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            path = self.path.split("?", 1)[0]
            if path == "/sleep":
                time.sleep(0.01)  # a token amount of "offloading"
                state.sleeping = True
                self._send(200, {})
            elif path == "/wake_up":
                time.sleep(0.01)
                state.sleeping = False
                self._send(200, {})
            elif path in ("/v1/chat/completions", "/v1/completions"):
                crash_after = int(state.mode.split(":", 1)[1]) if state.mode.startswith("crash-after:") else None
                if state.mode.startswith("crash-once:") and state.requests >= 1:
                    marker = state.mode.split(":", 1)[1]
                    try:
                        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                        crash_after = 1
                    except FileExistsError:
                        pass
                if path == "/v1/chat/completions" and (
                    state.mode == "crash-on-request" or (crash_after is not None and state.requests >= crash_after)
                ):
                    sys.stderr.write("mock_engine: crash-on-request: exiting with 3 mid-request\n")
                    sys.stderr.flush()
                    os._exit(3)
                if state.sleeping:
                    self._send(503, {"error": {"message": "engine is sleeping", "type": "server_error"}})
                    return
                state.requests += 1
                self._send(200, _answer(path, body))
            else:
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    return Handler


def _answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
    model = body.get("model") or "mock"
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    if path == "/v1/chat/completions":
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": "mock reply", "refusal": None}}]}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "usage": usage,
            "choices": [{"index": 0, "text": "mock reply", "finish_reason": "stop", "logprobs": None}]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="modelyard.testing.mock_engine")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--mode", default="ok")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--log-lines", type=int, default=0)
    a = ap.parse_args(argv)
    known = ("ok", "never-ready", "crash-on-request", "crash-at-start", "ignore-sigterm")
    if a.mode not in known and not a.mode.startswith(("slow-start:", "crash-after:", "crash-once:")):
        print(f"mock_engine: unknown mode {a.mode!r}", file=sys.stderr)
        return 64
    print(f"mock_engine: pid {os.getpid()} mode {a.mode}", flush=True)
    for i in range(a.log_lines):
        print(f"mock_engine: log line {i:06d} " + "x" * 40)
    sys.stdout.flush()
    if a.mode == "crash-at-start":
        print("mock_engine: crash-at-start: exiting with 2", file=sys.stderr, flush=True)
        return 2
    if a.mode == "ignore-sigterm":
        signal.signal(signal.SIGTERM, lambda *_: print("mock_engine: ignoring SIGTERM", flush=True))
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server = ThreadingHTTPServer((a.host, a.port), _handler(_State(a.mode)))
    except OSError as exc:
        print(f"mock_engine: {a.host}:{a.port}: address already in use? {exc}", file=sys.stderr, flush=True)
        return 98
    server.daemon_threads = True
    child = None
    if a.child:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, "1" if a.mode == "ignore-sigterm" else "0"])
        print(f"MOCK_CHILD {child.pid}", flush=True)
    print(f"MOCK_ENGINE_LISTENING http://{a.host}:{a.port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
