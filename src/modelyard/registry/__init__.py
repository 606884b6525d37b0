"""The local artifact store: models are imported once (content-addressed, versioned) and loaded from it.

``ArtifactStore`` owns the files under its root; ``import_defaults`` fills it from the installed model
packages; ``modelyard models ...`` (``registry/cli.py``) is the command line on top.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from modelyard.registry.artifacts import ArtifactStore, Manifest, dir_digest

__all__ = ["ArtifactStore", "Manifest", "default_store_dir", "dir_digest"]


def default_store_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$MODELYARD_HOME/artifacts``; ``MODELYARD_HOME`` defaults to ``~/.modelyard``."""
    env = os.environ if environ is None else environ
    return Path(env.get("MODELYARD_HOME") or "~/.modelyard").expanduser() / "artifacts"
