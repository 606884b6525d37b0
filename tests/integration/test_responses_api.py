"""The Responses API (``/v1/responses``) through the official openai SDK, on a real gateway and mock upstream.

What the upstream receives is checked (the translation onto chat completions), every body and stream
event the gateway produces is validated against OpenAI's published schemas, and stored responses
are checked for tenancy (another key's response is not found), background runs, cancel and a
gateway SIGKILL (the background response is run again by the restarted gateway).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from .support import Gateway, MockUpstream, ProcessPool, assert_error, deployment, model_cfg, validate, wait_until

MASTER = "sk-master-responses-4411"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    return tmp_path_factory.mktemp("responses-home")


def _config(mock: MockUpstream, home: Any) -> dict[str, Any]:
    return {
        "memory": {"data_dir": str(home)},
        "auth": {"master_key": MASTER, "refresh_interval_s": 0.5},
        "spend": {"flush_interval_s": 0.1},
        "router": {"retry": {"num_retries": 0}},
        "models": [model_cfg("chat", deployment(mock, "up-chat"), price={"input_per_1k": 1.0, "output_per_1k": 2.0}),
                   model_cfg("other", deployment(mock, "up-other")),
                   model_cfg("native", deployment(mock, "up-native", responses_api=True))],
    }


@pytest.fixture(scope="module")
def gw(module_procs: ProcessPool, shared_mock: MockUpstream, home: Any) -> Gateway:
    return module_procs.gateway(_config(shared_mock, home))


def _key(gw: Gateway, **fields: Any) -> str:
    r = gw.http.post("/key/generate", json=fields, headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200, r.text
    return r.json()["key"]


@pytest.fixture(scope="module")
def keys(gw: Gateway) -> tuple[str, str]:
    return _key(gw, key_alias="alice"), _key(gw, key_alias="bob")


@pytest.fixture(scope="module")
def alice(gw: Gateway, keys: tuple[str, str]) -> openai.OpenAI:
    return gw.client(api_key=keys[0])


@pytest.fixture(scope="module")
def bob(gw: Gateway, keys: tuple[str, str]) -> openai.OpenAI:
    return gw.client(api_key=keys[1])


def _raw(gw: Gateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return gw.http.post("/v1/responses", json=body, headers={"authorization": f"Bearer {key}"})


# --- create ----------------------------------------------------------------------------------------


def test_create_translates_onto_chat_and_answers_a_valid_response(gw: Gateway, keys: tuple[str, str],
                                                                  mock: MockUpstream) -> None:
    r = _raw(gw, keys[0], {"model": "chat", "input": "hello big world", "instructions": "be brief",
                           "max_output_tokens": 40, "temperature": 0.5, "metadata": {"topic": "greeting"}})
    assert r.status_code == 200, r.text
    body = r.json()
    validate(body, "Response")
    assert body["object"] == "response" and body["status"] == "completed" and body["id"].startswith("resp_")
    assert body["output"][0]["type"] == "message"
    assert body["output"][0]["content"][0]["text"] == "mock reply to: hello big world"
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert body["metadata"] == {"topic": "greeting"} and body["instructions"] == "be brief"
    sent = mock.last_request()
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["messages"] == [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hello big world"}]
    assert sent["body"]["max_tokens"] == 40 and sent["body"]["temperature"] == 0.5
    assert r.headers["x-modelyard-model"] == "chat"


def test_sdk_create_retrieve_and_the_spend_row(gw: Gateway, alice: openai.OpenAI, home: Any) -> None:
    raw = alice.responses.with_raw_response.create(model="chat", input="count me")
    resp = raw.parse()
    assert resp.output_text == "mock reply to: count me"
    assert alice.responses.retrieve(resp.id).output_text == resp.output_text
    model, p, c, cost, status = _spend_row(home, raw.headers["x-request-id"])
    assert (model, status) == ("chat", 200) and p > 0 and c > 0 and cost > 0


def _spend_row(home: Any, request_id: str) -> Any:
    def row() -> Any:
        con = sqlite3.connect(home / "modelyard.db")
        try:
            return con.execute("SELECT model, prompt_tokens, completion_tokens, cost_nano, status FROM spend_rows "
                               "WHERE request_id = ?", (request_id,)).fetchone()
        finally:
            con.close()

    return wait_until(row, 10, f"the spend row of {request_id}")


def test_previous_response_id_continues_the_conversation(alice: openai.OpenAI, mock: MockUpstream) -> None:
    first = alice.responses.create(model="chat", input="my name is Ada", instructions="first instructions")
    second = alice.responses.create(model="chat", input="what is my name?", previous_response_id=first.id,
                                    instructions="second instructions")
    assert second.previous_response_id == first.id
    # The earlier turn and its answer are sent; the earlier instructions are not carried over.
    assert mock.last_request()["body"]["messages"] == [
        {"role": "system", "content": "second instructions"},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "mock reply to: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    third = alice.responses.create(model="chat", input=[{"role": "user", "content": [{"type": "input_text",
                                                                                       "text": "and again"}]}],
                                   previous_response_id=second.id)
    assert len(mock.last_request()["body"]["messages"]) == 5
    items = alice.responses.input_items.list(third.id)
    assert [i.type for i in items.data] == ["message"]


def test_text_format_and_function_tools_are_sent_in_the_chat_shape(alice: openai.OpenAI, mock: MockUpstream) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "name": "weather", "description": "the weather", "parameters": schema, "strict": True}
    alice.responses.create(model="chat", input="weather in Paris?", tools=[tool], tool_choice="required",
                           text={"format": {"type": "json_schema", "name": "answer", "schema": schema}})
    sent = mock.last_request()["body"]
    assert sent["tools"] == [{"type": "function", "function": {"name": "weather", "description": "the weather",
                                                               "parameters": schema, "strict": True}}]
    assert sent["tool_choice"] == "required"
    assert sent["response_format"] == {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    alice.responses.create(model="chat", input="x", tools=[tool], tool_choice={"type": "function", "name": "weather"})
    assert mock.last_request()["body"]["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_an_upstream_that_speaks_responses_gets_the_request_as_is(alice: openai.OpenAI, bob: openai.OpenAI,
                                                                  mock: MockUpstream, home: Any) -> None:
    raw = alice.responses.with_raw_response.create(model="native", input="pass me through", instructions="i")
    resp = raw.parse()
    assert resp.output_text == "native mock reply to: pass me through"
    sent = mock.last_request()
    assert sent["path"] == "/v1/responses"
    assert sent["body"] == {"model": "up-native", "input": "pass me through", "instructions": "i"}
    assert raw.headers["x-modelyard-model"] == "native"
    model, p, c, _cost, _status = _spend_row(home, raw.headers["x-request-id"])
    assert model == "native" and (p, c) == (resp.usage.input_tokens, resp.usage.output_tokens) and c > 0
    assert alice.responses.retrieve(resp.id).id == resp.id  # modelyard knows whose it is
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="native", input="steal", previous_response_id=resp.id)
    follow = alice.responses.create(model="native", input="again", previous_response_id=resp.id)
    assert mock.last_request()["body"]["previous_response_id"] == resp.id and follow.output_text
    with alice.responses.with_streaming_response.create(model="native", input="stream usage", stream=True) as r:
        request_id = r.headers["x-request-id"]
        list(r.iter_lines())
    assert _spend_row(home, request_id)[2] == 6  # "native mock reply to: stream usage": the stream's usage
    with alice.responses.stream(model="native", input="stream natively") as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "native mock reply to: stream natively"
    assert "stream_options" not in mock.last_request()["body"]  # chat's include_usage is not added here
    assert alice.responses.retrieve(final.id).status == "completed"


# --- streaming -------------------------------------------------------------------------------------

_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent", "response.completed": "ResponseCompletedEvent",
    "response.failed": "ResponseFailedEvent", "error": "ResponseErrorEvent",
}


def _events(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in lines:
            ev = orjson.loads(lines["data"])
            assert lines.get("event") == ev["type"], block
            out.append(ev)
    return out


def test_stream_sends_typed_events_that_validate(gw: Gateway, keys: tuple[str, str]) -> None:
    with gw.http.stream("POST", "/v1/responses", json={"model": "chat", "input": "stream me please", "stream": True},
                        headers={"authorization": f"Bearer {keys[0]}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = _events(text)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for e in events:
        validate(e, _EVENT_SCHEMAS[e["type"]])
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "mock reply to: stream me please"
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == deltas


def test_sdk_stream_and_continue_from_a_streamed_response(alice: openai.OpenAI, mock: MockUpstream) -> None:
    with alice.responses.stream(model="chat", input="streamed turn") as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_response()
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.output_text == "mock reply to: streamed turn"
    alice.responses.create(model="chat", input="next", previous_response_id=final.id)
    assert mock.last_request()["body"]["messages"][1] == {"role": "assistant", "content": final.output_text}


def test_an_upstream_failure_mid_stream_ends_with_error_and_failed(gw: Gateway, keys: tuple[str, str],
                                                                  mock: MockUpstream) -> None:
    mock.control("stream-drop:2")
    try:
        with gw.http.stream("POST", "/v1/responses", json={"model": "chat", "input": "cut me off", "stream": True},
                            headers={"authorization": f"Bearer {keys[0]}"}) as r:
            text = r.read().decode()
    finally:
        mock.reset()
    events = _events(text)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], [e["type"] for e in events]
    for e in events:
        validate(e, _EVENT_SCHEMAS[e["type"]])
    assert events[-1]["response"]["status"] == "failed"


# --- stored responses: tenancy, delete, store=false --------------------------------------------------


def test_another_keys_response_is_not_found(alice: openai.OpenAI, bob: openai.OpenAI, gw: Gateway) -> None:
    mine = alice.responses.create(model="chat", input="private to alice")
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError) as exc:
        bob.responses.create(model="chat", input="let me in", previous_response_id=mine.id)
    assert exc.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        bob.responses.delete(mine.id)
    # The master key sees every key's responses; the owner still has hers.
    r = gw.http.get(f"/v1/responses/{mine.id}", headers={"authorization": f"Bearer {MASTER}"})
    assert r.status_code == 200 and r.json()["id"] == mine.id
    assert alice.responses.retrieve(mine.id).id == mine.id


def test_delete_and_store_false(alice: openai.OpenAI, gw: Gateway, keys: tuple[str, str]) -> None:
    resp = alice.responses.create(model="chat", input="forget me")
    r = gw.http.delete(f"/v1/responses/{resp.id}", headers={"authorization": f"Bearer {keys[0]}"})
    assert r.status_code == 200 and r.json() == {"id": resp.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(resp.id)
    unstored = alice.responses.create(model="chat", input="do not keep", store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(unstored.id)


# --- background -------------------------------------------------------------------------------------


def _poll(client: openai.OpenAI, resp_id: str, timeout: float = 15.0) -> Any:
    return wait_until(lambda: (r := client.responses.retrieve(resp_id)).status not in ("queued", "in_progress") and r,
                      timeout, f"response {resp_id} to finish")


def test_background_runs_and_can_be_polled(alice: openai.OpenAI) -> None:
    resp = alice.responses.create(model="chat", input="in the background", background=True)
    assert resp.status == "queued" and resp.background is True
    done = _poll(alice, resp.id)
    assert done.status == "completed" and done.output_text == "mock reply to: in the background"


def test_background_cancel(alice: openai.OpenAI, gw: Gateway, keys: tuple[str, str], mock: MockUpstream) -> None:
    mock.control("slow:3000")
    try:
        resp = alice.responses.create(model="chat", input="cancel me", background=True)
        wait_until(lambda: mock.stats()["in_flight"] >= 1, 10, "the background call to reach the upstream")
        cancelled = alice.responses.cancel(resp.id)
        assert cancelled.status == "cancelled"
        validate(gw.http.get(f"/v1/responses/{resp.id}", headers={"authorization": f"Bearer {keys[0]}"}).json(),
                 "Response")
    finally:
        mock.reset()
    time.sleep(0.5)
    assert alice.responses.retrieve(resp.id).status == "cancelled"  # the run ended without overwriting it
    plain = alice.responses.create(model="chat", input="not background")
    r = gw.http.post(f"/v1/responses/{plain.id}/cancel", headers={"authorization": f"Bearer {keys[0]}"})
    assert_error(r, 400, param="response_id")


def test_background_survives_a_sigkill(procs: ProcessPool, tmp_path: Any) -> None:
    mock = procs.mock(behavior="slow:4000")
    home = tmp_path / "home"
    config = _config(mock, home)
    gw = procs.gateway(config)
    c = gw.client(api_key=MASTER)
    resp = c.responses.create(model="chat", input="survive this", background=True)
    wait_until(lambda: mock.stats()["in_flight"] >= 1, 10, "the background call to reach the upstream")
    gw.signal(signal.SIGKILL)
    gw.wait(10)
    mock.reset()
    gw2 = procs.gateway(config)
    c2 = gw2.client(api_key=MASTER)
    done = _poll(c2, resp.id, timeout=30)
    assert done.status == "completed" and done.output_text == "mock reply to: survive this"


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"model": "chat", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type", 400),
    ({"model": "chat", "input": "x", "conversation": "conv_1"}, "conversation", 400),
    ({"model": "chat", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
     "input[0].content[0].type", 400),
    ({"model": "chat", "input": "x", "text": {"format": {"type": "json_schema", "name": "a",
                                                          "schema": {"type": "nonsense"}}}}, "text.format.schema", 400),
    ({"model": "chat", "input": "x", "tools": [{"type": "function", "name": "f",
                                               "parameters": {"type": 5}}]}, "tools[0].parameters", 400),
    ({"model": "chat", "input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name", 400),
    ({"model": "chat", "input": "x", "frobnicate": True}, "frobnicate", 400),
    ({"model": "chat"}, "input", 400),
    ({"model": "chat", "input": "x", "max_output_tokens": 0}, "max_output_tokens", 400),
    ({"model": "chat", "input": "x", "background": True, "stream": True}, "stream", 400),
    ({"model": "chat", "input": "x", "previous_response_id": "resp_nope"}, "previous_response_id", 404),
    ({"model": "no-such-model", "input": "x"}, "model", 404),
])
def test_bad_input_is_a_clear_error(gw: Gateway, keys: tuple[str, str], body: dict[str, Any], param: str,
                                    status: int) -> None:
    assert_error(_raw(gw, keys[0], body), status, param=param)


def test_unknown_ids_and_paths(gw: Gateway, keys: tuple[str, str]) -> None:
    h = {"authorization": f"Bearer {keys[0]}"}
    assert_error(gw.http.get("/v1/responses/resp_missing", headers=h), 404, param="response_id")
    assert_error(gw.http.get("/v1/responses/resp_missing/bogus", headers=h), 404)
    assert_error(gw.http.post("/v1/responses", content=b"{nope", headers=h), 400)
    assert_error(gw.http.get("/v1/responses/x", headers={"authorization": "Bearer wrong"}), 401)
