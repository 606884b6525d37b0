"""batch/jsonl.py: input lines → items, per-line errors, batch-level errors; output line shapes."""

from __future__ import annotations

import orjson
import pytest

from modelyard.batch.jsonl import BadLine, Item, error_line, is_success, item_id, output_line, parse_input, parse_line

EP = "/v1/embeddings"


def line(cid: object = "a", url: str = EP, body: object = None, **kw: object) -> bytes:
    obj = {"custom_id": cid, "method": "POST", "url": url, "body": {"model": "m", "input": "x"} if body is None else body}
    obj.update(kw)
    return orjson.dumps(obj)


def test_a_good_line_is_an_item_with_its_model_and_line_number() -> None:
    p = parse_input([line("a"), line("b", body={"model": "e", "input": ["y"]})], EP, max_requests=10)
    assert p.items == [Item(1, "a", "m", {"model": "m", "input": "x"}), Item(2, "b", "e", {"model": "e", "input": ["y"]})]
    assert not p.bad and not p.errors and p.total == 2


@pytest.mark.parametrize(("raw", "code"), [
    (b"{not json", "invalid_json"),
    (b'"a string"', "invalid_request"),
    (b"[1, 2]", "invalid_request"),
    (line(None), "missing_custom_id"),
    (line(""), "missing_custom_id"),
    (line(7), "missing_custom_id"),
    (line("x" * 513), "invalid_custom_id"),
    (line("a", method="GET"), "invalid_method"),
    (line("a", url="/v1/chat/completions"), "mismatched_url"),
    (line("a", body=[1]), "invalid_body"),
    (line("a", body="text"), "invalid_body"),
])
def test_a_bad_line_is_reported_on_its_own_and_the_rest_run(raw: bytes, code: str) -> None:
    p = parse_input([line("ok1"), raw, line("ok2")], EP, max_requests=10)
    assert [i.custom_id for i in p.items] == ["ok1", "ok2"]
    assert len(p.bad) == 1 and p.bad[0].code == code and p.bad[0].line == 2
    assert p.bad[0].message.startswith("line 2: ")
    assert not p.errors and p.total == 3


def test_the_custom_id_of_a_line_with_a_wrong_url_is_kept_for_its_error_line() -> None:
    bad = parse_line(4, line("mine", url="/v1/x"), EP)
    assert isinstance(bad, BadLine) and bad.custom_id == "mine"


def test_duplicate_custom_ids_fail_the_batch_naming_each_line() -> None:
    p = parse_input([line("a"), line("b"), line("a"), line("a")], EP, max_requests=10)
    assert [(e["code"], e["line"]) for e in p.errors] == [("duplicate_custom_id", 3), ("duplicate_custom_id", 4)]
    assert "already used on line 1" in p.errors[0]["message"]


def test_many_duplicates_are_listed_up_to_a_bound_and_counted() -> None:
    p = parse_input([line("a")] * 150, EP, max_requests=1000)
    assert len(p.errors) == 101 and "149 lines repeat" in p.errors[-1]["message"]


def test_blank_lines_are_skipped_but_keep_the_numbering() -> None:
    p = parse_input([line("a") + b"\n", b"\n", b"   \r\n", line("b") + b"\r\n"], EP, max_requests=10)
    assert [(i.line, i.custom_id) for i in p.items] == [(1, "a"), (4, "b")]


def test_an_empty_file_and_too_many_requests_fail_the_batch() -> None:
    assert parse_input([b"\n", b""], EP, max_requests=10).errors[0]["code"] == "empty_file"
    p = parse_input([line(str(i)) for i in range(4)], EP, max_requests=3)
    assert p.errors[0]["code"] == "too_many_requests" and p.errors[0]["line"] == 4


def test_item_ids_are_stable_and_distinct() -> None:
    assert item_id("batch_1", 3) == item_id("batch_1", 3)
    assert len({item_id("batch_1", n) for n in range(100)} | {item_id("batch_2", 1)}) == 101
    assert item_id("batch_1", 1).startswith("batch_req_")


def test_output_and_error_lines_have_openais_shape() -> None:
    out = output_line("b", 1, "c", 200, {"x": 1})
    assert set(out) == {"id", "custom_id", "response", "error"} and out["error"] is None
    assert out["response"] == {"status_code": 200, "request_id": out["id"], "body": {"x": 1}}
    assert is_success(out)
    assert not is_success(output_line("b", 2, "c", 400, {"error": {}}))
    err = error_line("b", 3, None, "invalid_json", "line 3: ...")
    assert err["response"] is None and err["error"] == {"code": "invalid_json", "message": "line 3: ..."}
    assert not is_success(err)
