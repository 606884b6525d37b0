"""Unit tests of the SSE relay and error frames (modelyard.api.sse)."""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from modelyard.api.sse import DONE, SSERelay, error_event
from modelyard.errors import QueueFullError, UpstreamStatusError, UpstreamTimeoutError

ROLE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
HEL = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"}}]}'
PING = b": keep-alive"
LO = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"}}]}'
STOP = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}'
USAGE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
END = b"data: [DONE]"

EVENTS = [ROLE, HEL, PING, LO, STOP, USAGE, END]
USAGE_OBJ = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def encode(events: list[bytes], nl: bytes = b"\n") -> bytes:
    return b"".join(e.replace(b"\n", nl) + nl + nl for e in events)


STREAM = encode(EVENTS)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def relay_all(relay: SSERelay, chunks: list[bytes]) -> bytes:
    out = b"".join(relay.feed(c) for c in chunks)
    return out + relay.flush()


def parse_sse(data: bytes) -> list[tuple[bytes, ...]]:
    """A spec-following SSE parser: lines end with CRLF, LF or CR; a blank line ends an event."""
    events, cur = [], []
    for line in re.split(rb"\r\n|\r|\n", data):
        if line:
            cur.append(line)
        elif cur:
            events.append(tuple(cur))
            cur = []
    if cur:
        events.append(tuple(cur))  # unterminated (test bookkeeping only)
    return events


CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


# --- reassembly ---------------------------------------------------------------------------------


def test_whole_stream_in_one_chunk_passes_unchanged() -> None:
    r = SSERelay(strip_usage=False)
    assert relay_all(r, [STREAM]) == STREAM
    assert r.usage == USAGE_OBJ
    assert r.first_content and r.saw_done


def test_byte_by_byte() -> None:
    r = SSERelay(strip_usage=False)
    assert relay_all(r, [STREAM[i : i + 1] for i in range(len(STREAM))]) == STREAM
    assert r.usage == USAGE_OBJ
    assert r.saw_done


@settings(max_examples=300, deadline=None)
@given(cuts=CUTS, strip=st.booleans())
def test_random_split_points_forward_the_same_events(cuts: list[int], strip: bool) -> None:
    r = SSERelay(strip_usage=strip)
    out = relay_all(r, split(STREAM, cuts))
    expected = encode([e for e in EVENTS if not (strip and e is USAGE)])
    assert out == expected
    assert r.usage == USAGE_OBJ
    assert r.first_content
    assert r.saw_done


@settings(max_examples=300, deadline=None)
@given(cuts=CUTS, strip=st.booleans())
def test_random_split_points_with_crlf_line_endings(cuts: list[int], strip: bool) -> None:
    data = encode(EVENTS, b"\r\n")
    r = SSERelay(strip_usage=strip)
    out = relay_all(r, split(data, cuts))
    expected = [e for e in EVENTS if not (strip and e is USAGE)]
    assert parse_sse(out) == [tuple(e.split(b"\n")) for e in expected]
    assert r.usage == USAGE_OBJ
    assert r.saw_done


@settings(max_examples=200, deadline=None)
@given(cuts=CUTS, strip=st.booleans())
def test_content_event_count_does_not_depend_on_chunking(cuts: list[int], strip: bool) -> None:
    """``content_events`` stands in for completion tokens when the upstream sends no usage, so
    it must count the stream's content chunks, not how the network happened to cut it."""
    events = [ROLE, HEL, PING, LO, PING, STOP, END]  # no usage chunk
    data = encode(events)
    whole = SSERelay(strip_usage=strip)
    relay_all(whole, [data])
    pieces = SSERelay(strip_usage=strip)
    relay_all(pieces, split(data, cuts))
    assert whole.content_events == 4  # ROLE, HEL, LO, STOP
    assert pieces.content_events == whole.content_events


def test_crlf_split_between_cr_and_lf() -> None:
    data = encode([HEL, USAGE, END], b"\r\n")
    r = SSERelay(strip_usage=True)
    i = data.index(b"\r\n\r\n") + 3  # cut inside the blank line: "...\r\n\r" | "\n..."
    out = relay_all(r, [data[:i], data[i:]])
    assert parse_sse(out) == [(HEL,), (END,)]
    assert r.usage == USAGE_OBJ
    assert r.saw_done


def test_crlf_whole_stream_is_normalised() -> None:
    r = SSERelay(strip_usage=False)
    assert relay_all(r, [encode(EVENTS, b"\r\n")]) == STREAM


# --- usage, first content, [DONE], comments -----------------------------------------------------


def test_strip_usage_removes_only_the_usage_only_chunk() -> None:
    r = SSERelay(strip_usage=True)
    out = relay_all(r, [STREAM])
    assert USAGE not in out
    assert out == encode([ROLE, HEL, PING, LO, STOP, END])
    assert r.usage == USAGE_OBJ


def test_usage_inside_a_content_chunk_is_recorded_and_kept() -> None:
    ev = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
    r = SSERelay(strip_usage=True)
    assert relay_all(r, [encode([ev, END])]) == encode([ev, END])
    assert r.usage == {"prompt_tokens": 1, "completion_tokens": 1}


def test_usage_after_first_content_is_still_seen() -> None:
    r = SSERelay(strip_usage=False)
    r.feed(encode([ROLE, HEL]))
    assert r.first_content
    assert r.feed(encode([USAGE])) == encode([USAGE])
    assert r.usage == USAGE_OBJ


def test_usage_null_is_not_usage() -> None:
    r = SSERelay(strip_usage=True)
    assert relay_all(r, [encode([ROLE, STOP])]) == encode([ROLE, STOP])
    assert r.usage is None


def test_first_content_is_detected_on_the_first_generated_text() -> None:
    r = SSERelay(strip_usage=True)
    assert r.feed(encode([ROLE])) == encode([ROLE])
    assert not r.first_content  # a role-only delta carries no content
    assert r.feed(encode([PING])) == encode([PING])
    assert not r.first_content
    r.feed(encode([HEL]))
    assert r.first_content


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}',
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"hmm"}}]}',
        b'data: {"choices":[{"index":0,"text":"legacy completion"}]}',
    ],
)
def test_first_content_other_shapes(event: bytes) -> None:
    r = SSERelay(strip_usage=False)
    r.feed(encode([event]))
    assert r.first_content


def test_done_and_comments_pass_through() -> None:
    r = SSERelay(strip_usage=True)
    data = encode([b": hello", b"event: ping\ndata: {}", END])
    assert relay_all(r, [data]) == data
    assert r.saw_done
    assert not r.first_content


def test_incomplete_event_waits_for_its_blank_line() -> None:
    r = SSERelay(strip_usage=False)
    assert r.feed(HEL) == b""
    assert r.feed(b"\n") == b""
    assert r.feed(b"\n") == HEL + b"\n\n"


def test_flush_emits_a_last_event_without_its_blank_line() -> None:
    r = SSERelay(strip_usage=False)
    assert r.feed(HEL + b"\n\n" + END + b"\n") == HEL + b"\n\n"
    assert r.flush() == END + b"\n\n"
    assert r.saw_done
    assert r.flush() == b""


def test_flush_of_a_trailing_usage_chunk_strips_it() -> None:
    r = SSERelay(strip_usage=True)
    assert r.feed(HEL + b"\n\n" + USAGE) == HEL + b"\n\n"
    assert r.flush() == b""
    assert r.usage == USAGE_OBJ


def test_multiline_data_is_joined() -> None:
    ev = b'data: {"choices":[{"delta":{"content":"a"}}],\ndata: "usage":{"prompt_tokens":3}}'
    r = SSERelay(strip_usage=False)
    assert relay_all(r, [encode([ev])]) == encode([ev])
    assert r.usage == {"prompt_tokens": 3}
    assert r.first_content


def test_non_json_data_is_forwarded() -> None:
    r = SSERelay(strip_usage=True)
    data = encode([b"data: not json", b"data: [1,2]"])
    assert relay_all(r, [data]) == data


def test_done_constant() -> None:
    assert DONE == b"data: [DONE]\n\n"
    assert parse_sse(DONE) == [(END,)]


# --- error frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        UpstreamTimeoutError("upstream stream stalled for 5s"),
        UpstreamStatusError(503, b'{"error":{"message":"overloaded","type":"server_error","code":"x"}}'),
        QueueFullError("busy \"quoted\"\nnewline", retry_after_s=2),
    ],
)
def test_error_event_is_one_parseable_sse_event(exc) -> None:  # noqa: ANN001
    frame = error_event(exc)
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    events = parse_sse(frame)
    assert len(events) == 1 and len(events[0]) == 1  # one event, one data line
    obj = orjson.loads(events[0][0][len(b"data: "):])
    assert set(obj) == {"error"}
    err = obj["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] == exc.message
    assert err["type"] == exc.type
    assert err["code"] == exc.code
    # a relay passes an error frame through untouched
    assert relay_all(SSERelay(strip_usage=True), [frame]) == frame


# --- the first chunk's content -------------------------------------------------------------------

NULL_ROLE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":null},"finish_reason":null}]}'
BARE_ROLE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant"}}]}'


NO_ROLE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":null}]}'


@pytest.mark.parametrize("first", [NULL_ROLE, BARE_ROLE, NO_ROLE])
@pytest.mark.parametrize("strip", [True, False])
def test_a_role_delta_without_content_gets_an_empty_string(first: bytes, strip: bool) -> None:
    # llama.cpp's servers (in process and as engines) start with {"role": "assistant", "content": null}
    # (or with {} when the first tokens decode to no text);
    # OpenAI's first chunk carries "content": "", and clients print delta.content as it comes.
    out = relay_all(SSERelay(strip_usage=strip), split(encode([first, HEL, LO, STOP, END]), [7, 90, 200]))
    events = [orjson.loads(e[0][len(b"data: "):]) for e in parse_sse(out) if e[0] != END]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["id"] == "c1" and events[0]["choices"][0]["index"] == 0
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["Hel", "lo"]
    assert out.endswith(DONE)


def test_a_role_delta_with_content_or_tool_calls_is_forwarded_as_it_came() -> None:
    tool = (b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":null,'
            b'"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":""}}]}}]}')
    for first in (ROLE, tool):
        stream = encode([first, HEL, END])
        assert relay_all(SSERelay(strip_usage=False), [stream]) == stream


def test_a_null_content_after_the_first_content_is_left_alone() -> None:
    later = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":null}}]}'
    stream = encode([HEL, later, END])
    assert relay_all(SSERelay(strip_usage=False), [stream]) == stream


def test_only_each_choices_first_chunk_is_opened() -> None:
    two = b'data: {"id":"c1","choices":[{"index":0,"delta":{"role":"assistant","content":null}},{"index":1,"delta":{}}]}'
    again = b'data: {"id":"c1","choices":[{"index":0,"delta":{}}]}'
    out = relay_all(SSERelay(strip_usage=False), [encode([two, again, HEL, END])])
    events = [orjson.loads(e[0][len(b"data: "):]) for e in parse_sse(out) if e[0] != END]
    assert [c["delta"] for c in events[0]["choices"]] == [{"role": "assistant", "content": ""}] * 2
    assert events[1]["choices"][0]["delta"] == {}  # not a first chunk any more
