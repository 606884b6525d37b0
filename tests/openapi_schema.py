"""Validate JSON bodies against OpenAI's published OpenAPI schemas.

Usage (from any test module)::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/
    from openapi_schema import validate

    validate(body, "CreateChatCompletionResponse")  # AssertionError if invalid

The spec is OpenAPI 3.1 (JSON Schema 2020-12), but a few OpenAI schemas still
carry the 3.0-style ``nullable: true`` (e.g. ``finish_reason`` and ``usage`` of
``CreateChatCompletionStreamResponse``), which 2020-12 ignores; those are
rewritten to ``type: [..., "null"]`` / ``anyOf: [..., {type: null}]`` so that
what the real API sends (``"finish_reason": null``) validates. ``format`` is
not asserted.

The spec is looked up at ``$MODELYARD_OPENAPI_SPEC``, then ``shared/specs/``
beside or inside the repository root, then ``/work/shared/specs/``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_NAME = "openai-openapi.yaml"
_BASE_URI = "urn:openai-openapi"


def spec_path() -> Path:
    env = os.environ.get("MODELYARD_OPENAPI_SPEC")
    repo = Path(__file__).resolve().parents[1]
    candidates = [Path(env)] if env else []
    candidates += [
        repo.parent / "shared" / "specs" / SPEC_NAME,
        repo / "shared" / "specs" / SPEC_NAME,
        Path("/work/shared/specs") / SPEC_NAME,
    ]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        "OpenAI OpenAPI spec not found; looked at: " + ", ".join(map(str, candidates))
    )


def _fix_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_fix_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _fix_nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        t = out.get("type")
        if isinstance(t, str) and t != "null":
            out["type"] = [t, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif isinstance(t, list):
            if "null" not in t:
                out["type"] = [*t, "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:  # $ref / composition: allow null alongside
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.lru_cache(maxsize=1)
def _spec() -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(spec_path(), encoding="utf-8") as f:
        raw = yaml.load(f, Loader=loader)  # noqa: S506 - safe loader
    return {"components": {"schemas": _fix_nullable(raw["components"]["schemas"])}}


@functools.lru_cache(maxsize=1)
def _registry() -> Registry:
    return Registry().with_resource(_BASE_URI, Resource.from_contents(_spec(), DRAFT202012))


def schema_names() -> list[str]:
    return sorted(_spec()["components"]["schemas"])


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> jsonschema.Draft202012Validator:
    if schema_name not in _spec()["components"]["schemas"]:
        raise KeyError(f"no schema named {schema_name!r} in {spec_path()}")
    ref = {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(ref, registry=_registry())


def validate(instance: Any, schema_name: str) -> None:
    """Assert that ``instance`` is valid against ``#/components/schemas/<schema_name>``."""
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        lines = [
            f"  at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:300]}"
            for e in errors[:10]
        ]
        raise AssertionError(
            f"body does not match OpenAI schema {schema_name} "
            f"({len(errors)} error(s)):\n" + "\n".join(lines) + f"\nbody: {str(instance)[:1000]}"
        )
