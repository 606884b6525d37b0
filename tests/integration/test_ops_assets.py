"""The ops assets in ops/: Prometheus rules pass `promtool check rules`, and every metric the rules
and the Grafana dashboard query is one a running modelyard exposes on /metrics. The dashboard's
spend panels (SQL on the spend store) run against a real PostgreSQL spend database."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults

from .services import missing
from .support import REPO, MockUpstream, ProcessPool, deployment, model_cfg

RULES = REPO / "ops" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "ops" / "grafana" / "modelyard.json"
# a PromQL metric name: an identifier followed by a selector or range, or standing alone as an operand
_NAME = re.compile(r"\b(modelyard_[a-zA-Z0-9_]+)\b")
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
             "gauge": ("",), "summary": ("_sum", "_count"), "unknown": ("",)}


def promql_exprs() -> list[tuple[str, str]]:
    out = [(f"rule {r['alert']}", r["expr"]) for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dash = json.loads(DASHBOARD.read_text())
    for p in dash["panels"]:
        for t in p.get("targets", []):
            if "expr" in t:
                out.append((f"panel {p['title']!r}", t["expr"]))
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict) and "label_values" in q.get("query", ""):
            out.append((f"variable {v['name']}", q["query"]))
    return out


def sql_targets() -> list[str]:
    return [t["rawSql"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", []) if "rawSql" in t]


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing("promtool not found (Debian: apt-get install -y prometheus)")
    r = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_the_dashboard_is_complete() -> None:
    dash = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("requests per second", "latency", "first token", "tokens", "cost", "tier", "swaps", "memory",
                  "engine process restarts", "limiter refusals"):
        assert topic in titles, topic
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"] and p["datasource"]["uid"] in ("${prometheus}", "${spend_db}"), p["title"]


def test_every_metric_queried_is_exposed_by_a_running_server(procs: ProcessPool, tmp_path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=["moderation"])  # a local model: memory metrics
    mock: MockUpstream = procs.mock()
    gw = procs.gateway({
        "memory": {"data_dir": str(home)},
        "models": [model_cfg("gpt-4o", deployment(mock, "gpt-4o")),
                   {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation"}]}],
    })
    text = gw.metrics_text()
    exposed: set[str] = set()
    for fam in text_string_to_metric_families(text):
        exposed.update(fam.name + s for s in _SUFFIXES.get(fam.type, ("",)))
        exposed.update(s.name for s in fam.samples)
    used: dict[str, list[str]] = {}
    for where, expr in promql_exprs():
        names = _NAME.findall(expr)
        assert names, f"{where}: no modelyard metric in {expr!r}"
        for n in names:
            used.setdefault(n, []).append(where)
    absent = {n: w for n, w in used.items() if n not in exposed}
    assert not absent, f"queried but not on /metrics: {absent}"
    assert len(used) >= 15  # the assets cover the surface (not a trivially passing subset)


async def test_the_spend_panels_sql_runs_on_the_spend_store(pg_db) -> None:  # noqa: ANN001
    """Grafana's macros replaced by what its PostgreSQL data source expands them to."""
    import datetime as dt
    from decimal import Decimal

    from modelyard.accounting.store import SpendRow, SpendStore

    _, url = pg_db
    store = SpendStore(url)
    await store.start()
    try:
        now = dt.datetime.now(dt.timezone.utc)
        await store.insert_many([
            SpendRow("a", now, "k1", "t1", "chat", "chat", 10, 5, Decimal("0.002"), True, 12.0, 200),
            SpendRow("b", now, "k1", "t1", "chat", "chat", 10, 5, Decimal("0.002"), True, 12.0, 500),
        ])
        async with store.engine.connect() as conn:
            for sql in sql_targets():
                q = re.sub(r"\$__timeGroupAlias\(([^,]+\)), 1h\)", r"date_trunc('hour', \1) AS time", sql)
                q = re.sub(r"\$__timeFilter\((.+?\))\)", r"\1 BETWEEN now() - interval '1 day' AND now() + interval '1 hour'", q)
                assert "$__" not in q, q
                rows = (await conn.exec_driver_sql(q)).all()
                assert rows, q
                if "cost_per_success" in q:
                    assert rows[0].model == "chat" and float(rows[0].cost_per_success) == pytest.approx(0.004)
    finally:
        await store.aclose()
