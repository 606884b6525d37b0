"""Traces for the simulator: a CSV file, or the scenario's nine models from its diurnal generator.

CSV: a header with the columns ``ts, model, prompt_tokens, completion_tokens`` (any order, extra
columns ignored), one request a line. ``ts`` is seconds (a number; the trace is shifted so that its
first request is at 0) or an ISO 8601 time. Rows need not be sorted. Every problem raises
``ConfigError`` naming the file and line.
"""

from __future__ import annotations

import csv
import datetime as dt
from array import array
from collections.abc import Collection, Iterable
from pathlib import Path
from types import MappingProxyType

from modelyard.errors import ConfigError

from .scenario import SCENARIO9, ScenarioModel, arrivals
from .simulate import Trace

COLUMNS = ("ts", "model", "prompt_tokens", "completion_tokens")
SCALES = MappingProxyType({"small": 0.002, "medium": 0.05, "full": 1.0})
MONDAY = dt.datetime(2026, 11, 30)  # a Monday: day 0 of a synthetic trace


def build(rows: Iterable[tuple[float, str, int, int]], models: Collection[str] | None = None) -> Trace:
    """A Trace from (ts, model, prompt, completion) rows, sorted by ts (stable) and shifted to start at 0."""
    data = sorted(rows, key=lambda r: r[0])
    names = tuple(models) if models is not None else tuple(sorted({r[1] for r in data}))
    index = {n: i for i, n in enumerate(names)}
    t0 = data[0][0] if data else 0.0
    return Trace(names, array("d", (r[0] - t0 for r in data)), array("i", (index[r[1]] for r in data)),
                 array("i", (r[2] for r in data)), array("i", (r[3] for r in data)))


def _ts(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        pass
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


def read_csv(path: str | Path, known: Collection[str]) -> Trace:
    """Read a CSV trace whose models must all be in ``known``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read the trace: {getattr(exc, 'strerror', None) or exc}") from None
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if header is None:
        raise ConfigError(f"{p}: empty trace (expected a header: {', '.join(COLUMNS)})")
    cols = [h.strip().lower() for h in header]
    missing = [c for c in COLUMNS if c not in cols]
    if missing:
        raise ConfigError(f"{p} line 1: missing column(s) {', '.join(missing)} (header: {', '.join(cols)})")
    at = {c: cols.index(c) for c in COLUMNS}
    rows: list[tuple[float, str, int, int]] = []
    for line_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(cols):
            raise ConfigError(f"{p} line {line_no}: {len(row)} field(s), the header has {len(cols)}")
        ts_s = row[at["ts"]].strip()
        try:
            ts = _ts(ts_s)
        except ValueError:
            raise ConfigError(f"{p} line {line_no}: ts: {ts_s!r} is neither a number of seconds nor an ISO 8601 time") from None
        model = row[at["model"]].strip()
        if model not in known:
            raise ConfigError(f"{p} line {line_no}: model: unknown model {model!r} (known: {', '.join(sorted(known))})")
        counts = []
        for c in ("prompt_tokens", "completion_tokens"):
            v = row[at[c]].strip()
            try:
                n = int(v)
            except ValueError:
                raise ConfigError(f"{p} line {line_no}: {c}: {v!r} is not a whole number") from None
            if n < 0:
                raise ConfigError(f"{p} line {line_no}: {c}: {n} is negative")
            counts.append(n)
        rows.append((ts, model, counts[0], counts[1]))
    if not rows:
        raise ConfigError(f"{p}: the trace has no requests")
    return build(rows, sorted(known))


def parse_scale(value: str) -> float:
    """``small`` | ``medium`` | ``full`` or a positive number: the multiplier of every rate."""
    if value in SCALES:
        return SCALES[value]
    try:
        s = float(value)
    except ValueError:
        s = -1.0
    if not s > 0:
        raise ConfigError(f"--scale: {value!r} is not one of {', '.join(SCALES)} or a positive number")
    return s


def synthetic(days: float, scale: float, seed: int = 0, start_hour: float = 0.0,
              models: tuple[ScenarioModel, ...] = SCENARIO9) -> Trace:
    """The scenario's diurnal Poisson arrivals (``scenario.arrivals``) from Monday ``start_hour``."""
    start = MONDAY + dt.timedelta(hours=start_hour)
    index = {m.name: i for i, m in enumerate(models)}
    ts, mod, pr, co = array("d"), array("i"), array("i"), array("i")
    for off, m, p, c in arrivals(models, start=start, seconds=days * 86400.0, scale=scale, seed=seed):
        ts.append(off)
        mod.append(index[m.name])
        pr.append(p)
        co.append(c)
    return Trace(tuple(m.name for m in models), ts, mod, pr, co)
