"""``modelyard top``: the operator UI's models and traffic as a terminal table, for SSH sessions.

Reads the server's own JSON endpoints — ``/admin/models`` (tiers, memory) and ``/admin/traffic``
(rates and quantiles over the server's window) — with the master key as a Bearer header, and
redraws a rich table every ``--interval`` seconds (``--once``: a single frame, then exit). Only the
standard library talks HTTP here: the command must work wherever modelyard is installed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

_TIER_STYLE = {"active": "bold green", "host": "yellow", "disk": "dim"}


class TopError(click.ClickException):
    pass


def fetch(url: str, key: str | None, path: str, *, timeout: float = 10.0) -> Any:
    """GET ``url + path`` as JSON; None for 404 (the feature is not configured); TopError otherwise."""
    req = urllib.request.Request(url.rstrip("/") + path, headers={"authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - an operator-given URL
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise TopError(f"{path}: HTTP {exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise TopError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def _bytes(n: int | None) -> str:
    if not n:
        return "–"
    v = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if v < 1024:
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TB"


def _s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s"


def _n(v: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def render(models: dict[str, Any] | None, traffic: dict[str, Any], url: str) -> Group:
    """One frame: a memory line per tier and a table with a row per model."""
    local = {m["name"]: m for m in (models or {}).get("data", [])}
    lines = []
    for tier, mem in (models or {}).get("memory", {}).items():
        budget = mem.get("budget_bytes")
        share = f" ({100 * mem['used_bytes'] / budget:.0f} %)" if budget else ""
        lines.append(Text(f"{tier:<6} {_bytes(mem['used_bytes'])} of {_bytes(budget) if budget else 'unbounded'}{share}"))
    window = traffic.get("window_s") or 0
    table = Table(title=f"modelyard {url} — traffic over {window:.1f} s", title_justify="left", expand=True)
    for col in ("model", "tier", "state", "req/s", "err", "p50", "p99", "ttft p99", "tok/s out", "in flight", "queue",
                "total", "loads/demotions", "active bytes"):
        table.add_column(col, justify="left" if col in ("model", "tier", "state") else "right", no_wrap=True)
    rows = {r["model"]: r for r in traffic.get("data", [])}
    for name in sorted(set(rows) | set(local)):
        r, m = rows.get(name, {}), local.get(name)
        tier = m["tier"] if m else "remote"
        table.add_row(
            name, Text(tier, style=_TIER_STYLE.get(tier, "")), m["state"] if m else "",
            _n(r.get("rps")), _n(r.get("error_rate"), "{:.1%}"), _s(r.get("p50_latency_s")), _s(r.get("p99_latency_s")),
            _s(r.get("p99_ttft_s")), _n(r.get("tokens_out_per_s"), "{:.1f}"), str(r.get("in_flight", 0)),
            str(r.get("queue_depth", 0)), str(r.get("requests_total", 0)),
            f"{m['loads']}/{m['demotions']}" if m else "", _bytes((m or {}).get("bytes", {}).get("active")) if m else "",
        )
    return Group(*lines, table)


def frame(url: str, key: str | None, *, sleep: Callable[[float], None] = time.sleep) -> Group:
    traffic = fetch(url, key, "/admin/traffic")
    if traffic is not None and not traffic.get("window_s"):  # the server's first reading: no rate yet
        sleep(1.0)
        traffic = fetch(url, key, "/admin/traffic")
    models = fetch(url, key, "/admin/models")  # None: no local models on this server
    return render(models, traffic or {}, url)


@click.command("top")
@click.option("--url", default="http://127.0.0.1:8400", show_default=True, help="the modelyard server")
@click.option("--key", envvar="MODELYARD_MASTER_KEY", default=None,
              help="the master key (default: $MODELYARD_MASTER_KEY; none needed on loopback without one)")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(min=0.2), help="seconds between frames")
@click.option("--once", is_flag=True, help="print one frame and exit (scripts, tests)")
def top_command(url: str, key: str | None, interval: float, once: bool) -> None:
    """Live models and traffic of a running server, in the terminal (the /ui's Models and Traffic)."""
    console = Console()
    if once:
        console.print(frame(url, key))
        return
    with Live(frame(url, key), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(frame(url, key))
        except KeyboardInterrupt:
            pass
