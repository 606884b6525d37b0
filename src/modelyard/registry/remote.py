"""The shared artifact registry: push and pull the local store's artifacts to an S3-compatible bucket.

Layout under ``s3://<bucket>/<prefix>/`` (the same names as the local store)::

    blobs/sha256/<hex>/<file path>      one object per file of a blob; metadata ``sha256`` = the file's digest
    manifests/<name>/<version>.json     byte for byte the JSON the local store writes

**Push** uploads the blob's files first (multipart above ``multipart_threshold``; a file already
there with the same size and ``sha256`` metadata is skipped) and the manifest last, so a reader
never sees a manifest whose blobs are missing. A manifest is immutable: pushing ``name@version``
with other content than the bucket holds is refused.

**Pull** resolves ``name``, ``name@version`` or ``name@sha256:<hex>`` against the bucket's
manifests, downloads each file into ``<store>/partial/<hex>/`` (appending, fsync'd; an interrupted
pull — an exception, a network error, a killed process — resumes with an HTTP ``Range`` request
from the partial file's size) and commits it through ``ArtifactStore.import_file(expected_sha256=
manifest digest)`` (a directory model: each file hashed here against the manifest's
``files_sha256`` and the directory digest, then ``import_dir``). The store hard-links the partial
file into a temp blob, hashes it (one pass) and refuses a digest that is not the manifest's before
anything is committed; the refusal is reported naming the artifact, the object, the expected and
the found digest, and the partial files are removed. So every invariant of the local store holds
for pulled artifacts too.

boto3 is an optional dependency (``pip install 'modelyard[registry]'``), imported only here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelyard.errors import ArtifactError
from modelyard.registry.artifacts import ArtifactStore, Manifest, _norm_digest, _rmtree, dir_digest

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("modelyard")
Progress = Callable[[int, int], None]  # (bytes done, bytes total) of the whole push or pull
READ_CHUNK = 1 << 20
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNK = 16 << 20


@dataclass(frozen=True)
class RemoteSettings:
    """Where the bucket is and how to reach it (``config.schema.RegistryConfig``, CLI flags)."""

    url: str  # s3://bucket/prefix
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @property
    def bucket(self) -> str:
        return _split_url(self.url)[0]

    @property
    def prefix(self) -> str:
        return _split_url(self.url)[1]


@dataclass
class TransferReport:
    """What one push or pull did."""

    manifest: Manifest
    transferred: int = 0  # bytes sent or received over the network this time
    skipped: int = 0  # bytes not sent (already in the bucket) or not fetched again (resumed, or local)
    resumed_from: dict[str, int] = field(default_factory=dict)  # file → bytes already there when resuming
    already_local: bool = False
    manifest_written: bool = False


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``name``, ``name@version`` or ``name@sha256:<hex>`` → (name, version, digest)."""
    name, _, rest = ref.partition("@")
    if not name or (ref.endswith("@")):
        raise ArtifactError(f"invalid model reference {ref!r}: use NAME, NAME@VERSION or NAME@sha256:HEX")
    if rest.startswith("sha256:"):
        return name, None, _norm_digest(rest)
    return name, rest or None, None


def _split_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ArtifactError(f"invalid registry URL {url!r}: expected s3://bucket[/prefix]")
    return parts.netloc, parts.path.strip("/")


class RemoteStore:
    """Push to and pull from one bucket/prefix, on behalf of one local ``ArtifactStore``."""

    def __init__(self, store: ArtifactStore, settings: RemoteSettings, *, client: Any = None) -> None:
        self.store = store
        self.settings = settings
        self.bucket, self.prefix = _split_url(settings.url)
        self.client = client if client is not None else make_client(settings)

    @property
    def url(self) -> str:
        return self.settings.url

    # --- keys ----------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def blob_key(self, hexd: str, rel: str) -> str:
        return self._key("blobs", "sha256", hexd, rel)

    def manifest_key(self, name: str, version: str) -> str:
        return self._key("manifests", name, f"{version}.json")

    # --- remote manifests ----------------------------------------------------------------------

    def remote_versions(self, name: str) -> list[Manifest]:
        """Every version of ``name`` in the bucket, oldest first (as the local store orders them)."""
        out: list[Manifest] = []
        prefix = self._key("manifests", name) + "/"
        with self._errors(f"listing {name!r}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    m = self._read_manifest(obj["Key"], missing_ok=True) if obj["Key"].endswith(".json") else None
                    if m is not None:
                        out.append(m)
        return sorted(out, key=lambda m: (m.created, m.version))

    def resolve(self, name: str, version: str | None = None, *, digest: str | None = None) -> Manifest:
        """The bucket's manifest for ``name@version`` (or the latest; ``digest`` pins the content)."""
        pinned = _norm_digest(digest) if digest else None
        if version is not None:
            m = self._read_manifest(self.manifest_key(name, version), missing_ok=True)
            if m is None:
                raise ArtifactError(f"model {name}@{version} is not in the registry {self.url}")
        else:
            versions = [v for v in self.remote_versions(name) if pinned is None or v.digest == pinned]
            if not versions:
                what = f"{name!r} with digest {pinned}" if pinned else repr(name)
                raise ArtifactError(f"model {what} is not in the registry {self.url}")
            m = versions[-1]
        if pinned is not None and m.digest != pinned:
            raise ArtifactError(f"model {m.ref} in the registry {self.url} has digest {m.digest}, but {pinned} is pinned")
        return m

    def _read_manifest(self, key: str, *, missing_ok: bool = False) -> Manifest | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - translated below
            if missing_ok and _is_missing(exc):
                return None
            raise self._translate(exc, f"reading {key}") from exc
        try:
            return Manifest.from_dict(json.loads(body))
        except (ValueError, ArtifactError) as exc:
            raise ArtifactError(f"registry manifest s3://{self.bucket}/{key} is unreadable: {exc}") from exc

    # --- push ----------------------------------------------------------------------------------

    def push(
        self, name: str, version: str | None = None, *, digest: str | None = None, progress: Progress | None = None
    ) -> TransferReport:
        """Upload ``name@version`` (default: the latest local version): blobs first, manifest last."""
        m = self.store.get(name, version, digest=digest)
        self.store.verify(m)  # never publish a damaged local copy
        report = TransferReport(manifest=m)
        existing = self._read_manifest(self.manifest_key(m.name, m.version), missing_ok=True)
        if existing is not None and existing.digest != m.digest:
            raise ArtifactError(
                f"model {m.ref} is already in the registry {self.url} with digest {existing.digest}; "
                f"the local one is {m.digest} (push it under another version)"
            )
        files = self._files(m, local=True)
        total = sum(size for _, _, size in files)
        done = [0]
        lock = threading.Lock()

        def advance(n: int) -> None:  # boto3 calls it from its transfer threads
            with lock:
                done[0] += n
                if progress is not None:
                    progress(done[0], total)

        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK)
        for rel, hexd, size in files:
            key = self.blob_key(m.hex, rel)
            if self._object_matches(key, size, hexd):
                report.skipped += size
                advance(size)
                continue
            with self._errors(f"uploading {key}"):
                self.client.upload_file(
                    str(self._local_file(m, rel)), self.bucket, key,
                    ExtraArgs={"Metadata": {"sha256": hexd}}, Config=config, Callback=advance,
                )  # fmt: skip
            report.transferred += size
        if existing is None:  # last: the manifest makes the blobs visible
            body = json.dumps(m.to_dict(), indent=2, sort_keys=True).encode()
            with self._errors(f"writing the manifest of {m.ref}"):
                self.client.put_object(Bucket=self.bucket, Key=self.manifest_key(m.name, m.version), Body=body,
                                       ContentType="application/json")  # fmt: skip
            report.manifest_written = True
        return report

    def _object_matches(self, key: str, size: int, hexd: str) -> bool:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            if _is_missing(exc):
                return False
            raise self._translate(exc, f"checking {key}") from exc
        return int(head.get("ContentLength", -1)) == size and (head.get("Metadata") or {}).get("sha256") == hexd

    # --- pull ----------------------------------------------------------------------------------

    def pull(
        self, name: str, version: str | None = None, *, digest: str | None = None, progress: Progress | None = None
    ) -> TransferReport:
        """Make ``name@version`` (or the latest in the bucket; ``digest`` pins) present locally."""
        with contextlib.suppress(ArtifactError):  # present and intact-looking: nothing to fetch
            local = self.store.get(name, version, digest=digest)
            if version is not None or digest is not None:
                self.store.path(local)
                return TransferReport(manifest=local, skipped=local.size, already_local=True)
        m = self.resolve(name, version, digest=digest)
        with contextlib.suppress(ArtifactError):
            local = self.store.get(m.name, m.version)
            if local.digest == m.digest:
                self.store.path(local)
                return TransferReport(manifest=local, skipped=local.size, already_local=True)
        report = TransferReport(manifest=m)
        work = self.store.root / "partial" / m.hex
        work.mkdir(parents=True, exist_ok=True)
        with _flock(self.store.root / "partial" / f".{m.hex}.lock"):
            with contextlib.suppress(ArtifactError):  # another process pulled it while we waited
                local = self.store.get(m.name, m.version)
                if local.digest == m.digest:
                    self.store.path(local)
                    return TransferReport(manifest=local, skipped=local.size, already_local=True)
            files = self._files(m, local=False)
            total = sum(size for _, _, size in files)
            done = 0
            for rel, _, size in files:  # an error here keeps the partial files: the next pull resumes
                def step(n: int, base: int = done) -> None:
                    if progress is not None:
                        progress(base + n, total)

                self._download(m, rel, size, work / rel, report, step)
                done += size
            try:
                # Verified before anything is committed: a single file by import_file(expected_sha256=...)
                # (one hashing pass, on the hard link it makes); a directory's files here, one by one.
                if m.kind == "dir":
                    self._check(m, files, work)
                try:
                    report.manifest = self._commit(m, work)
                except ArtifactError:
                    self._check(m, files, work)  # a digest mismatch: say so, naming the object
                    raise  # another failure (disk, lock, ...)
            finally:  # committed (linked into the store) or refused: the partial files go
                _rmtree(work)
        return report

    def _check(self, m: Manifest, files: list[tuple[str, str, int]], work: Path) -> None:
        """Every downloaded file against the manifest: ArtifactError naming the artifact, the object,
        the expected and the found digest."""
        entries = []
        for rel, want, size in files:
            found, got = _sha256_file(work / rel)
            if found != want or got != size:
                where = f"s3://{self.bucket}/{self.blob_key(m.hex, rel)}"
                raise ArtifactError(
                    f"artifact {m.ref} pulled from {where} is corrupt: expected sha256:{want} ({size} bytes), "
                    f"found sha256:{found} ({got} bytes); nothing was stored and the partial download was removed"
                )
            entries.append((rel, found, got))
        if m.kind == "dir" and dir_digest(entries) != m.hex:
            raise ArtifactError(f"artifact {m.ref} from {self.url}: its files do not add up to {m.digest}; nothing was stored")

    def _download(self, m: Manifest, rel: str, size: int, part: Path, report: TransferReport,
                  progress: Callable[[int], Any]) -> None:  # fmt: skip
        """Fetch one file into ``part``, resuming from what it already holds (an HTTP Range request)."""
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not a prefix of this file: start over
            part.unlink()
            have = 0
        if have:
            report.resumed_from[rel] = have
            report.skipped += have
        progress(have)
        got = have
        key = self.blob_key(m.hex, rel)
        if have == size and size > 0:
            return
        with self._errors(f"downloading {key}"):
            kw = {"Range": f"bytes={have}-"} if have else {}
            body = self.client.get_object(Bucket=self.bucket, Key=key, **kw)["Body"]
            with open(part, "ab") as out:
                try:
                    for chunk in body.iter_chunks(READ_CHUNK):
                        out.write(chunk)
                        got += len(chunk)
                        report.transferred += len(chunk)
                        progress(got)
                        if got > size:
                            break  # longer than the manifest says: refused by the digest check
                finally:
                    body.close()
                    out.flush()
                    os.fsync(out.fileno())  # the store links this file: its bytes must be on disk

    def _commit(self, m: Manifest, work: Path) -> Manifest:
        """Hand a verified download to the local store (linked in; it checks the digest again)."""
        extra = {k: v for k, v in m.extra.items() if k not in ("linked", "files_sha256", "expected_sha256")}
        extra["pulled_from"] = self.url
        for rel in m.files:  # read-only, as the store's own copies are (the link keeps this mode)
            os.chmod(work / rel, 0o444)
        if m.kind == "file":
            return self.store.import_file(
                m.name, work / m.files[0], engine=m.engine, format=m.format, quantisation=m.quantisation,
                source=m.source, version=m.version, expected_sha256=m.digest, extra=extra,
            )  # fmt: skip
        local = self.store.import_dir(
            m.name, work, engine=m.engine, format=m.format, source=m.source, version=m.version,
            quantisation=m.quantisation, extra=extra,
        )  # fmt: skip
        if local.digest != m.digest:  # pragma: no cover - verified above
            raise ArtifactError(f"artifact {m.ref}: stored digest {local.digest} differs from {m.digest}")
        return local

    # --- helpers -------------------------------------------------------------------------------

    def _files(self, m: Manifest, *, local: bool) -> list[tuple[str, str, int]]:
        """(relative path, sha256 hex, size) of each file of ``m``; sizes from the local blob or the bucket."""
        if m.kind == "file":
            return [(m.files[0], m.hex, m.size)]
        known = m.extra.get("files_sha256") or {}
        out = []
        for rel in m.files:
            if rel not in known:
                raise ArtifactError(f"manifest of {m.ref} lacks the sha256 of {rel}; re-import it")
            size = self._local_file(m, rel).stat().st_size if local else self._remote_size(m, rel)
            out.append((rel, known[rel], size))
        return out

    def _local_file(self, m: Manifest, rel: str) -> Path:
        p = self.store.path(m)
        return p if m.kind == "file" else p / rel

    def _remote_size(self, m: Manifest, rel: str) -> int:
        key = self.blob_key(m.hex, rel)
        with self._errors(f"checking {key}"):
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except ArtifactError:
            raise
        except Exception as exc:  # noqa: BLE001 - botocore's errors are many; all become ArtifactError
            if type(exc).__module__.split(".")[0] not in ("botocore", "boto3", "s3transfer", "urllib3"):
                raise
            raise self._translate(exc, doing) from exc

    def _translate(self, exc: Exception, doing: str) -> ArtifactError:
        return ArtifactError(f"registry {self.url}: {doing} failed: {type(exc).__name__}: {exc}")


def make_client(settings: RemoteSettings) -> Any:
    """A boto3 S3 client for ``settings`` (path-style addressing: what MinIO and Ceph expect)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ArtifactError("the artifact registry needs boto3: pip install 'modelyard[registry]'") from exc
    kw: dict[str, Any] = {}
    if settings.access_key_id and settings.secret_access_key:
        kw.update(aws_access_key_id=settings.access_key_id, aws_secret_access_key=settings.secret_access_key)
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"})
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=cfg, **kw
    )


def remote_for(store: ArtifactStore, registry: Any, *, first_use: bool = False) -> RemoteStore | None:
    """The ``RemoteStore`` a ``RegistryConfig`` describes, or None (no URL; or, for ``first_use``,
    pulling on first use is off)."""
    if not registry.url or (first_use and not registry.pull_on_first_use):
        return None
    settings = RemoteSettings(
        url=registry.url, endpoint_url=registry.endpoint_url, region=registry.region,
        access_key_id=registry.access_key_id, secret_access_key=registry.secret_access_key,
    )  # fmt: skip
    return RemoteStore(store, settings)


def ensure_local(store: ArtifactStore, remote: RemoteStore | None, name: str, version: str | None = None,
                 digest: str | None = None) -> Manifest:  # fmt: skip
    """The local manifest of ``name@version``, pulled from ``remote`` first when the local store
    lacks it (or holds a damaged copy). The one place where "pull on first use" happens."""
    try:
        m = store.get(name, version, digest=digest)
        store.path(m)
        return m
    except ArtifactError as exc:
        if remote is None:
            raise
        log.info("artifact %s is not in the local store: pulling it from %s", name, remote.url)
        try:
            report = remote.pull(name, version, digest=digest)
            log.info("pulled %s %s (%d bytes)", report.manifest.ref, report.manifest.digest, report.transferred)
            return report.manifest
        except ArtifactError as pull_exc:
            raise ArtifactError(f"{exc.message}; pulling it from {remote.url} failed: {pull_exc.message}") from pull_exc


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK * 4):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _is_missing(exc: Exception) -> bool:
    resp = getattr(exc, "response", None)
    if not isinstance(resp, dict):
        return False
    code = str(resp.get("Error", {}).get("Code", ""))
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """One pull of a blob at a time per store (threads and processes): they share the partial file."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
