"""The bytes of uploaded and produced files, under ``<data_dir>/files/<file id>``.

Writes go to a temporary name in the same folder and are renamed into place once complete (and
fsynced), so a file id never names half a file, also after a crash. The database row is written
after the rename, so a row never names missing bytes; ``sweep`` removes temporaries a crash left.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, file_id: str) -> Path:
        if not file_id or "/" in file_id or file_id.startswith("."):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id

    def open_temp(self) -> tuple[Path, BinaryIO]:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{secrets.token_hex(8)}"
        return tmp, open(tmp, "wb")  # noqa: SIM115 - closed by commit/abort

    def commit(self, tmp: Path, fh: BinaryIO, file_id: str) -> None:
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()
        os.replace(tmp, self.path(file_id))

    @staticmethod
    def abort(tmp: Path, fh: BinaryIO) -> None:
        fh.close()
        tmp.unlink(missing_ok=True)

    def lines(self, file_id: str) -> Iterator[bytes]:
        with open(self.path(file_id), "rb") as f:
            yield from f

    def remove(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)

    def sweep(self) -> int:
        """Remove temporaries left by a crash (at start, before any upload runs)."""
        if not self.root.is_dir():
            return 0
        n = 0
        for p in self.root.glob(".tmp-*"):
            p.unlink(missing_ok=True)
            n += 1
        return n
