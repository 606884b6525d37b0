"""The OpenAPI document modelyard serves: the bundled OpenAI extract is what the generator makes
from OpenAI's spec, the document is valid and loads in Schemathesis, and it documents exactly the
routes the app serves."""

from __future__ import annotations

import json
import os
from importlib import resources

import pytest
import schemathesis

from modelyard.api import create_app
from modelyard.api import openapi_gen
from modelyard.api.openapi_doc import build_document, openai_subset
from modelyard.config.loader import settings_from_dict


def test_regenerating_from_openais_spec_gives_the_bundled_files() -> None:
    spec = openapi_gen.default_spec_path()
    if spec is None or not spec.is_file():
        msg = f"OpenAI's {openapi_gen.SPEC_NAME} not found (shared/specs/ or $MODELYARD_OPENAPI_SPEC)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + ": CI must check that the bundled subset is current")
        pytest.skip(msg)
    subset, license_bytes = openapi_gen.render(spec)
    assert openapi_gen.SUBSET_PATH.read_bytes() == subset, "stale: run python -m modelyard.api.openapi_gen"
    assert openapi_gen.LICENSE_PATH.read_bytes() == license_bytes
    assert b"MIT" in license_bytes and b"OpenAI" in license_bytes


def test_the_bundled_subset_is_package_data_and_self_contained() -> None:
    path = resources.files("modelyard.api").joinpath("openapi", "openai-subset.json")
    assert path.is_file()
    doc = openai_subset()
    assert sorted(doc["paths"]) == sorted(["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models",
                                           "/v1/models/{model}", "/v1/moderations", "/v1/responses",
                                           "/v1/responses/{response_id}", "/v1/responses/{response_id}/cancel",
                                           "/v1/responses/{response_id}/input_items", "/v1/files", "/v1/files/{file_id}",
                                           "/v1/files/{file_id}/content", "/v1/batches", "/v1/batches/{batch_id}",
                                           "/v1/batches/{batch_id}/cancel"])
    text = json.dumps(doc)
    assert not {"nullable", "x-oaiMeta"} & _keys(doc)
    refs = {r.split('"')[0] for r in text.split('"$ref": "')[1:]}
    for ref in refs:  # every reference resolves inside the document
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node).union(*(_keys(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(v) for v in node))
    return set()


def test_nullable_becomes_openapi_31() -> None:
    assert openapi_gen.fix_nullable({"type": "string", "enum": ["a"], "nullable": True}) == {
        "type": ["string", "null"], "enum": ["a", None]}
    assert openapi_gen.fix_nullable({"$ref": "#/x", "nullable": True}) == {"anyOf": [{"$ref": "#/x"}, {"type": "null"}]}
    assert openapi_gen.fix_nullable({"type": "integer", "nullable": False}) == {"type": "integer"}


@pytest.mark.parametrize("keys", [True, False])
def test_the_document_loads_and_every_operation_resolves(keys: bool) -> None:
    doc = build_document(keys_enabled=keys)
    schema = schemathesis.openapi.from_dict(json.loads(json.dumps(doc)))
    ops = [r.ok() for r in schema.get_all_operations()]  # .ok() raises on an invalid operation
    assert len(ops) == 37
    for item in doc["paths"].values():
        for op in item.values():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")) and "$ref" in resp:
                    assert resp["$ref"].rsplit("/", 1)[1] in ("Error", "TooManyRequests", "Unavailable")
    if not keys:
        assert all(op.get("security") in (None, [], [{}]) for item in doc["paths"].values() for op in item.values())


def test_the_document_describes_exactly_the_routes_the_app_serves() -> None:
    app = create_app(settings_from_dict({"models": []}).settings)
    served = {(path, m) for path, methods in app._routes.items() for m in methods}
    served |= {(prefix, m) for prefix, methods in app._prefix_routes for m in methods}
    doc = build_document(keys_enabled=True)
    documented = {(path, m.upper()) for path, item in doc["paths"].items() for m in item
                  if m in ("get", "post", "delete")}
    # A prefix route serves every documented path under it (its handler splits the rest of the path).
    prefixes = ("/v1/models/", "/admin/models/", "/v1/responses/", "/v1/files/", "/v1/batches/")
    as_documented = {(p, m) for p, m in served if not p.startswith("/ui") and p not in prefixes}  # UI pages: not API
    for prefix in prefixes:
        methods = {m for p, m in served if p == prefix}
        under = {(path, m) for path, m in documented if path.startswith(prefix.rstrip("/") + "/{")}
        assert {m for _, m in under} == methods, (prefix, methods, under)
        as_documented |= under
    assert as_documented == documented
