"""End-to-end gateway benchmark: direct to the mock upstream vs through ``modelyard serve``.

Starts the bundled mock OpenAI upstream and a real ``modelyard serve`` (subprocesses, loopback,
access log enabled as a user runs it, written to a file), then measures side by side:

1. c=1 latency of a non-streaming chat completion (~300-byte body): p50/p90/p99/mean, and the
   latency modelyard adds (through − direct). Targets interleaved in blocks, after a warm-up.
2. c=64 throughput (req/s) for ``--duration`` s per target, with the latency under that load;
   also through ``bench-renamed`` (upstream model name differs: the body is re-encoded).
3. streaming (``stream: true``) at c=1: time to the response head, to the first body byte and to
   the first content event; the TTFB modelyard adds.
4. CPU seconds per request of the gateway and of the mock in each throughput phase
   (``/proc/<pid>/stat`` utime+stime, read at the start and end of the measured window).

The load comes from ``bench/loadgen.py`` (raw asyncio Protocol + httptools on uvloop), run in its
own process for each phase. Every response's status is checked; errors are counted and printed,
and a run with errors says so (exit status 1).

Usage: ``.venv/bin/python bench/gateway.py [--duration 5] [--requests 2000] [--concurrency 64] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOADGEN = HERE / "loadgen.py"
PATH = "/v1/chat/completions"

TARGET_ADDED_P50_MS = 0.5
TARGET_RPS = 3000.0
TARGET_ADDED_TTFB_MS = 1.0

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ helpers
def chat_body(model: str, *, stream: bool = False) -> str:
    """A realistic ~300-byte chat completion request."""
    body: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant. Answer in plain English."},
            {"role": "user", "content": "Give me three short tips for writing clear error messages in a command-line tool."},
        ],
        "temperature": 0.2,
        "max_tokens": 128,
        "user": "bench-user-0001",
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":"))


def machine_info() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        nproc = os.cpu_count() or 0
    versions = {}
    for mod in ("uvloop", "httptools", "uvicorn", "orjson"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informational only
            versions[mod] = "?"
    return {
        "nproc": nproc,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg_at_start": list(os.getloadavg()),
        "versions": versions,
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        data = fh.read()
    rest = data[data.rfind(b")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent busy (all cores, everything but idle and iowait)."""
    with open("/proc/stat", "rb") as fh:
        f = [int(x) for x in fh.readline().split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / _CLK_TCK


def scrape(url: str, timeout: float = 10.0) -> list[tuple[str, str, float]]:
    """``GET url/metrics`` as (name, labels, value) samples (labels: the text between the braces)."""
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        out.append((name, labels.rstrip("}"), float(value)))
    return out


class LineReader:
    """Lines from a pipe, with a deadline (select + os.read; no blocking forever)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def readline(self, deadline: float) -> str | None:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line before the deadline")
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode()
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


class Child:
    """A subprocess whose stdout/stderr go to files; stopped with terminate → kill."""

    def __init__(self, name: str, argv: list[str], workdir: Path, stderr_path: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = Path(stderr_path) if stderr_path else workdir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **env} if env else None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll stdout until ``pattern`` matches a line; raise if the process exits or time runs out."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_text(errors="replace")
            for line in text.splitlines():
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        err = self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""
        raise RuntimeError(f"{self.name} did not become ready (exit={self.proc.poll()}); stderr tail:\n{err}")

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
        finally:
            self._out.close()
            self._err.close()


def run_loadgen(spec: dict, timeout: float, on_mark: Callable[[str], None] | None = None) -> dict:
    """Run one phase in a separate load-generator process; return its RESULT."""
    proc = subprocess.Popen(
        [sys.executable, str(LOADGEN), json.dumps(spec)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        reader = LineReader(proc.stdout.fileno())
        deadline = time.monotonic() + timeout
        while True:
            line = reader.readline(deadline)
            if line is None:
                err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
                raise RuntimeError(f"load generator exited without a result (exit={proc.wait(5)}):\n{err}")
            if line.startswith("MARK ") and on_mark is not None:
                on_mark(line[5:].strip())
            elif line.startswith("RESULT "):
                proc.wait(timeout=10)
                return json.loads(line[7:])
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()


BENCH_MASTER = "sk-bench-master-key"


def make_virtual_key(gw_url: str) -> str:
    """A virtual key with (never reached) rpm/tpm limits, made through /key/generate."""
    import urllib.request

    req = urllib.request.Request(
        f"{gw_url}/key/generate",
        data=json.dumps({"rpm_limit": 10**9, "tpm_limit": 10**12, "key_alias": "bench"}).encode(),
        headers={"authorization": f"Bearer {BENCH_MASTER}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return "Bearer " + json.loads(resp.read())["key"]


def throughput_phase(url: str, model: str, args: argparse.Namespace, pids: dict[str, int], authorization: str | None = None) -> dict:
    """One c=N throughput run; CPU of each pid in ``pids`` is read at the window's marks."""
    marks: dict[str, dict[str, float]] = {}

    def on_mark(which: str) -> None:
        marks[which] = {name: cpu_seconds(pid) for name, pid in pids.items()}
        marks[which]["_machine"] = machine_busy_s()
        marks[which]["_t"] = time.monotonic()

    spec = {
        "mode": "throughput", "url": url, "path": PATH, "body": chat_body(model),
        "concurrency": args.concurrency, "duration": args.duration, "warmup_s": args.warmup_s,
        "authorization": authorization,
    }
    res = run_loadgen(spec, timeout=args.duration + args.warmup_s + 60, on_mark=on_mark)
    if "start" in marks and "end" in marks:
        n = max(1, res["completed"])
        wall = marks["end"]["_t"] - marks["start"]["_t"]
        res["cpu"] = {}
        for name in pids:
            used = marks["end"][name] - marks["start"][name]
            res["cpu"][name] = {"cpu_s": used, "us_per_req": used / n * 1e6, "core_share": used / wall if wall > 0 else 0.0}
        # Noise check: cores busy machine-wide minus what the bench's own processes used.
        busy = marks["end"]["_machine"] - marks["start"]["_machine"]
        ours = sum(v["cpu_s"] for v in res["cpu"].values()) + res["loadgen_cpu_us_per_req"] * n / 1e6
        res["machine"] = {"busy_cores": busy / wall, "other_cores": max(0.0, busy - ours) / wall}
    return res


def scan_access_log(path: Path) -> dict:
    """Count the gateway's access-log lines by status; collect any non-JSON lines (tracebacks)."""
    statuses: dict[str, int] = {}
    other: list[str] = []
    lines = 0
    if not path.exists():
        return {"lines": 0, "by_status": {}, "non_json_samples": [], "non_json": 0}
    n_other = 0
    with open(path, "rb") as fh:
        for raw in fh:
            lines += 1
            try:
                rec = json.loads(raw)
                key = str(rec.get("status"))
                statuses[key] = statuses.get(key, 0) + 1
            except (ValueError, AttributeError):
                n_other += 1
                if len(other) < 10:
                    other.append(raw.decode(errors="replace").rstrip())
    return {"lines": lines, "by_status": statuses, "non_json": n_other, "non_json_samples": other}


# ------------------------------------------------------------------------------------ report
def _f(v: float | None, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_report(r: dict) -> None:
    m = r["machine"]
    a = r["args"]
    print("=" * 100)
    print("modelyard gateway benchmark (loopback; mock upstream, gateway and load generator share the CPUs)")
    print(f"machine : nproc={m['nproc']}  cpu={m['cpu_model']}  {m['implementation']} {m['python']}  "
          f"loadavg at start={' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}")
    print("versions: " + "  ".join(f"{k} {v}" for k, v in m["versions"].items()))
    print(f"gateway : modelyard serve (uvicorn+httptools+uvloop), access log ENABLED → {r['access_log_path']}")
    print(f"body    : {r['body_bytes']} bytes (non-stream), {r['stream_body_bytes']} bytes (stream)")
    print("=" * 100)

    lat = r["latency"]["targets"]
    print(f"\n1. c=1 non-streaming chat completion latency, ms  ({a['requests']} requests per target after "
          f"{a['warmup']} warm-up, targets interleaved in blocks of 50)")
    print(f"   {'target':<28}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}{'max':>9}{'ok':>7}{'errors':>8}")
    for name in ("direct", "through", "through-renamed"):
        t = lat[name]
        s = t["total"]
        print(f"   {LABELS[name]:<28}{_f(s.get('p50')):>9}{_f(s.get('p90')):>9}{_f(s.get('p99')):>9}"
              f"{_f(s.get('mean')):>9}{_f(s.get('max')):>9}{t['completed']:>7}{t['errors']['total']:>8}")
    add = r["added"]
    print(f"   {'added by modelyard':<28}{_f(add['p50']):>9}{_f(add['p90']):>9}{_f(add['p99']):>9}{_f(add['mean']):>9}"
          f"      target: added p50 ≤ {TARGET_ADDED_P50_MS} ms → {verdict(add['p50'] <= TARGET_ADDED_P50_MS)}")
    print(f"   {'added (renamed model)':<28}{_f(add['renamed_p50']):>9}{'':>9}{_f(add['renamed_p99']):>9}")
    print("   (added = through − direct, percentile by percentile; on a shared machine the p99 difference is noisy and")
    print("    can even be negative when the direct target caught more of the noise)")
    print(f"   load generator CPU: {r['latency']['loadgen_cpu_us_per_req']:.1f} µs/request")

    print(f"\n2. c={a['concurrency']} throughput, {a['duration']:g} s measured per target after {a['warmup_s']:g} s warm-up "
          f"(CPU from /proc/<pid>/stat over the window)")
    print(f"   {'target':<22}{'req/s':>9}{'p50':>8}{'p90':>8}{'p99':>8}{'gw µs/req':>11}{'gw core':>9}"
          f"{'mock µs/req':>13}{'mock core':>11}{'lg µs/req':>11}{'others':>8}{'errors':>8}")
    for name in ("direct", "through", "through-renamed"):
        t = r["throughput"][name]
        s = t["latency"]
        cpu = t.get("cpu", {})
        gw = cpu.get("gateway")
        mk = cpu.get("mock", {})
        gw_us = f"{gw['us_per_req']:.0f}" if gw else "—"
        gw_core = f"{gw['core_share'] * 100:.0f}%" if gw else "—"
        print(f"   {LABELS[name]:<22}{t['rps']:>9.0f}{_f(s.get('p50'), 2):>8}{_f(s.get('p90'), 2):>8}{_f(s.get('p99'), 2):>8}"
              f"{gw_us:>11}{gw_core:>9}"
              f"{mk.get('us_per_req', 0):>13.0f}{mk.get('core_share', 0)*100:>10.0f}%"
              f"{t['loadgen_cpu_us_per_req']:>11.0f}{t.get('machine', {}).get('other_cores', 0):>8.2f}{t['errors']['total']:>8}")
    print("   (gw/mock core = share of one core used in the window; lg = load generator; others = cores used by other"
          " processes on the machine during the window: noise)")
    rps = r["throughput"]["through"]["rps"]
    print(f"   target: ≥ {TARGET_RPS:,.0f} req/s through modelyard at c={a['concurrency']} → {verdict(rps >= TARGET_RPS)}"
          f"  (renamed: {r['throughput']['through-renamed']['rps']:.0f} req/s)")

    st = r["stream"]["targets"]
    print(f"\n3. c=1 streaming chat completion (stream: true), ms  ({a['requests']} per target after {a['warmup']} warm-up)")
    print(f"   {'target':<22}{'head p50':>10}{'TTFB p50':>10}{'TTFB p99':>10}{'1st content p50':>17}{'p99':>8}"
          f"{'total p50':>11}{'p99':>8}{'errors':>8}")
    for name in ("direct", "through"):
        t = st[name]
        print(f"   {LABELS[name]:<22}{_f(t['head'].get('p50')):>10}{_f(t['first_body_byte'].get('p50')):>10}"
              f"{_f(t['first_body_byte'].get('p99')):>10}{_f(t['first_content'].get('p50')):>17}"
              f"{_f(t['first_content'].get('p99')):>8}{_f(t['total'].get('p50')):>11}{_f(t['total'].get('p99')):>8}"
              f"{t['errors']['total']:>8}")
    sa = r["added_stream"]
    print(f"   {'added by modelyard':<22}{'':>10}{_f(sa['ttfb_p50']):>10}{_f(sa['ttfb_p99']):>10}"
          f"{_f(sa['content_p50']):>17}{_f(sa['content_p99']):>8}{_f(sa['total_p50']):>11}{_f(sa['total_p99']):>8}")
    print(f"   target: added TTFB (p50) ≤ {TARGET_ADDED_TTFB_MS} ms → {verdict(sa['ttfb_p50'] <= TARGET_ADDED_TTFB_MS)}")

    print("\n4. CPU per request (throughput phases, from the table in 2):")
    for name in ("through", "through-renamed"):
        cpu = r["throughput"][name].get("cpu", {})
        if "gateway" in cpu:
            print(f"   {LABELS[name]:<22} gateway {cpu['gateway']['us_per_req']:.0f} µs/req "
                  f"({cpu['gateway']['cpu_s']:.2f} CPU-s), mock {cpu['mock']['us_per_req']:.0f} µs/req")
    d = r["throughput"]["direct"].get("cpu", {}).get("mock")
    if d:
        print(f"   {LABELS['direct']:<22} mock {d['us_per_req']:.0f} µs/req ({d['cpu_s']:.2f} CPU-s)")

    print("\nSummary")
    print(f"   {'target':<42}{'measured':>14}  verdict")
    print(f"   {'added p50 latency at c=1 ≤ 0.5 ms':<42}{add['p50']:>11.3f} ms  {verdict(add['p50'] <= TARGET_ADDED_P50_MS)}")
    print(f"   {'throughput at c=' + str(a['concurrency']) + ' ≥ 3,000 req/s':<42}{rps:>10.0f} r/s  {verdict(rps >= TARGET_RPS)}")
    print(f"   {'added TTFB (p50) at c=1 ≤ 1 ms':<42}{sa['ttfb_p50']:>11.3f} ms  {verdict(sa['ttfb_p50'] <= TARGET_ADDED_TTFB_MS)}")
    log = r["access_log"]
    print(f"   gateway access log: {log['lines']} lines, by status {log['by_status']}, non-JSON lines {log['non_json']}")
    for s in log["non_json_samples"][:5]:
        print(f"      | {s}")
    if r["errors_total"]:
        print(f"\n   RUN HAD {r['errors_total']} ERRORS — the figures above are NOT a clean measurement:")
        for where, e in r["errors"].items():
            if e["total"]:
                print(f"   - {where}: {e['by_kind']}")
                for s in e["samples"]:
                    print(f"       {s}")
    else:
        print("   errors: none (every response was a 200 with a valid body)")


LABELS = {"direct": "direct (mock)", "through": "through modelyard", "through-renamed": "through (bench-renamed)"}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per throughput phase (default 5)")
    ap.add_argument("--requests", type=int, default=2000, help="requests per target in the c=1 phases (default 2000)")
    ap.add_argument("--concurrency", type=int, default=64, help="connections in the throughput phase (default 64)")
    ap.add_argument("--warmup", type=int, default=200, help="warm-up requests per target at c=1 (default 200)")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="warm-up seconds before each throughput window (default 1)")
    ap.add_argument("--gateway-log", default=None,
                    help="where the gateway's stderr (access log) goes: a file path, or 'devnull' (default: a temp file)")
    ap.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    ap.add_argument("--redis", default=None, metavar="URL",
                    help="with --auth: keep the rate-limit and budget counters in this Redis (limits.redis_url)")
    ap.add_argument("--auth", action="store_true",
                    help="a master key, and 'through' requests sent with a virtual key that has rpm/tpm limits "
                         "(and the model an rpm/tpm of its own): authentication and the limiter on every request")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.duration <= 0 or args.concurrency < 1 or args.warmup < 0:
        ap.error("--requests, --duration and --concurrency must be positive")

    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    children: list[Child] = []
    try:
        mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"], workdir)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)

        config = workdir / "bench.yaml"
        limits = "    rpm: 1000000000\n    tpm: 1000000000000\n" if args.auth else ""
        config.write_text(
            "server: {host: 127.0.0.1, access_log: true}\n"
            + (f"auth: {{master_key: {BENCH_MASTER}}}\n" if args.auth else "")
            + (f"limits: {{redis_url: '{args.redis}', redis_prefix: 'modelyard:bench:'}}\n" if args.redis else "")
            + "models:\n"
            "  - name: bench-model\n"
            + limits
            + f"    deployments: [{{api_base: '{mock_url}/v1', model: bench-model}}]\n"
            "  - name: bench-renamed\n"
            f"    deployments: [{{api_base: '{mock_url}/v1', model: bench-upstream-model}}]\n"
        )
        exe = Path(sys.executable).with_name("modelyard")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "modelyard"]
        log_path = os.devnull if args.gateway_log == "devnull" else (args.gateway_log or str(workdir / "gateway.stderr"))
        gw = Child("gateway", [*cmd, "serve", "--config", str(config), "--port", "0"], workdir, stderr_path=log_path)
        children.append(gw)
        gw_url = gw.wait_for(r"modelyard listening on (http://\S+)", 60).group(1)
        authorization = make_virtual_key(gw_url) if args.auth else None

        body = chat_body("bench-model")
        sbody = chat_body("bench-model", stream=True)
        pids = {"gateway": gw.pid, "mock": mock.pid}
        seq_timeout = 120 + (args.requests + args.warmup) * 3 * 0.05

        print(f"mock at {mock_url}, gateway at {gw_url}; running phase 1 (c=1 latency)...", file=sys.stderr)
        latency = run_loadgen({
            "mode": "latency", "requests": args.requests, "warmup": args.warmup, "targets": [
                {"name": "direct", "url": mock_url, "path": PATH, "body": body},
                {"name": "through", "url": gw_url, "path": PATH, "body": body, "authorization": authorization},
                {"name": "through-renamed", "url": gw_url, "path": PATH, "body": chat_body("bench-renamed"),
                 "authorization": authorization},
            ]}, timeout=seq_timeout)

        print("phase 2 (throughput)...", file=sys.stderr)
        throughput = {
            "direct": throughput_phase(mock_url, "bench-model", args, {"mock": mock.pid}),
            "through": throughput_phase(gw_url, "bench-model", args, pids, authorization),
            "through-renamed": throughput_phase(gw_url, "bench-renamed", args, pids, authorization),
        }

        print("phase 3 (streaming)...", file=sys.stderr)
        stream = run_loadgen({
            "mode": "stream", "requests": args.requests, "warmup": args.warmup, "targets": [
                {"name": "direct", "url": mock_url, "path": PATH, "body": sbody},
                {"name": "through", "url": gw_url, "path": PATH, "body": sbody, "authorization": authorization},
            ]}, timeout=seq_timeout)
    finally:
        for c in reversed(children):
            c.stop()

    try:
        access_log = scan_access_log(Path(log_path)) if log_path != os.devnull else {
            "lines": 0, "by_status": {}, "non_json": 0, "non_json_samples": ["(sent to /dev/null)"]}
    finally:
        if args.gateway_log is None:
            shutil.rmtree(workdir, ignore_errors=True)

    lt = latency["targets"]
    stt = stream["targets"]

    def d(a: dict, b: dict, key: str) -> float:
        return b.get(key, float("nan")) - a.get(key, float("nan"))

    errors = {f"c=1 latency / {k}": v["errors"] for k, v in lt.items()}
    errors.update({f"c={args.concurrency} throughput / {k}": v["errors"] for k, v in throughput.items()})
    errors.update({f"c=1 stream / {k}": v["errors"] for k, v in stt.items()})
    results = {
        "machine": machine,
        "args": vars(args),
        "body_bytes": len(body),
        "stream_body_bytes": len(sbody),
        "access_log_path": log_path if args.gateway_log else "temp file (deleted after the run)",
        "latency": latency,
        "added": {
            "p50": d(lt["direct"]["total"], lt["through"]["total"], "p50"),
            "p90": d(lt["direct"]["total"], lt["through"]["total"], "p90"),
            "p99": d(lt["direct"]["total"], lt["through"]["total"], "p99"),
            "mean": d(lt["direct"]["total"], lt["through"]["total"], "mean"),
            "renamed_p50": d(lt["direct"]["total"], lt["through-renamed"]["total"], "p50"),
            "renamed_p99": d(lt["direct"]["total"], lt["through-renamed"]["total"], "p99"),
        },
        "throughput": throughput,
        "stream": stream,
        "added_stream": {
            "ttfb_p50": d(stt["direct"]["first_body_byte"], stt["through"]["first_body_byte"], "p50"),
            "ttfb_p99": d(stt["direct"]["first_body_byte"], stt["through"]["first_body_byte"], "p99"),
            "content_p50": d(stt["direct"]["first_content"], stt["through"]["first_content"], "p50"),
            "content_p99": d(stt["direct"]["first_content"], stt["through"]["first_content"], "p99"),
            "total_p50": d(stt["direct"]["total"], stt["through"]["total"], "p50"),
            "total_p99": d(stt["direct"]["total"], stt["through"]["total"], "p99"),
        },
        "access_log": access_log,
        "errors": errors,
        "errors_total": sum(e["total"] for e in errors.values()),
    }
    results["targets_met"] = {
        "added_p50_le_0.5ms": results["added"]["p50"] <= TARGET_ADDED_P50_MS,
        "rps_ge_3000": throughput["through"]["rps"] >= TARGET_RPS,
        "added_ttfb_le_1ms": results["added_stream"]["ttfb_p50"] <= TARGET_ADDED_TTFB_MS,
    }
    print_report(results)
    if args.json:
        print(json.dumps(results))
    return 1 if results["errors_total"] else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks on SIGTERM too
    sys.exit(main())
