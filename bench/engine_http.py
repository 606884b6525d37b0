"""One timed chat request to an engine on a loopback port (shared by the engine benchmarks)."""

from __future__ import annotations

import http.client
import json
import time


def chat(port: int, model: str, *, timeout_s: float = 300.0) -> float:
    """Seconds for an 8-token chat completion; raises on any status but 200."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello."}],
                       "max_tokens": 8, "temperature": 0}).encode()
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise RuntimeError(f"chat failed: {resp.status} {data[:300]!r}")
    return time.perf_counter() - t0
