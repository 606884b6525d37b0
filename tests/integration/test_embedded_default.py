"""`modelyard serve` with no config: the README's serve command serves the five embedded models.

Runs the real CLI as a subprocess with a fresh MODELYARD_HOME (so the default set is imported into
an empty artifact store first), then uses every model through the openai SDK.
"""

from __future__ import annotations

import os
import signal
import sqlite3

import httpx

from .support import ProcessPool



def _mapped_libraries(pid: int) -> str:
    with open(f"/proc/{pid}/maps") as f:
        return f.read()


def test_serve_without_config_serves_the_five_default_models(procs: ProcessPool, tmp_path) -> None:  # noqa: ANN001
    env = {**os.environ, "MODELYARD_HOME": str(tmp_path / "home")}
    gw = procs.gateway_args([], env=env)
    # Listening means prepared: every engine's heavy imports are done, with nothing loaded yet, so
    # no first request pays for them (they used to cost the first embeddings request ~10 s).
    models = httpx.get(f"{gw.url}/admin/models", timeout=10).json()
    rows = models["data"] if isinstance(models, dict) and "data" in models else models
    assert rows and all(m["loads"] == 0 and m["tier"] == "disk" for m in rows), rows
    maps = _mapped_libraries(gw.pid)
    for lib in ("libtorch_cpu", "xllamacpp", "tokenizers", "sklearn/svm/_liblinear"):
        assert lib in maps, f"{lib} was not imported at start"
    c = gw.client(timeout=120)
    assert {"chat", "coder", "intent", "moderation", "text-embedding"} <= {m.id for m in c.models.list().data}
    chat = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8)
    assert chat.choices[0].message.content and chat.usage.completion_tokens <= 8
    code = c.completions.create(model="coder", prompt="def add(a, b):", max_tokens=8, temperature=0)
    assert code.choices[0].text and code.usage.prompt_tokens > 0
    emb = c.embeddings.create(model="text-embedding", input="hello")
    assert len(emb.data[0].embedding) == 384
    mod = c.moderations.create(input="you are a damn idiot")
    assert mod.results[0].flagged
    r = httpx.post(f"{gw.url}/v1/classifications", json={"model": "intent", "input": "reset my password"}, timeout=120)
    assert r.status_code == 200 and r.json()["data"][0]["labels"]
    store = tmp_path / "home" / "artifacts" / "manifests"
    assert sorted(p.name for p in store.iterdir()) == ["chat", "coder", "intent", "moderation", "text-embedding"]
    gw.signal(signal.SIGTERM)
    assert gw.wait(30) == 0, gw.describe()
    # every tier change the memory manager made reached the database (what `modelyard analyze` reads):
    # each model used was loaded disk → active once, and left the active tier at shutdown
    with sqlite3.connect(tmp_path / "home" / "modelyard.db") as db:
        events = db.execute("SELECT model, from_tier, to_tier, reason, bytes FROM tier_events ORDER BY id").fetchall()
    used = {"chat", "coder", "intent", "moderation", "text-embedding"}
    loads = [e for e in events if e[2] == "active"]
    assert {e[0] for e in loads} == used and all(e[1] == "disk" and e[4] > 0 for e in loads), events
    left = {e[0] for e in events if e[1] == "active" and e[3] == "shutdown"}
    assert left == used, events
