"""``modelyard keys`` as an operator runs it: the installed command in a subprocess, on a real
database (SQLite under MODELYARD_HOME, and PostgreSQL through a config file's database.url)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.auth.keys import KEY_PREFIX, split_key
from modelyard.auth.ring import KeyRing
from modelyard.auth.store import KeyStore
from modelyard.db import Database, sqlite_url


MODELYARD = Path(sys.executable).with_name("modelyard")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELYARD_HOME": str(home)}
    env.pop("MODELYARD_MASTER_KEY", None)
    return subprocess.run([str(MODELYARD), "keys", *args], env=env, capture_output=True, text=True, timeout=60)


async def ring_on(url: str) -> tuple[Database, KeyRing]:
    db = Database(url)
    await db.start()
    ring = KeyRing(KeyStore(db), refresh_interval_s=3600)
    await ring.start()
    return db, ring


async def test_create_prints_a_key_that_verifies(home):
    r = run(home, "create", "--alias", "ci", "--team", "t1", "--model", "chat", "--model", "embed", "--rpm", "60",
            "--tpm", "1000", "--max-budget", "2.50", "--budget-duration", "30d", "--duration", "90d",
            "--priority", "high", "--allow-priority-header")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and split_key(lines[0]) is not None  # the key, alone: `KEY=$(modelyard keys create)`
    assert "not shown again" in r.stderr and lines[0] not in r.stderr
    assert "checks keys only when it has a master key" in r.stderr  # this environment has none
    with_master = subprocess.run(
        [str(MODELYARD), "keys", "create"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_MASTER_KEY": "sk-master-for-cli"},
    )
    assert with_master.returncode == 0 and "master key" not in with_master.stderr
    db, ring = await ring_on(sqlite_url(home / "modelyard.db"))
    k = ring.find(lines[0])
    assert k is not None and k.alias == "ci" and k.team_id == "t1" and k.models == ("chat", "embed")
    assert (k.rpm_limit, k.tpm_limit, str(k.max_budget.normalize()), k.budget_duration) == (60, 1000, "2.5", "30d")
    assert k.expires_at is not None and (k.expires_at - k.created_at).days == 90
    assert (k.priority, k.allow_priority_header) == ("high", True)
    plain = ring.find(with_master.stdout.strip())
    assert plain is not None and (plain.priority, plain.allow_priority_header) == (None, False)
    await ring.aclose()
    await db.aclose()
    listed = run(home, "list")
    row = next(line for line in listed.stdout.splitlines() if k.id in line)
    assert "high+header" in row.split() and "priority" in listed.stdout.splitlines()[0].split()
    info = {x["token"]: x for x in json.loads(run(home, "list", "--json").stdout)}
    assert (info[k.id]["priority"], info[k.id]["allow_priority_header"]) == ("high", True)
    assert (info[plain.id]["priority"], info[plain.id]["allow_priority_header"]) == (None, False)


async def test_list_shows_keys_but_never_secrets(home):
    keys = [run(home, "create", "--alias", f"k{i}").stdout.strip() for i in range(3)]
    r = run(home, "list")
    assert r.returncode == 0, r.stderr
    for i, plain in enumerate(keys):
        key_id, secret = split_key(plain)
        assert key_id in r.stdout and f"k{i}" in r.stdout and secret not in r.stdout
    assert r.stdout.splitlines()[0].split()[:3] == ["id", "alias", "team"]
    assert r.stdout.index(split_key(keys[2])[0]) < r.stdout.index(split_key(keys[0])[0])  # newest first
    j = run(home, "list", "--json")
    info = json.loads(j.stdout)
    assert [x["key_alias"] for x in info] == ["k2", "k1", "k0"]
    assert all(split_key(p)[1] not in j.stdout for p in keys)
    assert not any(k in x for x in info for k in ("salt", "digest", "key"))


async def test_revoke_by_key_or_id(home):
    a, b, c = (run(home, "create").stdout.strip() for _ in range(3))
    a_id, b_id = split_key(a)[0], split_key(b)[0]
    r = run(home, "revoke", a, b_id)  # the key itself, or its id
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"revoked {a_id}", f"revoked {b_id}"]
    listed = run(home, "list").stdout
    assert a_id not in listed and b_id not in listed and split_key(c)[0] in listed
    assert "revoked" in run(home, "list", "--all").stdout
    db, ring = await ring_on(sqlite_url(home / "modelyard.db"))
    assert ring.find(a).revoked_at is not None and ring.find(c).revoked_at is None
    await ring.aclose()
    await db.aclose()
    again = run(home, "revoke", f"{KEY_PREFIX}{a_id}…")  # as displayed in messages
    assert again.returncode == 0 and "already revoked" in again.stderr
    unknown = run(home, "revoke", "0123456789ab")
    assert unknown.returncode == 1 and "no such key: 0123456789ab" in unknown.stderr


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["create", "--rpm", "-1"], "--rpm"),
        (["create", "--rpm", "ten"], "--rpm"),
        (["create", "--tpm", "-5"], "--tpm"),
        (["create", "--max-budget", "lots"], "--max-budget"),
        (["create", "--max-budget", "-1"], "--max-budget"),
        (["create", "--budget-duration", "monthly"], "--budget-duration"),
        (["create", "--duration", "0d"], "--duration"),
        (["create", "--alias", ""], "--alias"),
        (["create", "--priority", "urgent"], "--priority"),
        (["create", "--priority", "HIGH"], "--priority"),
        (["create", "--bogus"], "--bogus"),
        (["revoke"], "KEY_OR_ID"),
        (["revoke", "not-a-key"], "KEY_OR_ID"),
        (["list", "--config", "/nonexistent/modelyard.yaml"], "file not found"),
    ],
)
def test_bad_input_exits_2_naming_the_option(home, args, names):
    r = run(home, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert names in r.stderr and "Traceback" not in r.stderr
    assert not (home / "modelyard.db").exists() or args[0] == "list"  # nothing created on bad input
    assert r.stdout == ""


def test_unreachable_database_exits_1(home, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("database:\n  url: postgresql+asyncpg://nobody@127.0.0.1:1/none\n")
    r = run(home, "list", "--config", str(cfg))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: ") and "127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr


async def test_postgresql_through_the_config(home, tmp_path, pg_db):
    _, url = pg_db
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"database:\n  url: {url}\n")
    r = run(home, "create", "--config", str(cfg), "--alias", "pg")
    assert r.returncode == 0, r.stderr
    plain = r.stdout.strip()
    db, ring = await ring_on(url)
    assert ring.find(plain).alias == "pg"
    assert not (home / "modelyard.db").exists()  # the configured database, not the default
    assert run(home, "revoke", "--config", str(cfg), plain).returncode == 0
    await asyncio.wait_for(ring.refresh(), 10)
    assert ring.find(plain).revoked_at is not None
    await ring.aclose()
    await db.aclose()
