"""``modelyard analyze`` against REAL databases: a generated 14-day history of the scenario's nine
models (``planning.gen_history``) loaded into SQLite (always) and PostgreSQL (skipped, saying why,
when unreachable; under CI=true that fails), the CLI run on it, the numbers checked against what was
generated. Plus: a real memory manager's tier changes land in ``tier_events``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from modelyard.accounting.tier_events import TierEventWriter, tier_events
from modelyard.cli import main
from modelyard.db import Database
from modelyard.memory.manager import MemoryManager, ModelSpec
from modelyard.memory.policy import Budgets
from modelyard.planning.gen_history import load
from modelyard.planning.scenario import planner_spec
from modelyard.runtime.base import Footprint
from modelyard.testing.clock import ManualClock

UTC = dt.timezone.utc
END = dt.datetime(2026, 11, 30, tzinfo=UTC)  # a Monday: the history is Mon 16 .. Sun 29 November
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'modelyard.db'}"
    return request.getfixturevalue("pg_database")


def _files(tmp_path: Path, url: str) -> tuple[Path, Path]:
    cfg, spec = tmp_path / "modelyard.yaml", tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump({"database": {"url": url}}))
    spec.write_text(yaml.safe_dump(planner_spec()))
    return cfg, spec


def test_analyze_a_generated_14_day_history(url, tmp_path):
    gen = asyncio.run(load(url, END - dt.timedelta(days=14), 14))
    assert 100_000 < sum(gen.counts.values()) < 300_000
    cfg, spec = _files(tmp_path, url)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["analyze", "--config", str(cfg), "--since", "14d", "--until", END.isoformat(),
                                    "--spec", str(spec), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    models = doc["models"]

    # every generated request is counted, per model and per hour
    assert doc["rows"] == sum(gen.counts.values())
    assert {n: m["requests"] for n, m in models.items()} == dict(gen.counts)
    per_hour: dict[str, int] = {}
    for h in doc["hours"]:
        per_hour[h["model"]] = per_hour.get(h["model"], 0) + h["requests"]
    assert per_hour == dict(gen.counts)

    # the coding assistant: nothing from midnight to 06:00, a pre-warm before 09:00 on weekdays
    code = models["codestral-22b"]
    assert not [h for h in doc["hours"] if h["model"] == "codestral-22b" and int(h["hour"][11:13]) < 6]
    assert code["weekday_profile"][:6] == [0.0] * 6 and code["weekend_profile"][:6] == [0.0] * 6
    assert {"cron": "50 8 * * 1-5", "days": "1-5", "busy_from": "09:00", "busy_until": "19:00"} in \
        code["recommendation"]["prewarm"]
    assert code["recommendation"]["tier"] in ("warm", "cold")

    # the classifier is hot (pinned, kept forever); the summariser is not, and is pre-warmed for its bursts
    bert = models["bert-classifier"]["recommendation"]
    assert (bert["tier"], bert["pin"], bert["keep_alive_s"]) == ("hot", True, None)
    summ = models["mistral-7b-summarizer"]["recommendation"]
    assert summ["tier"] in ("cold", "warm") and not summ["pin"]
    assert {p["busy_from"] for p in summ["prewarm"]} == {"10:00", "14:00", "16:00"}

    # latencies and busy fractions follow the generator's service model (chat: ~25 ms per completion token)
    assert 1 < models["bert-classifier"]["p50_ms"] < 10 < models["llama-3-8b-chat"]["p50_ms"]
    assert 0 < models["llama-3-8b-support"]["busy_fraction"] < 0.1

    # the tier events the generator wrote are all read back
    assert sum(n for m in models.values() for n in m["tier_events"].values()) == len(gen.events)
    assert models["codestral-22b"]["tier_events"]["disk→active load"] >= 1

    # consolidation: dedicated vs packed, with the model that fits no GPU shown, not hidden
    c = doc["consolidation"]
    assert c["dedicated"]["gpu_count"] == 9 and c["dedicated"]["cost_per_month"] == pytest.approx(9 * 3.2 * 730)
    assert 0 < c["packed"]["gpu_count"] < c["dedicated"]["gpu_count"]
    assert c["packed"]["cost_per_month"] == pytest.approx(c["packed"]["gpu_count"] * 3.2 * 730)
    assert [u["name"] for u in c["packed"]["unplaceable"]] == ["codestral-22b"]
    assert [u["name"] for u in c["dedicated"]["unplaceable"]] == ["codestral-22b"]
    assert len(c["per_hour"]) == 24 and all(0 < h["gpu_count"] <= c["packed"]["gpu_count"] for h in c["per_hour"])
    assert "codestral-22b" not in c["per_hour"][3]["models"] and "codestral-22b" in c["per_hour"][11]["models"]
    observed = {m["name"]: m for m in c["spec"]["models"]}
    assert observed["bert-classifier"]["peak_requests_per_sec"] == pytest.approx(models["bert-classifier"]["peak_rps"],
                                                                                 rel=1e-3)

    # the files
    for name in ("analyze.md", "analyze.json", "load.png", "gpus_per_hour.png"):
        assert (out / name).stat().st_size > 0
    for name in ("load.png", "gpus_per_hour.png"):
        assert (out / name).read_bytes()[:8] == PNG
    md = (out / "analyze.md").read_text()
    assert "unplaceable: codestral-22b" in md and "| bert-classifier | hot |" in md
    assert json.loads((out / "analyze.json").read_text())["rows"] == doc["rows"]


def test_empty_database_exits_2_saying_what_is_missing(tmp_path):
    cfg, _ = _files(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    res = CliRunner().invoke(main, ["analyze", "--config", str(cfg), "--since", "14d", "--until", END.isoformat()])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: no spend rows since 2026-11-16T00:00:00Z") and len(res.stderr.splitlines()) == 1
    assert "Traceback" not in res.output


def test_short_history_exits_2_saying_how_much_there_is(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'short.db'}"
    asyncio.run(load(url, END - dt.timedelta(hours=6), 0.25))
    cfg, _ = _files(tmp_path, url)
    res = CliRunner().invoke(main, ["analyze", "--config", str(cfg), "--since", "14d", "--until", END.isoformat()])
    assert res.exit_code == 2
    assert "only 6.0 h of history" in res.stderr and "need at least 24 h" in res.stderr
    assert len(res.stderr.splitlines()) == 1


def test_bad_arguments_are_one_line(tmp_path):
    cfg, _ = _files(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text("models: []\n")
    for args, needle in ((["--since", "fortnight"], "--since 'fortnight'"), (["--spec", str(bad_spec)], "models")):
        res = CliRunner().invoke(main, ["analyze", "--config", str(cfg), *args])
        assert res.exit_code == 2, res.output
        assert res.stderr.startswith("error: ") and needle in res.stderr and len(res.stderr.splitlines()) == 1


class _Engine:
    supports_host_tier = True

    def load(self, artifact_path, opts):  # noqa: ANN001, ANN201
        return Footprint(1000, 24, 0)

    def warmup(self) -> None: ...
    def to_host(self) -> None: ...
    def to_active(self) -> None: ...
    def unload(self) -> None: ...


async def test_memory_manager_tier_changes_land_in_tier_events(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'modelyard.db'}")
    await db.start()
    wall = [dt.datetime(2026, 11, 30, 9, 0, tzinfo=UTC)]
    writer = TierEventWriter(db, wall_clock=lambda: wall[0], names={"coder/0": "coder"}, flush_interval_s=0.05)
    await writer.start()
    mm = MemoryManager(Budgets(active=10_000, host=10_000), clock=ManualClock(), tier_event=writer.record,
                       reap_interval_s=None)
    mm.register(ModelSpec("coder/0", _Engine, "/models/coder.gguf"))
    try:
        await mm.load("coder/0")
        assert writer.pending <= 1  # recorded without waiting for the database
        wall[0] += dt.timedelta(minutes=5)
        await mm.demote("coder/0", "host")
        wall[0] += dt.timedelta(minutes=5)
        await mm.unload("coder/0")
    finally:
        await mm.aclose()
        await writer.aclose()
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(tier_events).order_by(tier_events.c.id))).all()
    await db.aclose()
    got = [(r.model, r.deployment, r.from_tier, r.to_tier, r.bytes, r.reason, r.ts_us) for r in rows]
    t0 = 1_796_029_200_000_000  # 2026-11-30T09:00Z in µs
    assert got == [
        ("coder", "coder/0", "disk", "active", 1024, "load", t0),
        ("coder", "coder/0", "active", "host", 1000, "demote", t0 + 300_000_000),  # weights only on host
        ("coder", "coder/0", "host", "disk", 1000, "unload", t0 + 600_000_000),
    ]
    assert writer.written == 3 and writer.dropped == 0
