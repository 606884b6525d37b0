"""Extract the part of OpenAI's published OpenAPI document that modelyard implements.

    python -m modelyard.api.openapi_gen [--spec openai-openapi.yaml] [--check]

reads OpenAI's spec (MIT; by default ``shared/specs/openai-openapi.yaml`` beside or inside the
repository, or ``$MODELYARD_OPENAPI_SPEC``) and writes ``api/openapi/openai-subset.json`` (and the
spec's licence beside it), which the package ships: ``GET /openapi.json`` is built from it at run
time (``api/openapi_doc.py``), so nothing outside the package is read while serving.

What is kept, and how it is adjusted (nothing else is changed):

- the operations modelyard serves (``OPERATIONS``), their paths prefixed with ``/v1`` (OpenAI's
  server URL is ``https://api.openai.com/v1``; modelyard's own endpoints live beside ``/v1``, so
  the document's server is the root and the prefix moves into the paths);
- every component those operations reference, transitively;
- ``nullable: true`` (an OpenAPI 3.0 keyword that 3.1, this document's version, ignores) is
  rewritten as 3.1 says it: ``type: [T, "null"]`` (with ``null`` added to an ``enum``), or
  ``anyOf: [..., {type: "null"}]`` around a ``$ref`` or a composition — what the spec means and what
  the real API sends (``"finish_reason": null``);
- ``x-oaiMeta`` (the reference site's rendering hints and examples) is dropped.

``--check`` exits 1 when the bundled files differ from what the spec gives (the test suite runs
the same comparison).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

SPEC_NAME = "openai-openapi.yaml"
LICENSE_NAME = "openai-openapi.LICENSE"
BUNDLE_DIR = Path(__file__).resolve().parent / "openapi"
SUBSET_PATH = BUNDLE_DIR / "openai-subset.json"
LICENSE_PATH = BUNDLE_DIR / LICENSE_NAME

# (OpenAI's path, method): the OpenAI operations modelyard implements.
OPERATIONS = (
    ("/chat/completions", "post"),
    ("/completions", "post"),
    ("/embeddings", "post"),
    ("/moderations", "post"),
    ("/models", "get"),
    ("/models/{model}", "get"),
    ("/responses", "post"),
    ("/responses/{response_id}", "get"),
    ("/responses/{response_id}", "delete"),
    ("/responses/{response_id}/cancel", "post"),
    ("/responses/{response_id}/input_items", "get"),
    ("/files", "post"),
    ("/files", "get"),
    ("/files/{file_id}", "get"),
    ("/files/{file_id}", "delete"),
    ("/files/{file_id}/content", "get"),
    ("/batches", "post"),
    ("/batches", "get"),
    ("/batches/{batch_id}", "get"),
    ("/batches/{batch_id}/cancel", "post"),
)
PREFIX = "/v1"
_DROP = ("x-oaiMeta",)


def default_spec_path() -> Path | None:
    """``$MODELYARD_OPENAPI_SPEC``, else ``shared/specs/`` beside or inside the repository, else None."""
    env = os.environ.get("MODELYARD_OPENAPI_SPEC")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[3]
    for c in (repo.parent / "shared" / "specs" / SPEC_NAME, repo / "shared" / "specs" / SPEC_NAME):
        if c.is_file():
            return c
    return None


def fix_nullable(node: Any) -> Any:
    """``nullable: true`` (OpenAPI 3.0) → its OpenAPI 3.1 / JSON Schema 2020-12 equivalent."""
    if isinstance(node, list):
        return [fix_nullable(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: fix_nullable(v) for k, v in node.items() if k not in _DROP}
    if out.pop("nullable", False) is not True:
        return out
    t = out.get("type")
    if isinstance(t, (str, list)):
        types = [t] if isinstance(t, str) else list(t)
        if "null" not in types:
            out["type"] = [*types, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}  # a $ref or a composition: null beside it


def _refs(node: Any, found: list[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.append(ref)
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"external $ref not supported: {ref}")
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def extract(spec: dict[str, Any], license_text: str, source_sha256: str) -> dict[str, Any]:
    """The subset document (a plain dict, ready for ``json.dumps``)."""
    paths: dict[str, Any] = {}
    for path, method in OPERATIONS:
        item = spec["paths"][path]
        shared = {k: v for k, v in item.items() if k in ("parameters", "summary", "description")}
        paths.setdefault(PREFIX + path, dict(shared))[method] = item[method]
    components: dict[str, dict[str, Any]] = {}
    pending: list[str] = []
    _refs(paths, pending)
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref in seen:
            continue
        seen.add(ref)
        target = _resolve(spec, ref)
        _, section, name = ref[2:].split("/", 2)  # components/<section>/<name>
        components.setdefault(section, {})[name] = target
        _refs(target, pending)
    info = spec["info"]
    doc = {
        "openapi": spec["openapi"],
        "info": {
            "title": "OpenAI API: the operations modelyard implements",
            "version": info["version"],
            "description": (
                f"Extracted from OpenAI's OpenAPI document (version {info['version']}, sha256 {source_sha256}) "
                "by modelyard.api.openapi_gen: the operations modelyard serves, paths under /v1, every component "
                "they reference, 3.0-style `nullable` rewritten for 3.1, `x-oaiMeta` dropped."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
            "x-license-text": license_text,
        },
        "servers": [{"url": "/"}],
        "security": spec.get("security", []),
        "paths": paths,
        "components": {
            **{section: dict(sorted(items.items())) for section, items in sorted(components.items())},
            "securitySchemes": {"ApiKeyAuth": spec["components"]["securitySchemes"]["ApiKeyAuth"]},
        },
    }
    return fix_nullable(doc)


def render(spec_path: Path) -> tuple[bytes, bytes]:
    """(subset JSON bytes, licence bytes) generated from the spec at ``spec_path``."""
    import yaml

    raw = spec_path.read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(raw, Loader=loader)  # noqa: S506 - a safe loader
    lic_path = spec_path.with_name(LICENSE_NAME)
    license_text = lic_path.read_text("utf-8") if lic_path.is_file() else ""
    doc = extract(spec, license_text, hashlib.sha256(raw).hexdigest())
    body = json.dumps(doc, indent=1, ensure_ascii=False) + "\n"
    return body.encode("utf-8"), license_text.encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m modelyard.api.openapi_gen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=None, help=f"OpenAI's {SPEC_NAME} (default: shared/specs/)")
    ap.add_argument("--check", action="store_true", help="compare with the bundled files instead of writing them")
    args = ap.parse_args(argv)
    spec = args.spec or default_spec_path()
    if spec is None or not spec.is_file():
        print(f"error: {SPEC_NAME} not found (give --spec or set MODELYARD_OPENAPI_SPEC)", file=sys.stderr)
        return 2
    subset, license_bytes = render(spec)
    if args.check:
        stale = [p.name for p, want in ((SUBSET_PATH, subset), (LICENSE_PATH, license_bytes))
                 if not p.is_file() or p.read_bytes() != want]
        if stale:
            print(f"stale: {', '.join(stale)}; regenerate with python -m modelyard.api.openapi_gen", file=sys.stderr)
            return 1
        print("bundled OpenAPI subset is up to date")
        return 0
    BUNDLE_DIR.mkdir(exist_ok=True)
    SUBSET_PATH.write_bytes(subset)
    LICENSE_PATH.write_bytes(license_bytes)
    print(f"wrote {SUBSET_PATH} ({len(subset)} bytes) and {LICENSE_PATH.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
