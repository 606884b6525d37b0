"""The shared artifact registry against a real S3-compatible server (moto in server mode, on loopback):
push / pull, idempotency, immutability, a corrupted object refused, an interrupted pull resumed,
pull on first use, and the ``modelyard models push|pull`` command line."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.config.schema import LocalDeployment, RegistryConfig, Settings
from modelyard.errors import ArtifactError
from modelyard.registry.artifacts import ArtifactStore
from .services import missing

try:
    import boto3
    import moto.server  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    boto3 = None  # type: ignore[assignment]
    _IMPORT_ERROR: str | None = f"{exc}; pip install 'moto[server]>=5' 'boto3>=1.34' (the test extra has them)"
else:
    _IMPORT_ERROR = None

BUCKET = "team-models"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in its own process on a free loopback port; stopped afterwards."""
    if _IMPORT_ERROR:
        missing(_IMPORT_ERROR)
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CREDS},
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=1).close()  # noqa: S310 - loopback
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()


@pytest.fixture
def registry(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> RegistryConfig:
    """A fresh prefix in the bucket per test (the server lives for the module)."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=BUCKET)
    return RegistryConfig(url=f"s3://{BUCKET}/{request.node.name[:40]}", endpoint_url=s3_endpoint)


def _remote(store: ArtifactStore, reg: RegistryConfig):  # noqa: ANN202
    from modelyard.registry.remote import remote_for

    r = remote_for(store, reg)
    assert r is not None
    return r


def _s3(reg: RegistryConfig):  # noqa: ANN202
    return boto3.client("s3", endpoint_url=reg.endpoint_url, region_name="us-east-1")


def _model_file(tmp_path: Path, size: int, seed: int = 1) -> Path:
    p = tmp_path / f"weights-{seed}.gguf"
    block = hashlib.sha256(str(seed).encode()).digest() * 1024  # 32 KiB, not all zeros
    with open(p, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])
    return p


def _import(store: ArtifactStore, src: Path, name: str = "chat", version: str = "v1"):  # noqa: ANN202
    return store.import_file(name, src, engine="llamacpp", format="gguf", quantisation="Q4_1", source=f"file:{src}",
                             version=version)  # fmt: skip


def _count_gets(client) -> list[dict]:  # noqa: ANN001
    """Record every GetObject this client sends: its Range header and the bytes the server answered."""
    calls: list[dict] = []

    def before(request, **_kw) -> None:  # noqa: ANN001
        rng = request.headers.get("Range")
        calls.append({"url": request.url, "range": rng.decode() if isinstance(rng, bytes) else rng})

    def after(http_response, **_kw) -> None:  # noqa: ANN001
        calls[-1]["length"] = int(http_response.headers.get("content-length", -1))

    client.meta.events.register("before-send.s3.GetObject", before)
    client.meta.events.register("after-call.s3.GetObject", after)
    return calls


def test_push_then_pull_on_another_node(tmp_path: Path, registry: RegistryConfig) -> None:
    src = _model_file(tmp_path, 3 * 1024 * 1024 + 17)
    a = ArtifactStore(tmp_path / "node-a")
    m = _import(a, src)
    report = _remote(a, registry).push("chat")
    assert report.manifest_written and report.transferred == m.size

    s3 = _s3(registry)
    prefix = registry.url.split("/", 3)[3]
    head = s3.head_object(Bucket=BUCKET, Key=f"{prefix}/blobs/sha256/{m.hex}/model.gguf")
    assert head["ContentLength"] == m.size and head["Metadata"]["sha256"] == m.hex
    remote_json = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/manifests/chat/v1.json")["Body"].read()
    assert remote_json == (a.root / "manifests" / "chat" / "v1.json").read_bytes()  # the local store's own JSON

    again = _remote(a, registry).push("chat")  # idempotent: nothing uploaded twice
    assert again.transferred == 0 and again.skipped == m.size and not again.manifest_written

    b = ArtifactStore(tmp_path / "node-b")
    seen: list[tuple[int, int]] = []
    pulled = _remote(b, registry).pull("chat", progress=lambda d, t: seen.append((d, t)))
    assert pulled.manifest.digest == m.digest and pulled.transferred == m.size
    assert seen[-1] == (m.size, m.size)
    b.verify(b.get("chat", "v1"))
    assert b.path(b.get("chat")).read_bytes() == src.read_bytes()
    assert [p.name for p in (b.root / "partial").iterdir()] == [f".{m.hex}.lock"]  # the partial file is gone

    # by digest, by version, and already present: no transfer at all
    by_digest = _remote(b, registry).pull("chat", digest=m.digest)
    assert by_digest.already_local and by_digest.transferred == 0
    c = ArtifactStore(tmp_path / "node-c")
    assert _remote(c, registry).pull("chat", digest=m.digest).manifest.version == "v1"
    with pytest.raises(ArtifactError, match="not in the registry"):
        _remote(c, registry).pull("chat", "v9")


def test_push_refuses_other_content_under_a_published_version(tmp_path: Path, registry: RegistryConfig) -> None:
    a = ArtifactStore(tmp_path / "a")
    _import(a, _model_file(tmp_path, 100_000, seed=1))
    _remote(a, registry).push("chat")
    b = ArtifactStore(tmp_path / "b")
    _import(b, _model_file(tmp_path, 100_000, seed=2))
    with pytest.raises(ArtifactError, match=r"already in the registry .* with digest sha256:"):
        _remote(b, registry).push("chat", "v1")


def test_corrupted_object_is_refused_and_nothing_is_stored(tmp_path: Path, registry: RegistryConfig) -> None:
    a = ArtifactStore(tmp_path / "a")
    m = _import(a, _model_file(tmp_path, 2 * 1024 * 1024))
    remote = _remote(a, registry)
    remote.push("chat")
    key = remote.blob_key(m.hex, "model.gguf")
    good = (a.path(m)).read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF  # one flipped byte, same size, same metadata: only the digest can tell
    _s3(registry).put_object(Bucket=BUCKET, Key=key, Body=bytes(bad), Metadata={"sha256": m.hex})

    b = ArtifactStore(tmp_path / "b")
    with pytest.raises(ArtifactError) as info:
        _remote(b, registry).pull("chat")
    msg = info.value.message
    found = hashlib.sha256(bytes(bad)).hexdigest()
    assert "chat@v1" in msg and f"expected sha256:{m.hex}" in msg and f"found sha256:{found}" in msg
    assert "nothing was stored" in msg
    assert b.list() == []
    assert [p.name for p in (b.root / "blobs" / "sha256").iterdir()] == []
    assert not (b.root / "partial" / m.hex).exists()  # the partial download is gone


class _Interrupted(Exception):
    pass


def test_interrupted_pull_resumes_with_a_range_request(tmp_path: Path, registry: RegistryConfig) -> None:
    size = 6 * 1024 * 1024 + 123
    a = ArtifactStore(tmp_path / "a")
    m = _import(a, _model_file(tmp_path, size))
    _remote(a, registry).push("chat")

    b = ArtifactStore(tmp_path / "b")
    first = _remote(b, registry)

    def stop_midway(done: int, total: int) -> None:
        if done >= 2 * 1024 * 1024:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        first.pull("chat", progress=stop_midway)
    part = b.root / "partial" / m.hex / "model.gguf"
    have = part.stat().st_size
    assert 2 * 1024 * 1024 <= have < size
    assert b.list() == []  # an interrupted pull commits nothing

    second = _remote(b, registry)
    gets = _count_gets(second.client)
    report = second.pull("chat")
    blob_gets = [{k: g[k] for k in ("range", "length")} for g in gets if "/blobs/" in g["url"]]
    assert blob_gets == [{"range": f"bytes={have}-", "length": size - have}]  # the server sent only the rest
    assert report.resumed_from == {"model.gguf": have} and report.transferred == size - have
    b.verify(b.get("chat", "v1"))
    assert not part.exists()


def test_pull_on_first_use_at_resolve_time(tmp_path: Path, registry: RegistryConfig) -> None:
    from modelyard.backends.local_models import _resolve
    from modelyard.registry.remote import ensure_local, remote_for

    a = ArtifactStore(tmp_path / "a")
    m = _import(a, _model_file(tmp_path, 500_000), name="coder", version="2024-10")
    _remote(a, registry).push("coder")

    node = ArtifactStore(tmp_path / "node")
    settings = Settings(registry=registry)
    remote = remote_for(node, settings.registry, first_use=True)
    found = _resolve(node, LocalDeployment(kind="local", artifact="coder", digest=m.digest), remote)
    assert not isinstance(found, str), found
    assert found.digest == m.digest and node.path(found).is_file()
    node.verify(found)
    assert ensure_local(node, remote, "coder").digest == m.digest  # now local: no second pull

    off = Settings(registry=registry.model_copy(update={"pull_on_first_use": False}))
    assert remote_for(ArtifactStore(tmp_path / "x"), off.registry, first_use=True) is None
    why = _resolve(ArtifactStore(tmp_path / "y"), LocalDeployment(kind="local", artifact="nope"), remote)
    assert isinstance(why, str) and "not in the artifact store" in why and "not in the registry" in why


def test_directory_model_round_trip(tmp_path: Path, registry: RegistryConfig) -> None:
    src = tmp_path / "st"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text(json.dumps({"dim": 384}))
    (src / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    a = ArtifactStore(tmp_path / "a")
    m = a.import_dir("text-embedding", src, engine="sentence-transformers", format="sentence-transformers",
                     source="dir:test", version="v1")  # fmt: skip
    _remote(a, registry).push("text-embedding")
    b = ArtifactStore(tmp_path / "b")
    got = _remote(b, registry).pull("text-embedding", "v1").manifest
    assert got.digest == m.digest and got.kind == "dir"
    b.verify(got)


def test_cli_push_and_pull(tmp_path: Path, registry: RegistryConfig) -> None:
    from modelyard.registry.cli import models

    a, b = tmp_path / "a", tmp_path / "b"
    m = _import(ArtifactStore(a), _model_file(tmp_path, 1_000_000))
    flags = ["--remote", registry.url, "--endpoint-url", registry.endpoint_url]
    runner = CliRunner()
    r = runner.invoke(models, ["push", "chat", "--store", str(a), *flags])
    assert r.exit_code == 0, r.output
    assert "pushed chat@v1" in r.output
    r = runner.invoke(models, ["pull", f"chat@{m.digest}", "--store", str(b), *flags])
    assert r.exit_code == 0, r.output
    assert "pulled chat@v1" in r.output and m.digest in r.output
    ArtifactStore(b).verify(ArtifactStore(b).get("chat"))

    r = runner.invoke(models, ["pull", "ghost", "--store", str(b), *flags])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert "not in the registry" in r.output
    r = runner.invoke(models, ["pull", "chat", "--store", str(b)], env={"MODELYARD_REGISTRY_URL": ""})
    assert r.exit_code == 2 and "error: no registry" in r.output
    r = runner.invoke(models, ["push", "chat", "--store", str(a), "--remote", "http://nope"])
    assert r.exit_code == 2 and "s3://" in r.output
