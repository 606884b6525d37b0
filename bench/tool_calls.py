"""Tool calls on the embedded llama.cpp models (issue 14 §2): parse rate and time per call.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/tool_calls.py [--repeat 1] [--max-tokens 96]

Starts ``modelyard serve`` with ``chat`` (SmolLM2-135M, no tool format in its template) and
``coder`` (Qwen2.5-Coder-0.5B, the template's ``<tool_call>`` format), then through the openai SDK,
one request at a time, per model:

- ``required``: the 20 cases of tests/integration/test_tool_calls_real.py (five tool sets × four
  prompts, ``--repeat`` times, seed = case number): the share whose single call names a declared
  function with arguments that validate against its parameters (jsonschema), and the wall time per
  call (p50 / mean / max; the first call of each tool set pays for its prompt, the rest hit
  llama.cpp's prompt cache), with the completion tokens per call;
- ``auto``: the same prompts without forcing: how often the model chose to call, and how many of
  those calls were valid;
- a round trip: the call's result sent back with ``tool_choice: "auto"``: how often the second
  answer is text (not another call).

Prints a table; nothing is asserted (the test asserts the 100 %).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE.parent / "tests"))
import yaml  # noqa: E402
from gateway import Child, machine_info  # noqa: E402
from integration.test_tool_calls_real import CASES, check_call  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

MODELS = ("chat", "coder")
RESULT = '{"result": "ok", "value": 42}'


def config(home: Path) -> dict[str, Any]:
    local = {"kind": "local", "n_ctx": 2048, "n_parallel": 1, "keep_alive_s": 3600}
    return {"memory": {"data_dir": str(home)}, "server": {"access_log": False},
            "router": {"timeout_s": 300, "retry": {"num_retries": 0}},
            "models": [{"name": m, "deployments": [{**local, "artifact": m}]} for m in MODELS]}


def pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f} %)" if b else "-"


def bench_model(client: Any, model: str, repeat: int, max_tokens: int) -> dict[str, Any]:
    ok, times, tokens, problems = 0, [], [], []
    auto_calls = auto_valid = text_after = trips = 0
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=1)  # load
    for r in range(repeat):
        for i, (tools, prompt) in enumerate(CASES):
            msgs = [{"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            resp = client.chat.completions.create(model=model, messages=msgs, tools=tools, tool_choice="required",
                                                  max_tokens=max_tokens, seed=r * len(CASES) + i)
            times.append(time.perf_counter() - t0)
            tokens.append(resp.usage.completion_tokens)
            calls = resp.choices[0].message.tool_calls or []
            why = "no single call" if len(calls) != 1 or resp.choices[0].finish_reason != "tool_calls" else check_call(calls[0], tools)
            ok += why is None
            if why:
                problems.append(f"{prompt!r}: {why}")
            if r:
                continue
            auto = client.chat.completions.create(model=model, messages=msgs, tools=tools, max_tokens=max_tokens, seed=i)
            a_calls = auto.choices[0].message.tool_calls or []
            auto_calls += bool(a_calls)
            auto_valid += bool(a_calls) and all(check_call(c, tools) is None for c in a_calls)
            if calls:
                trips += 1
                back = [*msgs, resp.choices[0].message.model_dump(exclude_none=True),
                        {"role": "tool", "tool_call_id": calls[0].id, "content": RESULT}]
                second = client.chat.completions.create(model=model, messages=back, tools=tools, max_tokens=max_tokens, seed=i)
                text_after += not second.choices[0].message.tool_calls and bool(second.choices[0].message.content)
    n = len(times)
    return {"model": model, "required_valid": ok, "required_n": n, "p50_s": statistics.median(times),
            "mean_s": statistics.fmean(times), "max_s": max(times), "tokens_mean": statistics.fmean(tokens),
            "auto_calls": auto_calls, "auto_valid": auto_valid, "auto_n": len(CASES), "text_after": text_after,
            "trips": trips, "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="passes over the 20 required cases")
    ap.add_argument("--max-tokens", type=int, default=96)
    args = ap.parse_args()
    import openai

    print(json.dumps(machine_info()), file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="tool-calls-bench-"))
    import_defaults(ArtifactStore(work / "artifacts"), names=list(MODELS))
    (work / "cfg.yaml").write_text(yaml.safe_dump(config(work)))
    gw = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(work / "cfg.yaml"), "--port", "0"],
               work, env={"HF_HUB_OFFLINE": "1"})
    try:
        url = gw.wait_for(r"modelyard listening on (http://127\.0\.0\.1:\d+)", 120).group(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-bench", max_retries=0, timeout=300)
        rows = [bench_model(client, m, args.repeat, args.max_tokens) for m in MODELS]
    finally:
        gw.stop()
    print(f"\nmax_tokens {args.max_tokens}, one request at a time\n")
    print("| model | required: valid calls | s/call p50 | mean | max | tokens/call | auto: called | auto: valid | text after result |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {pct(r['required_valid'], r['required_n'])} | {r['p50_s']:.2f} | {r['mean_s']:.2f} | "
              f"{r['max_s']:.2f} | {r['tokens_mean']:.1f} | {pct(r['auto_calls'], r['auto_n'])} | "
              f"{pct(r['auto_valid'], r['auto_calls'])} | {pct(r['text_after'], r['trips'])} |")
    for r in rows:
        for p in r["problems"]:
            print(f"{r['model']}: {p}")
    return 0 if all(r["required_valid"] == r["required_n"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
