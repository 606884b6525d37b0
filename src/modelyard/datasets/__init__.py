"""Labelled data sets modelyard ships (JSON lines), each generated reproducibly by the seeded
``_make_*.py`` script beside it. Read them with ``importlib.resources.files("modelyard.datasets")``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def render(items: list[dict[str, Any]]) -> str:
    """JSON lines, keys sorted: the byte-identical form every generator writes."""
    return "".join(json.dumps(it, ensure_ascii=False, sort_keys=True) + "\n" for it in items)


def generator_main(build: Callable[[], list[dict[str, Any]]], out: Path, doc: str, argv: list[str] | None = None) -> int:
    """The command line of a ``_make_*.py`` generator: write ``out``, or with ``--check`` exit 1
    when the shipped file is not what ``build`` makes."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the shipped file differs from what this makes")
    p.add_argument("--out", type=Path, default=out)
    args = p.parse_args(argv)
    text = render(build())
    if args.check:
        same = args.out.exists() and args.out.read_text(encoding="utf-8") == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS'}")
        return 0 if same else 1
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {text.count(chr(10))} items to {args.out}")
    return 0
