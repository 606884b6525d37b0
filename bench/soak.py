"""Soak: many mixed requests with keys on, real models swapping under a tight memory budget.

    .venv/bin/python bench/soak.py [--requests 100000] [--real 5000] [--concurrency 16]
                                   [--db sqlite|postgresql] [--db-down 0.35:0.65] [--active 450MiB]
                                   [--out bench/results] [--tag NAME]

One gateway (master key; every request sends a virtual key with rpm/tpm limits) in front of:
the mock upstream (``gw``: unary chat completions and streams) and four real embedded models
(``text-embedding``, ``intent`` classifications, ``moderation``, a 4-token ``chat``), the active
tier's budget too small to hold them all, so they swap as the mix moves through them. ``--real``
of the ``--requests`` go to the real models, spread evenly through the run.

``--db-down A:B`` takes the spend database away between A and B (fractions of the run): a
PostgreSQL behind a fault proxy that resets every connection, or an SQLite file locked by another
connection. Rows must spool meanwhile, RSS must not ratchet, and every row must arrive afterwards.

Sampled every second: the gateway's RSS (total and anonymous), open fds, the p99 of the requests
that ended in that second, the writer's backlog and spool, tier moves. Verdicts: 0 requests lost
(each got an HTTP answer; streams end with [DONE]), spend rows == requests, anonymous RSS growth
between 10 % of the run and its end < 5 % and open fds not growing (≤ +5) — both as the trend of a
least-squares line, since every swap moves them by tens of MB and a few fds either way — and
models swapped. A PNG of RSS and p99
over time and the JSON of every sample go to ``--out``. Exit status 1 when a verdict fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from gateway import Child, machine_info, scrape  # noqa: E402

MASTER = "sk-soak-master-key-0123"
REAL = ("text-embedding", "intent", "moderation", "chat")


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon"):
            out[k] = int(v.split()[0]) * 1024
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {"transitions": 0.0}
    for name, _, value in scrape(url):
        if name.startswith("modelyard_spend_"):
            out[name] = value
        elif name == "modelyard_model_transitions_total":
            out["transitions"] += value
    return out


def plan(n: int, real: int, block: int = 50, models: tuple[str, ...] = REAL) -> list[str]:
    """The request kinds in order: real-model requests spread evenly (the model changing every
    ``block`` of them, so that residency changes every few seconds), the rest 3:1 unary:stream."""
    kinds, step = [], n / real if real else float("inf")
    next_real, r = step / 2, 0
    for i in range(n):
        if real and i >= next_real and r < real:
            kinds.append(models[(r // block) % len(models)])
            r += 1
            next_real += step
        else:
            kinds.append("stream" if i % 4 == 3 else "unary")
    return kinds


class DbOutage:
    """Takes the spend database away and brings it back (PostgreSQL: fault proxy; SQLite: a lock)."""

    def __init__(self, proxy: Any = None, sqlite_path: Path | None = None) -> None:
        self.proxy, self.sqlite_path, self._lock = proxy, sqlite_path, None

    def down(self) -> None:
        if self.proxy is not None:
            self.proxy.set("reset")
        elif self.sqlite_path is not None:
            self._lock = sqlite3.connect(self.sqlite_path, isolation_level=None, timeout=30)
            self._lock.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        if self.proxy is not None:
            self.proxy.set("pass")
        elif self._lock is not None:
            self._lock.execute("COMMIT")
            self._lock.close()
            self._lock = None


async def drive(url: str, key: str, kinds: list[str], concurrency: int, on_progress: Any) -> list[tuple]:
    """Send every request; (t_end, latency_s, kind, status, ok) each. Nothing is dropped: an
    exception is a lost request (status 0)."""
    bodies = {
        "unary": ("/v1/chat/completions", {"model": "gw", "messages": [{"role": "user", "content": "soak"}]}),
        "stream": ("/v1/chat/completions", {"model": "gw", "messages": [{"role": "user", "content": "soak"}],
                                            "stream": True}),
        "text-embedding": ("/v1/embeddings", {"model": "text-embedding", "input": ["soak test sentence", "another"]}),
        "intent": ("/v1/classifications", {"model": "intent", "input": "I forgot my password"}),
        "moderation": ("/v1/moderations", {"model": "moderation", "input": "have a nice day"}),
        "chat": ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "Hi"}],
                                          "max_tokens": 4}),
    }
    results: list[tuple] = []
    it = iter(kinds)
    headers = {"authorization": f"Bearer {key}"}
    t0 = time.monotonic()
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(base_url=url, connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        async def worker() -> None:
            for kind in it:
                path, body = bodies[kind]
                t = time.monotonic()
                status, ok = 0, False
                try:
                    async with s.post(path, json=body, headers=headers) as r:
                        data = await r.read()
                        status = r.status
                        ok = status == 200 and (kind != "stream" or data.rstrip().endswith(b"data: [DONE]"))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                end = time.monotonic()
                results.append((end - t0, end - t, kind, status, ok))
                on_progress(len(results))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * 0.99))]


def run(args: argparse.Namespace) -> dict:
    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.registry.defaults import import_defaults

    work = Path(tempfile.mkdtemp(prefix="modelyard-soak-"))
    home = work / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=list(REAL))
    children: list[Child] = []
    proxy = pg_name = None
    try:
        mock = Child("mock", [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"], work)
        children.append(mock)
        mock_url = mock.wait_for(r"MOCK_LISTENING (http://\S+)", 30).group(1)
        db_url = None
        if args.db == "postgresql":
            db_url, pg_name, proxy = _pg(args)
        cfg: dict[str, Any] = {
            "server": {"host": "127.0.0.1", "access_log": True},
            "memory": {"data_dir": str(home), "active": args.active, "host": 0},
            "auth": {"master_key": MASTER, "refresh_interval_s": 5},
            "spend": {"flush_interval_s": 0.5},
            "router": {"queue": {"size": 1024, "ttl_s": 120}},
            "models": [
                {"name": "gw", "deployments": [{"api_base": f"{mock_url}/v1", "model": "gw"}]},
                {"name": "text-embedding", "deployments": [{"kind": "local", "artifact": "text-embedding"}]},
                {"name": "intent", "deployments": [{"kind": "local", "artifact": "intent"}]},
                {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation"}]},
                {"name": "chat", "deployments": [{"kind": "local", "artifact": "chat", "n_ctx": 512, "n_parallel": 2}]},
            ],
        }
        if db_url:
            cfg["database"] = {"url": db_url}
        (work / "soak.json").write_text(json.dumps(cfg))
        gw = Child("gateway", [sys.executable, "-m", "modelyard", "serve", "--config", str(work / "soak.json"), "--port", "0"],
                   work, stderr_path=os.devnull)
        children.append(gw)
        url = gw.wait_for(r"modelyard listening on (http://\S+)", 180).group(1)
        req = urllib.request.Request(url + "/key/generate", method="POST", data=json.dumps(
            {"key_alias": "soak", "rpm_limit": 10**7, "tpm_limit": 10**10}).encode(),
            headers={"authorization": f"Bearer {MASTER}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            key = json.loads(r.read())["key"]
        outage = DbOutage(proxy=proxy, sqlite_path=None if proxy else home / "modelyard.db") if args.db_down else None
        down_at, up_at = (int(float(x) * args.requests) for x in args.db_down.split(":")) if args.db_down else (-1, -1)
        kinds = plan(args.requests, args.real, args.real_block, tuple(args.models.split(",")))
        done = [0]
        samples: list[dict] = []
        events: dict[str, float] = {}
        stop = threading.Event()
        t0 = time.monotonic()
        state = {"down": False}

        def progress(n: int) -> None:
            done[0] = n
            if outage is not None and not state["down"] and down_at <= n < up_at and "down" not in events:
                state["down"] = True
                events["down"] = time.monotonic() - t0
                threading.Thread(target=outage.down, daemon=True).start()
            elif outage is not None and state["down"] and n >= up_at:
                state["down"] = False
                events["up"] = time.monotonic() - t0
                threading.Thread(target=outage.up, daemon=True).start()

        def sample() -> None:
            while not stop.wait(1.0):
                s = {"t": time.monotonic() - t0, "done": done[0], **_status(gw.pid)}
                with contextlib.suppress(OSError):
                    s.update(_metrics(url))
                samples.append(s)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = asyncio.run(drive(url, key, kinds, args.concurrency, progress))
        duration = time.monotonic() - t0
        if outage is not None and state["down"]:
            outage.up()
        deadline = time.monotonic() + 120
        final: dict[str, float] = {}
        while time.monotonic() < deadline:
            final = _metrics(url)
            if final.get("modelyard_spend_backlog_rows", 1) == 0 and final.get("modelyard_spend_spool_rows", 1) == 0 \
                    and final.get("modelyard_spend_rows_written_total", 0) >= len(results):
                break
            time.sleep(0.2)
        stop.set()
        sampler.join()
        rows = _count_rows(home / "modelyard.db", db_url)
        admin = json.loads(urllib.request.urlopen(urllib.request.Request(
            url + "/admin/models", headers={"authorization": f"Bearer {MASTER}"}), timeout=10).read())["data"]
    finally:
        for c in reversed(children):
            c.stop()
        if proxy is not None:
            proxy.close()
        if pg_name:
            _pg_drop(args, pg_name)
    return summarize(args, results, samples, events, duration, rows, final, admin)


def _pg_admin(args: argparse.Namespace, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(args.pg_admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _pg(args: argparse.Namespace) -> tuple[str, str, Any]:
    from modelyard.testing.fault_proxy import FaultProxy

    name = f"modelyard_soak_{uuid.uuid4().hex[:8]}"
    _pg_admin(args, f'CREATE DATABASE "{name}"')
    proxy = FaultProxy("127.0.0.1", 5432).start() if args.db_down else None
    port = proxy.port if proxy else 5432
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}", name, proxy


def _pg_drop(args: argparse.Namespace, name: str) -> None:
    _pg_admin(args, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _count_rows(db: Path, url: str | None) -> int:
    if url is None:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute("select count(*) from spend_rows").fetchone()[0]
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            return int(await conn.fetchval("select count(*) from spend_rows"))
        finally:
            await conn.close()

    return asyncio.run(count())


def summarize(args: argparse.Namespace, results: list[tuple], samples: list[dict], events: dict[str, float],
              duration: float, rows: int, final: dict[str, float], admin: list[dict]) -> dict:
    n = len(results)
    lost = sum(1 for r in results if not r[4])
    by_kind: dict[str, int] = {}
    for r in results:
        by_kind[r[2]] = by_kind.get(r[2], 0) + 1
    windows: dict[int, list[float]] = {}
    for t_end, lat, *_ in results:
        windows.setdefault(int(t_end), []).append(lat)
    for s in samples:
        s["p99_ms"] = p99(windows.get(int(s["t"]) - 1, [])) * 1000
    mark = next((s for s in samples if s["done"] >= 0.1 * args.requests), samples[0] if samples else None)
    last = samples[-1] if samples else None
    window = [s for s in samples if mark is not None and s["done"] >= mark["done"]]
    growth = _fitted_growth(window, "RssAnon")
    late = _fitted_growth([s for s in samples if s["done"] >= 0.5 * args.requests], "RssAnon")
    fds = round(_fitted_growth(window, "fds") * window[0]["fds"]) if window else 0  # trend, in fds
    swaps = final.get("transitions", 0.0)
    verdicts = {
        "0 lost": lost == 0,
        "spend rows == requests": rows == n == args.requests,
        f"anonymous RSS growth from 10% to the end < {args.max_rss_growth:.0%} (fitted trend)": growth < args.max_rss_growth,
        "open fds not growing (fitted trend ≤ +5)": fds <= 5,
        "models swapped (every few seconds)": swaps >= max(4, duration / 10),
    }
    return {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "machine": machine_info(),
        "args": vars(args), "requests": n, "by_kind": by_kind, "duration_s": duration, "rps": n / duration,
        "lost": lost, "statuses": sorted({r[3] for r in results}), "spend_rows": rows,
        "rss_anon_growth": growth, "rss_anon_growth_second_half": late, "fds_change": fds, "tier_moves": swaps, "events": events,
        "p99_ms_overall": p99([r[1] for r in results]) * 1000,
        "rss_mb": {"at_10pct": mark and mark["VmRSS"] / 2**20, "end": last and last["VmRSS"] / 2**20,
                   "anon_at_10pct": mark and mark["RssAnon"] / 2**20, "anon_end": last and last["RssAnon"] / 2**20,
                   "anon_max": max((s["RssAnon"] for s in samples), default=0) / 2**20},
        "models": {m["name"]: {"loads": m["loads"], "demotions": m["demotions"]} for m in admin},
        "verdicts": verdicts, "samples": samples,
    }


def _fitted_growth(window: list[dict], key: str) -> float:
    """Growth of anonymous RSS over the window, from a least-squares line against requests done:
    models loading and unloading move RSS by tens of MB either way at every swap, a leak moves
    its trend; (fit at the end - fit at the start) / fit at the start."""
    if len(window) < 3:
        return 0.0
    xs = [float(s["done"]) for s in window]
    ys = [float(s[key]) for s in window]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    start = my + slope * (xs[0] - mx)
    return slope * (xs[-1] - xs[0]) / start if start else 0.0


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary["samples"]
    t = [x["t"] for x in s]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    a1.plot(t, [x["VmRSS"] / 2**20 for x in s], label="RSS")
    a1.plot(t, [x["RssAnon"] / 2**20 for x in s], label="anonymous RSS")
    a1.set_ylabel("MB")
    a1.legend(loc="upper left")
    a2.plot(t, [x["p99_ms"] for x in s], color="tab:red", label="p99 of the second")
    a2.set_ylabel("p99 latency, ms")
    a2.set_xlabel("seconds")
    a2.set_yscale("log")
    ev = summary["events"]
    if "down" in ev:
        for a in (a1, a2):
            a.axvspan(ev["down"], ev.get("up", t[-1] if t else ev["down"]), color="grey", alpha=0.2,
                      label="spend database down")
        a2.legend(loc="upper left")
    a1.set_title(f"soak: {summary['requests']:,} requests ({summary['args']['real']:,} to real models), "
                 f"{summary['rps']:,.0f} req/s, {summary['tier_moves']:.0f} tier moves, db {summary['args']['db']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--real", type=int, default=5_000)
    ap.add_argument("--real-block", type=int, default=50, help="real-model requests in a row to one model")
    ap.add_argument("--models", default=",".join(REAL), help="the real models the mix uses (for diagnosis)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--db-down", default=None, metavar="A:B", help="spend database away between these fractions of the run")
    ap.add_argument("--active", default="600MiB", help="active-tier budget (too small for the four real models)")
    ap.add_argument("--max-rss-growth", type=float, default=0.05, help="the RSS verdict's bound (fraction)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    summary = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"soak-{summary['when'][:10]}-{args.requests}-{args.db}" + ("-dbdown" if args.db_down else "")
    (out / f"{tag}.json").write_text(json.dumps(summary, indent=1))
    plot(summary, out / f"{tag}.png")
    r = summary["rss_mb"]
    print(f"{tag}: {summary['requests']:,} requests in {summary['duration_s']:.0f} s ({summary['rps']:,.0f} req/s), "
          f"by kind {summary['by_kind']}; lost {summary['lost']}, statuses {summary['statuses']}, spend rows "
          f"{summary['spend_rows']:,}; RSS {r['at_10pct']:.0f} -> {r['end']:.0f} MB, anonymous {r['anon_at_10pct']:.0f} -> "
          f"{r['anon_end']:.0f} MB (trend {summary['rss_anon_growth']:+.1%}; second half {summary['rss_anon_growth_second_half']:+.1%}; "
          f"max {r['anon_max']:.0f}); fds {summary['fds_change']:+d}; "
          f"{summary['tier_moves']:.0f} tier moves; p99 {summary['p99_ms_overall']:.1f} ms; events {summary['events']}")
    for name, ok in summary["verdicts"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(f"  plot: {out / (tag + '.png')}")
    return 0 if all(summary["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
