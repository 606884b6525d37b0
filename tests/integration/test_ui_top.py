"""`modelyard top --once` in a subprocess against a running server: one frame of models and traffic."""

from __future__ import annotations

import os
import subprocess
import sys

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.defaults import import_defaults

from .support import ProcessPool, closed_port, deployment, model_cfg

KEY = "sk-admin-top"


def top(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "220", "NO_COLOR": "1"}
    env.pop("MODELYARD_MASTER_KEY", None)
    return subprocess.run([sys.executable, "-m", "modelyard", "top", "--once", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_top_once_shows_models_tiers_and_traffic(procs: ProcessPool, tmp_path) -> None:  # noqa: ANN001
    home = tmp_path / "home"
    import_defaults(ArtifactStore(home / "artifacts"), names=["moderation"])
    mock = procs.mock()
    gw = procs.gateway({
        "memory": {"data_dir": str(home)},
        "models": [model_cfg("gpt-4o", deployment(mock, "gpt-4o")),
                   {"name": "moderation", "deployments": [{"kind": "local", "artifact": "moderation"}]}],
    }, env={"MODELYARD_MASTER_KEY": KEY})
    c = gw.client(api_key=KEY)
    for _ in range(7):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert c.moderations.create(model="moderation", input="you are a damn idiot").results[0].flagged
    r = top("--url", gw.url, "--key", KEY)
    assert r.returncode == 0, r.stderr
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│") and len(line.split()) > 2}
    assert "traffic over" in r.stdout and "active" in r.stdout.splitlines()[0]  # the memory line of the active tier
    assert "gpt-4o" in lines and "remote" in lines["gpt-4o"]
    assert " 7 " in lines["gpt-4o"]  # its total requests
    assert "moderation" in lines and "active" in lines["moderation"] and "1/0" in lines["moderation"]  # loads/demotions


def test_top_refuses_a_wrong_key_and_reports_an_unreachable_server(procs: ProcessPool, mock) -> None:  # noqa: ANN001
    gw = procs.gateway({"models": [model_cfg("gpt-4o", deployment(mock, "gpt-4o"))]}, env={"MODELYARD_MASTER_KEY": KEY})
    r = top("--url", gw.url, "--key", "sk-wrong")
    assert r.returncode == 1 and "HTTP 401" in r.stderr and "Incorrect API key" in r.stderr, r.stderr
    r = top("--url", gw.url)
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr
    r = top("--url", f"http://127.0.0.1:{closed_port()}", "--key", KEY)
    assert r.returncode == 1 and "cannot reach" in r.stderr, r.stderr
