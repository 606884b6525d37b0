"""The Responses API's cost over chat completions, on the bundled mock upstream (loopback).

Starts the mock OpenAI upstream and a real ``modelyard serve`` (subprocesses), then at c=1, targets
interleaved in blocks after a warm-up, measures the latency of the same question as:

1. ``direct``: a chat completion straight to the mock;
2. ``chat``: the chat completion through the gateway;
3. ``responses``: ``POST /v1/responses`` through the gateway with ``store: false`` (translation only);
4. ``responses+store``: the same with ``store: true`` (the default: one row written to SQLite first);
5. ``responses+previous``: a second turn with ``previous_response_id`` (one row read, one written).

Prints p50/p99 per target and the ratios to ``chat`` measured in the same run, and the machine.
Usage: ``.venv/bin/python bench/responses.py [--requests 400]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import Child, machine_info  # noqa: E402

QUESTION = "Give me three short tips for writing clear error messages in a command-line tool."


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="per target")
    ap.add_argument("--block", type=int, default=20)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-bench-responses-"))
    children: list[Child] = []
    try:
        mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1",
                              "--port", "0"], workdir)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)
        config = workdir / "bench.yaml"
        config.write_text(f"server: {{host: 127.0.0.1}}\nmemory: {{data_dir: '{workdir / 'home'}'}}\n"
                          f"models:\n  - name: m\n    deployments: [{{api_base: '{mock_url}/v1', model: m}}]\n")
        gw = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(config), "--port", "0"],
                   workdir)
        children.append(gw)
        gw_url = gw.wait_for(r"modelyard listening on (http://\S+)", 60).group(1)
        chat = {"model": "m", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 64}
        with httpx.Client(timeout=30) as c:
            first = c.post(f"{gw_url}/v1/responses", json={"model": "m", "input": QUESTION}).json()["id"]
            targets = {
                "direct": (f"{mock_url}/v1/chat/completions", chat),
                "chat": (f"{gw_url}/v1/chat/completions", chat),
                "responses": (f"{gw_url}/v1/responses", {"model": "m", "input": QUESTION, "store": False,
                                                         "max_output_tokens": 64}),
                "responses+store": (f"{gw_url}/v1/responses", {"model": "m", "input": QUESTION,
                                                               "max_output_tokens": 64}),
                "responses+previous": (f"{gw_url}/v1/responses", {"model": "m", "input": "and one more",
                                                                  "previous_response_id": first,
                                                                  "max_output_tokens": 64}),
            }
            times: dict[str, list[float]] = {k: [] for k in targets}
            for _ in range(3):  # warm-up
                for url, body in targets.values():
                    c.post(url, json=body).raise_for_status()
            done = 0
            while done < args.requests:
                for name, (url, body) in targets.items():
                    for _ in range(args.block):
                        t0 = time.perf_counter()
                        r = c.post(url, json=body)
                        times[name].append(time.perf_counter() - t0)
                        if r.status_code != 200:
                            raise SystemExit(f"{name}: {r.status_code} {r.text[:200]}")
                done += args.block
        m = machine_info()
        print(f"machine: {m['cpu_model']}, {m['nproc']} cores; python {m['python']}")
        print(f"c=1, {args.requests} requests per target, interleaved in blocks of {args.block}; mock upstream on loopback")
        chat_p50 = statistics.median(times["chat"])
        print(f"{'target':<20} {'p50 ms':>8} {'p99 ms':>8} {'p50 / chat':>11}")
        for name, ts in times.items():
            ts.sort()
            p50, p99 = statistics.median(ts), ts[int(len(ts) * 0.99) - 1]
            print(f"{name:<20} {p50 * 1000:8.3f} {p99 * 1000:8.3f} {p50 / chat_p50:11.2f}")
        print(f"added by the translation (responses − chat), p50: "
              f"{(statistics.median(times['responses']) - chat_p50) * 1000:.3f} ms")
        return 0
    finally:
        for ch in reversed(children):
            ch.stop()


if __name__ == "__main__":
    sys.exit(main())
