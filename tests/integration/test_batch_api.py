"""The Batch API end to end through the official openai SDK: files, batches, output and error files.

The gateway runs in this process (``inprocess.Served``) over the real embedded ``chat`` and
``text-embedding`` models, with a master key, two virtual keys and a real SQLite database; a
``mocked`` model (the mock upstream process) carries what needs a controllable service time
(waiting for interactive load, cancel). The restart test runs the gateway as a subprocess on the
mock, SIGKILLs it mid-batch and restarts it on the same data directory.
"""

from __future__ import annotations

import io
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openapi_schema import validate  # noqa: E402

from modelyard.registry.artifacts import ArtifactStore  # noqa: E402
from modelyard.registry.defaults import import_defaults  # noqa: E402

from .inprocess import Served  # noqa: E402
from .support import MockUpstream, ProcessPool, assert_error, deployment, wait_until  # noqa: E402

MASTER = "sk-master-batch-0123"
PRICE = {"input_per_1k": 1.0, "output_per_1k": 2.0}
OUT_LINE = {"type": "object", "required": ["id", "custom_id", "response", "error"], "additionalProperties": False}


@pytest.fixture(scope="module")
def mock(module_procs: ProcessPool) -> MockUpstream:
    return module_procs.mock()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, mock: MockUpstream) -> Iterator[Served]:
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    import_defaults(store, names=["chat", "text-embedding"])
    home = tmp_path_factory.mktemp("home")
    config = {
        "memory": {"data_dir": str(home)},
        "auth": {"master_key": MASTER, "refresh_interval_s": 0.5},
        "spend": {"flush_interval_s": 0.1},
        "router": {"timeout_s": 120, "retry": {"num_retries": 0}},
        "batch": {"max_file_bytes": 64 * 1024, "poll_interval_s": 0.05, "resume_after_s": 0.2},
        "models": [
            {"name": "chat", "price": PRICE, "deployments": [{"kind": "local", "artifact": "chat", "n_ctx": 1024}]},
            {"name": "text-embedding", "price": PRICE, "batch_discount": 0.25,
             "deployments": [{"kind": "local", "artifact": "text-embedding"}]},
            {"name": "mocked", "price": PRICE, "deployments": [deployment(mock, "up")]},
        ],
    }
    with Served(config, store) as s:
        s.home = home  # type: ignore[attr-defined]
        yield s


def key(s: Served, **fields: Any) -> str:
    r = httpx.post(f"{s.url}/key/generate", json=fields, headers={"authorization": f"Bearer {MASTER}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def keys(served: Served) -> tuple[str, str]:
    a, b = key(served, key_alias="batch-a"), key(served, key_alias="batch-b")
    wait_until(lambda: httpx.get(f"{served.url}/v1/models", headers={"authorization": f"Bearer {b}"}).status_code == 200)
    return a, b


def client(s: Served, k: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.url}/v1", api_key=k, max_retries=0, timeout=60)


def raw(s: Served, k: str, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {k}", **kw.pop("headers", {})}
    return httpx.request(method, f"{s.url}{path}", headers=headers, timeout=30, **kw)


def jsonl(*objs: Any) -> bytes:
    return b"\n".join(o if isinstance(o, bytes) else orjson.dumps(o) for o in objs) + b"\n"


def req(cid: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


def upload(c: openai.OpenAI, content: bytes, name: str = "in.jsonl") -> Any:
    return c.files.create(file=(name, io.BytesIO(content)), purpose="batch")


def finished(c: openai.OpenAI, batch_id: str, timeout: float = 180.0) -> Any:
    return wait_until(lambda: (b := c.batches.retrieve(batch_id)).status in ("completed", "failed", "cancelled", "expired")
                      and b, timeout, f"batch {batch_id} to finish", interval=0.1)


def lines_of(c: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    out = [orjson.loads(x) for x in c.files.content(file_id).content.splitlines() if x.strip()]
    for o in out:
        assert set(o) == set(OUT_LINE["required"]), o
    return out


def spend_rows(s: Served, batch_id: str, n: int) -> list[sqlite3.Row]:
    def read() -> list[sqlite3.Row] | None:
        with sqlite3.connect(s.home / "modelyard.db") as db:  # type: ignore[attr-defined]
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM spend_rows WHERE batch_id = ? ORDER BY request_id", (batch_id,)).fetchall()
        return rows if len(rows) >= n else None
    return wait_until(read, 10, f"{n} spend rows of {batch_id}")


# --- the happy paths --------------------------------------------------------------------------


def test_an_embeddings_batch_runs_with_per_line_errors_and_discounted_spend(served: Served, keys: tuple[str, str]) -> None:
    c = client(served, keys[0])
    texts = ["the cat sat", "on the mat", "hello world"]
    content = jsonl(*(req(f"e{i}", "/v1/embeddings", {"model": "text-embedding", "input": t}) for i, t in enumerate(texts)),
                    b"{this is not json",
                    req("wrong-url", "/v1/chat/completions", {"model": "chat"}),
                    req("bad-body", "/v1/embeddings", {"model": "text-embedding", "input": 5}))
    f = upload(c, content)
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h", metadata={"job": "nightly"})
    assert b.status == "validating" and b.metadata == {"job": "nightly"}
    b = finished(c, b.id)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (6, 3, 3)
    assert b.in_progress_at and b.finalizing_at and b.completed_at and b.model == "text-embedding"
    body = raw(served, keys[0], "GET", f"/v1/batches/{b.id}").json()
    validate(body, "Batch")
    out = lines_of(c, b.output_file_id)
    assert [o["custom_id"] for o in out] == ["e0", "e1", "e2"]
    for o in out:
        assert o["error"] is None and o["response"]["status_code"] == 200 and o["response"]["request_id"] == o["id"]
        validate(o["response"]["body"], "CreateEmbeddingResponse")
        assert len(o["response"]["body"]["data"][0]["embedding"]) == 384
    errs = lines_of(c, b.error_file_id)
    assert [(e["custom_id"], (e["error"] or {}).get("code")) for e in errs] == [
        (None, "invalid_json"), ("wrong-url", "mismatched_url"), ("bad-body", None)]
    assert errs[2]["response"]["status_code"] == 400 and errs[2]["response"]["body"]["error"]["param"] == "input"
    validate(errs[2]["response"]["body"], "ErrorResponse")
    assert b.usage.input_tokens > 0 and b.usage.total_tokens == b.usage.input_tokens + b.usage.output_tokens
    # one spend row per item that reached a model, marked with the batch, at 75 % of the price
    rows = spend_rows(served, b.id, 3)
    ok = [r for r in rows if r["status"] == 200]
    assert {r["request_id"] for r in ok} == {o["id"] for o in out}
    for r in ok:
        full = (Decimal(r["prompt_tokens"]) * 1 + Decimal(r["completion_tokens"]) * 2) / 1000
        assert r["cost_nano"] == int(full * Decimal("0.75") * 10**9) > 0 and r["key_hash"] is not None


def test_a_chat_batch_answers_in_input_order(served: Served, keys: tuple[str, str]) -> None:
    c = client(served, keys[0])
    content = jsonl(*(req(f"q{i}", "/v1/chat/completions", {"model": "chat", "max_tokens": 4, "temperature": 0,
                                                           "messages": [{"role": "user", "content": q}]})
                      for i, q in enumerate(["Say hi", "Name a color"])))
    b = c.batches.create(input_file_id=upload(c, content).id, endpoint="/v1/chat/completions", completion_window="24h")
    b = finished(c, b.id)
    assert b.status == "completed" and b.request_counts.completed == 2 and b.error_file_id is None
    out = lines_of(c, b.output_file_id)
    assert [o["custom_id"] for o in out] == ["q0", "q1"]
    for o in out:
        validate(o["response"]["body"], "CreateChatCompletionResponse")
    rows = spend_rows(served, b.id, 2)
    for r in rows:  # chat keeps the default discount: half price
        full = (Decimal(r["prompt_tokens"]) + Decimal(r["completion_tokens"]) * 2) / 1000
        assert r["cost_nano"] == int(full / 2 * 10**9) > 0


def test_a_responses_batch_runs_through_the_responses_api(served: Served, keys: tuple[str, str],
                                                          mock: MockUpstream) -> None:
    c = client(served, keys[0])
    content = jsonl(req("r0", "/v1/responses", {"model": "mocked", "input": "first", "instructions": "be brief"}),
                    req("r1", "/v1/responses", {"model": "mocked", "input": "second", "tools": [{"type": "web_search"}]}))
    b = c.batches.create(input_file_id=upload(c, content).id, endpoint="/v1/responses", completion_window="24h")
    b = finished(c, b.id)
    assert b.status == "completed" and (b.request_counts.completed, b.request_counts.failed) == (1, 1)
    out = lines_of(c, b.output_file_id)
    assert [o["custom_id"] for o in out] == ["r0"]
    validate(out[0]["response"]["body"], "Response")
    assert out[0]["response"]["body"]["output"][0]["content"][0]["text"] == "mock reply to: first"
    errs = lines_of(c, b.error_file_id)
    assert errs[0]["custom_id"] == "r1" and errs[0]["response"]["status_code"] == 400
    assert errs[0]["response"]["body"]["error"]["param"] == "tools[0].type"
    rows = spend_rows(served, b.id, 1)
    assert [r["model"] for r in rows if r["status"] == 200] == ["mocked"]
    # a stored batch response can be continued interactively, by its owner only
    resp_id = out[0]["response"]["body"]["id"]
    assert c.responses.retrieve(resp_id).output_text == "mock reply to: first"
    with pytest.raises(openai.NotFoundError):
        client(served, keys[1]).responses.retrieve(resp_id)


# --- files -------------------------------------------------------------------------------------


def test_files_are_listed_read_and_deleted_per_key(served: Served, keys: tuple[str, str]) -> None:
    a, b = client(served, keys[0]), client(served, keys[1])
    content = jsonl(req("x", "/v1/embeddings", {"model": "text-embedding", "input": "x"}))
    f = upload(a, content, "mine.jsonl")
    upload(a, content, "second.jsonl")
    validate(raw(served, keys[0], "GET", f"/v1/files/{f.id}").json(), "OpenAIFile")
    assert a.files.retrieve(f.id).filename == "mine.jsonl" and f.bytes == len(content) and f.purpose == "batch"
    assert a.files.content(f.id).content == content
    listing = raw(served, keys[0], "GET", "/v1/files", params={"purpose": "batch"}).json()
    validate(listing, "ListFilesResponse")
    assert f.id in [x["id"] for x in listing["data"]]
    first = raw(served, keys[0], "GET", "/v1/files", params={"limit": 1, "order": "asc"}).json()
    nxt = raw(served, keys[0], "GET", "/v1/files", params={"limit": 1, "order": "asc", "after": first["last_id"]}).json()
    assert first["has_more"] and nxt["data"][0]["id"] != first["data"][0]["id"]
    # another key: not found, never forbidden; its list does not show the file
    for call in (lambda: b.files.retrieve(f.id), lambda: b.files.content(f.id), lambda: b.files.delete(f.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in b.files.list()]
    assert_error(raw(served, keys[1], "GET", f"/v1/files/{f.id}"), 404)
    gone = raw(served, keys[0], "DELETE", f"/v1/files/{f.id}").json()
    validate(gone, "DeleteFileResponse")
    assert gone == {"id": f.id, "object": "file", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        a.files.retrieve(f.id)


def test_bad_uploads_are_openai_shaped_errors(served: Served, keys: tuple[str, str]) -> None:
    c = client(served, keys[0])
    with pytest.raises(openai.BadRequestError) as e:
        c.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    assert e.value.body["param"] == "purpose"
    with pytest.raises(openai.APIStatusError) as too_big:
        upload(c, b"x" * (64 * 1024 + 1))
    assert too_big.value.status_code == 413
    k = keys[0]
    assert_error(raw(served, k, "POST", "/v1/files", json={"purpose": "batch"}), 400, code="invalid_multipart")
    assert_error(raw(served, k, "POST", "/v1/files", data={"purpose": "batch"}, files={}), 400)
    assert_error(raw(served, k, "POST", "/v1/files", data={"purpose": "batch"}), 400)  # urlencoded, no file
    assert_error(raw(served, k, "POST", "/v1/files", files={"file": ("a", b"{}")}), 400, param="purpose")
    assert_error(raw(served, k, "POST", "/v1/files", data={"purpose": "batch", "color": "red"},
                     files={"file": ("a", b"{}")}), 400, param="color")
    assert_error(raw(served, k, "POST", "/v1/files", content=b"--x\r\nbroken",
                     headers={"content-type": "multipart/form-data; boundary=x"}), 400)
    assert_error(raw(served, k, "GET", "/v1/files", params={"limit": "0"}), 400, param="limit")
    assert_error(raw(served, k, "GET", "/v1/files/file-nope/content"), 404)


# --- batches: errors, tenancy, cancel, list ---------------------------------------------------------


def test_bad_batches_are_refused_or_failed(served: Served, keys: tuple[str, str]) -> None:
    c, other = client(served, keys[0]), client(served, keys[1])
    good = upload(c, jsonl(req("a", "/v1/embeddings", {"model": "text-embedding", "input": "x"})))
    for kw, param in (({"endpoint": "/v1/images/generations"}, "endpoint"), ({"completion_window": "1h"}, "completion_window"),
                      ({"metadata": {"k": "v" * 600}}, "metadata.k")):
        args = {"input_file_id": good.id, "endpoint": "/v1/embeddings", "completion_window": "24h", **kw}
        with pytest.raises(openai.BadRequestError) as e:
            c.batches.create(**args)
        assert e.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-unknown", endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):  # another key's file
        other.batches.create(input_file_id=good.id, endpoint="/v1/embeddings", completion_window="24h")
    assert_error(raw(served, keys[0], "POST", "/v1/batches", json={"input_file_id": good.id}), 400, param="endpoint")
    assert_error(raw(served, keys[0], "POST", "/v1/batches", content=b"[1"), 400)
    # duplicate custom ids: the batch fails at validation, naming the line
    dup = upload(c, jsonl(*(req(cid, "/v1/embeddings", {"model": "text-embedding", "input": "x"}) for cid in "aba")))
    b = finished(c, c.batches.create(input_file_id=dup.id, endpoint="/v1/embeddings", completion_window="24h").id)
    assert b.status == "failed" and b.failed_at and b.output_file_id is None
    assert [(e.code, e.line) for e in b.errors.data] == [("duplicate_custom_id", 3)]
    validate(raw(served, keys[0], "GET", f"/v1/batches/{b.id}").json(), "Batch")
    with pytest.raises(openai.APIStatusError) as e:  # a finished batch cannot be cancelled
        c.batches.cancel(b.id)
    assert e.value.status_code == 409
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(b.id)
    assert b.id not in [x.id for x in other.batches.list()]
    assert_error(raw(served, keys[0], "GET", "/v1/batches/batch_nope"), 404)
    assert_error(raw(served, keys[0], "POST", f"/v1/batches/{b.id}/pause"), 405)


def test_batches_are_listed_newest_first_with_limit_and_after(served: Served, keys: tuple[str, str]) -> None:
    k = key(served, key_alias="lister")
    wait_until(lambda: raw(served, k, "GET", "/v1/batches").status_code == 200)
    c = client(served, k)
    f = upload(c, jsonl(req("a", "/v1/embeddings", {"model": "text-embedding", "input": "x"})))
    ids = [c.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h").id for _ in range(3)]
    page = raw(served, k, "GET", "/v1/batches", params={"limit": 2}).json()
    validate(page, "ListBatchesResponse")
    assert [x["id"] for x in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = c.batches.list(limit=2, after=page["last_id"])
    assert [x.id for x in rest.data] == [ids[0]] and not rest.has_more
    assert [x.id for x in c.batches.list(limit=1)] == ids[::-1]  # the SDK pages through with after
    for i in ids:
        finished(c, i)


def test_batch_items_wait_for_interactive_load_and_a_cancel_keeps_partial_results(served: Served, keys: tuple[str, str],
                                                                                mock: MockUpstream) -> None:
    c = client(served, keys[0])
    items = jsonl(*(req(f"m{i}", "/v1/chat/completions", {"model": "mocked", "messages": [{"role": "user", "content": str(i)}]})
                    for i in range(3)))
    mock.reset("slow:1500")  # the interactive request takes 1.5 s; what comes after it answers at once
    interactive = threading.Thread(target=lambda: raw(served, MASTER, "POST", "/v1/chat/completions",
                                                      json={"model": "mocked", "messages": [{"role": "user", "content": "hi"}]}))
    interactive.start()
    wait_until(lambda: mock.stats()["in_flight"] == 1, 5, "the interactive request in flight")
    mock.control("ok")
    b = c.batches.create(input_file_id=upload(c, items).id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(lambda: c.batches.retrieve(b.id).status == "in_progress", 5, "validated")
    time.sleep(0.8)  # the interactive request is still running: no item may start on its model
    assert mock.stats()["requests"] == 1 and c.batches.retrieve(b.id).request_counts.completed == 0
    interactive.join(10)
    b = finished(c, b.id, 30)
    assert b.status == "completed" and b.request_counts.completed == 3
    # cancel: items running finish, the rest never run; the output has exactly what ran
    mock.reset("slow:300")
    many = jsonl(*(req(f"n{i}", "/v1/chat/completions", {"model": "mocked", "messages": [{"role": "user", "content": "x"}]})
                   for i in range(40)))
    b = c.batches.create(input_file_id=upload(c, many).id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_until(lambda: c.batches.retrieve(b.id).request_counts.completed >= 2, 30, "some items done")
    cancelling = c.batches.cancel(b.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    assert c.batches.cancel(b.id).status in ("cancelling", "cancelled")  # again: the same answer, no error
    b = finished(c, b.id, 30)
    mock.reset("ok")
    assert b.status == "cancelled" and b.cancelled_at and 2 <= b.request_counts.completed < 40
    out = lines_of(c, b.output_file_id)
    assert len(out) == b.request_counts.completed == len({o["custom_id"] for o in out})


# --- restarts ------------------------------------------------------------------------------------


def test_a_batch_survives_sigkill_and_every_custom_id_is_answered_once(procs: ProcessPool, tmp_path: Path) -> None:
    up = procs.mock(behavior="slow:150")
    config = {"memory": {"data_dir": str(tmp_path / "home")}, "spend": {"flush_interval_s": 0.1},
              "router": {"retry": {"num_retries": 0}},
              "batch": {"concurrency": 3, "poll_interval_s": 0.05, "resume_after_s": 0},
              "models": [{"name": "m", "deployments": [deployment(up, "up")]}]}
    gw = procs.gateway(config)
    c = gw.client(timeout=30)
    n = 40
    content = jsonl(*(req(f"id-{i}", "/v1/embeddings", {"model": "m", "input": f"text {i}"}) for i in range(n)))
    b = c.batches.create(input_file_id=upload(c, content).id, endpoint="/v1/embeddings", completion_window="24h")
    wait_until(lambda: c.batches.retrieve(b.id).request_counts.completed >= 8, 30, "a part of the batch done")
    gw.kill()  # SIGKILL mid-batch
    done_before = up.stats()["requests"]
    assert done_before < n
    gw2 = procs.gateway(config)
    c2 = gw2.client(timeout=30)
    b = finished(c2, b.id, 60)
    assert b.status == "completed" and b.request_counts.completed == n and b.request_counts.failed == 0
    out = lines_of(c2, b.output_file_id)
    assert sorted(o["custom_id"] for o in out) == sorted(f"id-{i}" for i in range(n))  # each exactly once
    # only what was running when the process died ran twice (at most the concurrency)
    assert n <= up.stats()["requests"] <= n + 3
    with sqlite3.connect(tmp_path / "home" / "modelyard.db") as db:
        rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM spend_rows WHERE batch_id = ?", (b.id,)).fetchone()
    assert rows[0] == rows[1] <= n
