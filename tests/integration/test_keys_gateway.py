"""Keys, rate limits and budgets end to end: a real gateway process with a master key, virtual keys
made through LiteLLM's /key/* API, the official SDK as the client, a real SQLite database.

Every refusal is checked for its status, its OpenAI error shape (validated against the spec's
``ErrorResponse``), the headers a client needs (``Retry-After``, ``x-ratelimit-*``,
``WWW-Authenticate``) and for never containing key material.
"""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from .support import REPO, Gateway, MockUpstream, ProcessPool, assert_error, deployment, model_cfg, wait_until

MASTER = "sk-master-0123456789"
MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def upstreams(module_procs: ProcessPool) -> tuple[MockUpstream, MockUpstream]:
    return module_procs.mock(), module_procs.mock()


@pytest.fixture(scope="module")
def gw(module_procs: ProcessPool, upstreams: tuple[MockUpstream, MockUpstream], tmp_path_factory) -> Gateway:  # noqa: ANN001
    a, b = upstreams
    home = tmp_path_factory.mktemp("keys-home")
    config = {
        "memory": {"data_dir": str(home)},
        "auth": {"master_key": MASTER, "refresh_interval_s": 0.5},
        "spend": {"flush_interval_s": 0.1},
        "router": {"retry": {"num_retries": 0}},
        "models": [
            model_cfg("chat", deployment(a, "up-chat"), aliases=["chat-alias"]),
            model_cfg("other", deployment(a, "up-other")),
            model_cfg("priced", deployment(a, "up-priced"), price={"input_per_1k": 100.0, "output_per_1k": 100.0}),
            model_cfg("slow-model", deployment(a, "up-limited"), rpm=2),
            model_cfg("split", deployment(a, "up-split", rpm=2, name="split/a"), deployment(b, "up-split", name="split/b"),
                      strategy="round_robin"),
            model_cfg("tiny", deployment(a, "up-tiny", rpm=1)),
        ],
    }
    gw = module_procs.gateway(config)
    gw.home = home  # type: ignore[attr-defined]
    return gw


def admin(gw: Gateway) -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER}"}


def generate(gw: Gateway, **fields: Any) -> tuple[str, dict[str, Any]]:
    r = gw.http.post("/key/generate", json=fields, headers=admin(gw))
    assert r.status_code == 200, r.text
    body = r.json()
    return body["key"], body


def chat(gw: Gateway, key: str, model: str = "chat", **kw: Any) -> httpx.Response:
    return gw.http.post(
        "/v1/chat/completions", json={"model": model, "messages": MSG, **kw}, headers={"authorization": f"Bearer {key}"}
    )


# --- authentication ------------------------------------------------------------------------------


def test_missing_wrong_and_malformed_keys_are_401(gw: Gateway) -> None:
    r = gw.http.post("/v1/chat/completions", json={"model": "chat", "messages": MSG})
    err = assert_error(r, 401, code="missing_api_key")
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Bearer" in err["message"]
    for header in ("Bearer sk-my-000000000000" + "0" * 48, "Bearer nonsense", "Basic abc", "Bearer", MASTER):
        r = gw.http.post("/v1/chat/completions", json={"model": "chat", "messages": MSG}, headers={"authorization": header})
        err = assert_error(r, 401)
        secret = header.split(" ")[-1]
        assert len(secret) < 10 or secret not in err["message"]
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong").chat.completions.create(model="chat", messages=MSG)
    # auth comes before anything else: an unknown model or a bad body still says 401 first
    assert_error(gw.http.post("/v1/chat/completions", content=b"{nope"), 401)
    assert_error(gw.http.get("/v1/models"), 401)


def test_master_key_serves_and_administers(gw: Gateway) -> None:
    c = gw.client(api_key=MASTER)
    assert c.chat.completions.create(model="chat", messages=MSG).choices[0].message.content
    assert {m.id for m in c.models.list()} >= {"chat", "other", "chat-alias"}
    assert gw.http.get("/admin/models", headers=admin(gw)).status_code in (200, 404)  # 404: no local models
    assert gw.http.get("/spend/report", headers=admin(gw)).status_code == 200
    assert_error(gw.http.get("/spend/report"), 401)


def test_virtual_key_lifecycle_through_the_sdk(gw: Gateway) -> None:
    key, body = generate(gw, key_alias="team-a-bot", team_id="team-a", models=["chat"], metadata={"owner": "ana"})
    assert key.startswith("sk-my-") and body["key_alias"] == "team-a-bot" and body["team_id"] == "team-a"
    assert body["token"] and body["token"] in key and "salt" not in body and "digest" not in body
    c = gw.client(api_key=key)
    reply = c.chat.completions.create(model="chat", messages=MSG)
    assert reply.choices[0].message.content
    assert c.chat.completions.create(model="chat-alias", messages=MSG).choices  # an alias of an allowed model
    assert sorted(m.id for m in c.models.list()) == ["chat", "chat-alias"]  # the key sees only its models
    with pytest.raises(openai.PermissionDeniedError) as denied:
        c.chat.completions.create(model="other", messages=MSG)
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    assert_error(chat(gw, key, "other"), 403, code="model_not_allowed")

    # a key may read its own info, not another's; admin endpoints need the master key
    me = gw.http.get("/key/info", headers={"authorization": f"Bearer {key}"})
    assert me.status_code == 200 and me.json()["info"]["key_alias"] == "team-a-bot"
    other_key, other = generate(gw)
    assert_error(gw.http.get("/key/info", params={"key": other["token"]}, headers={"authorization": f"Bearer {key}"}), 403)
    for method, path in (("GET", "/admin/models"), ("GET", "/spend/logs"), ("POST", "/key/generate"), ("GET", "/key/list")):
        r = gw.http.request(method, path, json={} if method == "POST" else None, headers={"authorization": f"Bearer {key}"})
        err = assert_error(r, 403)
        assert key not in r.text and key[len("sk-my-") + 12:] not in err["message"]
    info = gw.http.get("/key/info", params={"key": key}, headers=admin(gw)).json()
    assert info["key"] == body["token"] and info["info"]["models"] == ["chat"]

    # the spend rows carry the key's token and team
    rows = wait_until(
        lambda: (lambda d: d if len(d) == 4 else None)(
            gw.http.get("/spend/logs", params={"key_hash": body["token"]}, headers=admin(gw)).json()["data"]
        ),
        5, "spend rows of the key",
    )
    assert {r["team"] for r in rows} == {"team-a"}
    assert sorted(r["status"] for r in rows) == [200, 200, 403, 403]  # refusals are rows too (error rate)

    # revoke: 401 at once (this replica), and a second delete finds nothing to revoke
    r = gw.http.post("/key/delete", json={"keys": [key, other["token"]]}, headers=admin(gw))
    assert r.status_code == 200 and sorted(r.json()["deleted_keys"]) == sorted([body["token"], other["token"]])
    assert_error(chat(gw, key), 401, code="revoked_api_key")
    assert_error(chat(gw, other_key), 401, code="revoked_api_key")
    assert gw.http.post("/key/delete", json={"keys": [key]}, headers=admin(gw)).json()["deleted_keys"] == []

    # the plaintext appears nowhere in the gateway's own output
    assert key not in gw.stderr_text() and key[len("sk-my-") + 12:] not in gw.stderr_text()
    assert MASTER not in gw.stderr_text()


def test_litellm_extras_user_id_and_delete_by_alias(gw: Gateway) -> None:
    key, body = generate(gw, key_alias="by-alias", user_id="ana@example.com", metadata={"cost_center": "42"})
    assert body["metadata"] == {"cost_center": "42", "user_id": "ana@example.com"}
    assert chat(gw, key).status_code == 200
    r = gw.http.post("/key/delete", json={"key_aliases": ["by-alias"]}, headers=admin(gw))
    assert r.status_code == 200 and r.json()["deleted_keys"] == [body["token"]]
    assert_error(chat(gw, key), 401, code="revoked_api_key")


def test_expired_key_is_401(gw: Gateway) -> None:
    key, body = generate(gw, duration="1s")
    assert body["expires"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and chat(gw, key).status_code == 200:
        time.sleep(0.2)
    err = assert_error(chat(gw, key), 401, code="expired_api_key")
    assert "expired" in err["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"rpm_limit": "ten"}, "rpm_limit"),
        ({"tpm_limit": True}, "tpm_limit"),
        ({"max_budget": -5}, "max_budget"),
        ({"max_budget": "lots"}, "max_budget"),
        ({"budget_duration": "fortnight"}, "budget_duration"),
        ({"budget_duration": "0d"}, "budget_duration"),
        ({"duration": "-1d"}, "duration"),
        ({"models": "chat"}, "models"),
        ({"models": ["no-such-model"]}, "models"),
        ({"key_alias": 7}, "key_alias"),
        ({"user_id": 5}, "user_id"),
        ({"user_id": "u1", "metadata": ["x"]}, "metadata"),
        ({"spend": 3}, "spend"),
        ({"max_parallel_requests": 3}, "max_parallel_requests"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 2}, "priority"),
        ({"allow_priority_header": "yes"}, "allow_priority_header"),
    ],
)
def test_generate_rejects_bad_fields(gw: Gateway, fields: dict[str, Any], param: str) -> None:
    r = gw.http.post("/key/generate", json=fields, headers=admin(gw))
    err = assert_error(r, 400, param=param)
    assert err["param"] == param


def test_key_endpoints_bad_bodies(gw: Gateway) -> None:
    assert_error(gw.http.post("/key/generate", content=b"[1,2", headers=admin(gw)), 400)
    assert_error(gw.http.post("/key/generate", json=[1], headers=admin(gw)), 400)
    assert_error(gw.http.post("/key/delete", json={"keys": "sk-x"}, headers=admin(gw)), 400, param="keys")
    assert_error(gw.http.post("/key/delete", json={"keys": []}, headers=admin(gw)), 400, param="keys")
    assert_error(gw.http.post("/key/delete", json={"key_aliases": "x"}, headers=admin(gw)), 400, param="key_aliases")
    assert_error(gw.http.post("/key/delete", json={"key_aliases": ["no-such-alias"]}, headers=admin(gw)), 404)
    r = gw.http.post("/key/delete", json={"keys": ["sk-my-" + "a" * 60]}, headers=admin(gw))
    assert_error(r, 404, code="key_not_found")
    assert "a" * 30 not in r.text  # the secret half is never echoed
    assert_error(gw.http.get("/key/info", params={"key": "nope"}, headers=admin(gw)), 404)
    assert_error(gw.http.get("/key/info", headers=admin(gw)), 400, param="key")
    assert_error(gw.http.get("/key/generate", headers=admin(gw)), 405)


# --- rate limits ---------------------------------------------------------------------------------


def test_key_rpm_limit_429_with_headers(gw: Gateway) -> None:
    key, _ = generate(gw, rpm_limit=3)
    remaining = []
    for _ in range(3):
        r = chat(gw, key)
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(int(r.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [2, 1, 0]
    r = chat(gw, key)
    err = assert_error(r, 429, code="rate_limit_exceeded")
    assert "this API key" in err["message"] and "rpm" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 61
    assert r.headers["x-ratelimit-remaining-requests"] == "0" and r.headers["x-ratelimit-reset-requests"]
    with pytest.raises(openai.RateLimitError):
        gw.client(api_key=key).chat.completions.create(model="chat", messages=MSG)
    # another key is not affected
    other, _ = generate(gw, rpm_limit=3)
    assert chat(gw, other).status_code == 200
    assert (gw.metric("modelyard_rate_limited_total", model="chat", scope="key") or 0) >= 2


def test_key_tpm_estimate_then_settle(gw: Gateway) -> None:
    key, _ = generate(gw, tpm_limit=400)
    too_big = chat(gw, key, max_tokens=1000)
    err = assert_error(too_big, 429, code="rate_limit_exceeded")
    assert "too large" in err["message"].lower()
    # each request is estimated at ~prompt/4 + max_tokens=150, then settled to the real usage
    # (a few tokens), so far more than 400/150 requests fit in the minute
    ok = sum(chat(gw, key, max_tokens=150).status_code == 200 for _ in range(8))
    assert ok == 8
    r = chat(gw, key, max_tokens=150)
    used = 400 - int(r.headers["x-ratelimit-remaining-tokens"])
    assert used < 400


def test_model_rpm_limit_all_keys_together(gw: Gateway) -> None:
    k1, _ = generate(gw)
    k2, _ = generate(gw)
    statuses = [chat(gw, k, "slow-model").status_code for k in (k1, k2, k1, k2)]
    assert statuses == [200, 200, 429, 429]
    err = assert_error(chat(gw, MASTER, "slow-model"), 429)
    assert "model 'slow-model'" in err["message"]


def test_deployment_at_its_limit_is_skipped(gw: Gateway, upstreams: tuple[MockUpstream, MockUpstream]) -> None:
    a, b = upstreams
    before_a, before_b = a.stats()["requests"], b.stats()["requests"]
    statuses = [chat(gw, MASTER, "split").status_code for _ in range(6)]
    assert statuses == [200] * 6  # never the client's problem while a deployment has room
    got_a, got_b = a.stats()["requests"] - before_a, b.stats()["requests"] - before_b
    assert got_a == 2 and got_b == 4, (got_a, got_b)
    assert (gw.metric("modelyard_rate_limited_total", model="split", scope="deployment") or 0) >= 1  # skips counted
    # a model whose only deployment is at its limit: 429 with Retry-After
    assert chat(gw, MASTER, "tiny").status_code == 200
    r = chat(gw, MASTER, "tiny")
    err = assert_error(r, 429, code="rate_limit_exceeded")
    assert "rate limit" in err["message"] and int(r.headers["retry-after"]) >= 1


# --- budgets -------------------------------------------------------------------------------------


def test_budget_exhausted_mid_traffic(gw: Gateway) -> None:
    # priced at 0.1 per token: a request costs a few units; the budget lasts a handful of requests
    key, body = generate(gw, max_budget=5, budget_duration="30d", key_alias="capped")
    c = gw.client(api_key=key)
    served = 0
    refused: openai.RateLimitError | None = None
    for _ in range(100):
        try:
            c.chat.completions.create(model="priced", messages=MSG)
            served += 1
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and served >= 1
    assert refused.code == "budget_exceeded"
    msg = refused.body["message"] if isinstance(refused.body, dict) else str(refused)
    assert "capped" in msg and "max_budget 5" in msg and "30d" in msg and "resets at" in msg
    assert int(refused.response.headers["retry-after"]) > 86_400  # about 30 days
    # it stays refused, on every model; the spend rows add up to at least the budget
    assert_error(chat(gw, key, "chat"), 429, code="budget_exceeded")
    assert (gw.metric("modelyard_budget_exceeded_total") or 0) >= 2
    rows = wait_until(
        lambda: (lambda d: d if len(d) == served else None)(
            gw.http.get("/spend/logs", params={"key_hash": body["token"]}, headers=admin(gw)).json()["data"]
        ),
        5, "the key's spend rows",
    )
    total = sum(Decimal(r["cost"]) for r in rows)
    assert total >= 5 and total - max(Decimal(r["cost"]) for r in rows) < 5
    info = gw.http.get("/key/info", params={"key": body["token"]}, headers=admin(gw)).json()["info"]
    assert info["spend"] >= 5 and info["budget_reset_at"]


def test_keys_made_by_the_cli_work_on_the_running_gateway(gw: Gateway) -> None:
    env = {"MODELYARD_HOME": str(gw.home), "PATH": "/usr/bin:/bin"}  # type: ignore[attr-defined]
    out = subprocess.run(
        [sys.executable, "-m", "modelyard", "keys", "create", "--alias", "from-cli", "--rpm", "100"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert chat(gw, key).status_code == 200  # unknown to the ring a moment ago: found by a bounded refresh
    out = subprocess.run(
        [sys.executable, "-m", "modelyard", "keys", "revoke", key],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    wait_until(lambda: chat(gw, key).status_code == 401, 5, "the revocation to reach the gateway")


# --- serving without keys -------------------------------------------------------------------------


def test_refuses_a_public_address_without_keys(tmp_path) -> None:  # noqa: ANN001
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models: []\n")
    env = {"PATH": "/usr/bin:/bin", "MODELYARD_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "modelyard", "serve", "--config", str(cfg), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO,
    )
    assert out.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API keys" in out.stderr and "Traceback" not in out.stderr


# --- priorities (issue 11 §2) ---------------------------------------------------------------------


def _doc_validate(gw: Gateway, body: Any, schema: str) -> None:
    """``body`` against a schema of the gateway's own /openapi.json."""
    import jsonschema  # noqa: PLC0415

    doc = gw.http.get("/openapi.json").json()
    jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": doc["components"]}
    ).validate(body)


def test_key_priority_fields_through_generate_info_and_list(gw: Gateway) -> None:
    request = {"key_alias": "batch-bot", "priority": "low", "allow_priority_header": True}
    _doc_validate(gw, request, "ModelyardKeyGenerateRequest")
    key, body = generate(gw, **request)
    _doc_validate(gw, body, "ModelyardKeyGenerateResponse")
    assert (body["priority"], body["allow_priority_header"]) == ("low", True)
    _, plain = generate(gw)
    assert (plain["priority"], plain["allow_priority_header"]) == (None, False)  # the rules decide; no header
    info = gw.http.get("/key/info", params={"key": body["token"]}, headers=admin(gw)).json()
    _doc_validate(gw, info, "ModelyardKeyInfoResponse")
    assert (info["info"]["priority"], info["info"]["allow_priority_header"]) == ("low", True)
    me = gw.http.get("/key/info", headers={"authorization": f"Bearer {key}"}).json()["info"]
    assert me["priority"] == "low"
    listed = gw.http.get("/key/list", headers=admin(gw)).json()
    _doc_validate(gw, listed, "ModelyardKeyList")
    by_token = {k["token"]: k for k in listed["keys"]}
    assert by_token[body["token"]]["priority"] == "low" and by_token[plain["token"]]["priority"] is None


def test_priority_header_needs_a_key_that_allows_it(gw: Gateway) -> None:
    allowed, _ = generate(gw, allow_priority_header=True)
    denied, _ = generate(gw, priority="high")  # a priority of its own, but no say per request
    for key, level in ((allowed, "high"), (allowed, "Low"), (MASTER, "high")):
        r = gw.http.post("/v1/chat/completions", json={"model": "chat", "messages": MSG},
                         headers={"authorization": f"Bearer {key}", "x-priority": level})
        assert r.status_code == 200, r.text
    assert chat(gw, denied).status_code == 200  # without the header: served at the key's priority
    r = gw.http.post("/v1/chat/completions", json={"model": "chat", "messages": MSG},
                     headers={"authorization": f"Bearer {denied}", "x-priority": "high"})
    err = assert_error(r, 403, code="priority_not_allowed", param="x-priority")
    assert "allow_priority_header" in err["message"]
    r = gw.http.post("/v1/chat/completions", json={"model": "chat", "messages": MSG},
                     headers={"authorization": f"Bearer {allowed}", "x-priority": "asap"})
    err = assert_error(r, 400, code="invalid_priority", param="x-priority")
    assert "asap" in err["message"]
    # through the official SDK, as a user would send it
    with pytest.raises(openai.PermissionDeniedError) as ei:
        gw.client(api_key=denied).chat.completions.create(model="chat", messages=MSG, extra_headers={"x-priority": "high"})
    assert ei.value.code == "priority_not_allowed"
    reply = gw.client(api_key=allowed).chat.completions.create(
        model="chat", messages=MSG, extra_headers={"x-priority": "low"}
    )
    assert reply.choices[0].message.content
