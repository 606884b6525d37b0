"""Pull throughput from the artifact registry against a raw download of the same object.

    flock /tmp/modelyard-bench.lock .venv/bin/python bench/registry_pull.py [--size-mb 320] [--file PATH] [--reps 3]

Starts a moto S3 server (server mode, its own process) on a free loopback port, imports a file
(``--file``, e.g. a GGUF; default: ``--size-mb`` of random bytes) into a temporary ArtifactStore,
pushes it, then alternates, ``--reps`` times each:

  raw GET        one plain HTTP GET of the blob object (urllib, a presigned URL), streamed to a file, no hashing
  raw GET + fsync  the same, and the file fsync'd (as pull does before the store links it)
  boto3 get      ``get_object`` streamed to a file in 1 MiB chunks (the client ``pull`` uses), no hashing
  boto3 download ``download_file`` (s3transfer: ranged GETs on 10 threads), no hashing
  pull           ``RemoteStore.pull`` into a fresh store: GET streamed into a partial file while
                 hashing it, digest checked, then committed by ``ArtifactStore.import_file``
                 (hard-linked, hashed once more)

and prints medians in MB/s and the ratio pull / raw GET; the report goes to
``bench/results/registry_pull-<date>.txt``. Everything runs on this machine's cores (client and
server share them), so the figures are loopback figures, not network ones.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.remote import RemoteSettings, RemoteStore

BUCKET = "bench"
CREDS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **CREDS})  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()  # noqa: S310 - loopback
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(os.urandom(n))
            left -= n


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=320)
    ap.add_argument("--file", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.update(CREDS)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    load = os.getloadavg()
    proc = start_moto(port)
    work = Path(tempfile.mkdtemp(prefix="modelyard-bench-registry-"))
    try:
        src = args.file
        if src is None:
            src = work / "weights.gguf"
            make_file(src, args.size_mb * 1_000_000)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        store = ArtifactStore(work / "origin")
        m = store.import_file("model", src, engine="llamacpp", format="gguf", source=f"file:{src}", version="v1")
        settings = RemoteSettings(url=f"s3://{BUCKET}/team", endpoint_url=endpoint)
        push_s = timed(lambda: RemoteStore(store, settings).push("model"))
        key = RemoteStore(store, settings).blob_key(m.hex, m.files[0])
        size = m.size

        url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)

        def raw_get() -> None:
            with urllib.request.urlopen(url) as r, open(work / "raw.bin", "wb") as f:  # noqa: S310
                shutil.copyfileobj(r, f, 1 << 20)

        def raw_get_fsync() -> None:
            with urllib.request.urlopen(url) as r, open(work / "raw.bin", "wb") as f:  # noqa: S310
                shutil.copyfileobj(r, f, 1 << 20)
                f.flush()
                os.fsync(f.fileno())

        def boto_get() -> None:
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"]
            with open(work / "get.bin", "wb") as f:
                for chunk in body.iter_chunks(1 << 20):
                    f.write(chunk)

        def boto_download() -> None:
            s3.download_file(BUCKET, key, str(work / "dl.bin"))

        def pull() -> None:
            dest = work / "node"
            shutil.rmtree(dest, ignore_errors=True)
            r = RemoteStore(ArtifactStore(dest), settings).pull("model")
            assert r.manifest.digest == m.digest and r.transferred == size, r

        fns = {"raw GET": raw_get, "raw GET + fsync": raw_get_fsync, "boto3 get": boto_get,
               "boto3 download": boto_download, "pull": pull}
        runs: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():  # warm-up: moto's first read of the object, page cache
            fn()
        for _ in range(args.reps):
            for name, fn in fns.items():
                runs[name].append(timed(fn))
        med = {k: statistics.median(v) for k, v in runs.items()}
        mbps = {k: size / v / 1e6 for k, v in med.items()}
        lines = [
            f"registry_pull {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
            f"load at start {load[0]:.2f}",
            f"server: moto {__import__('moto').__version__} (server mode, own process) on 127.0.0.1; boto3 {boto3.__version__}",
            f"object: {size / 1e6:.1f} MB ({'--file ' + str(args.file) if args.file else 'random bytes'}), "
            f"push {size / push_s / 1e6:.0f} MB/s ({push_s:.2f} s, multipart)",
            f"medians of {args.reps} (alternating, after one warm-up each):",
        ]
        for k in runs:
            all_s = ", ".join(f"{t:.2f}" for t in runs[k])
            lines.append(f"  {k:<16} {mbps[k]:7.0f} MB/s   {med[k]:.2f} s   (runs: {all_s} s)")
        lines.append(f"ratio pull / raw GET: {mbps['pull'] / mbps['raw GET']:.2f}; "
                     f"pull / raw GET + fsync: {mbps['pull'] / mbps['raw GET + fsync']:.2f}; "
                     f"pull / boto3 get: {mbps['pull'] / mbps['boto3 get']:.2f}; "
                     f"pull / boto3 download: {mbps['pull'] / mbps['boto3 download']:.2f}")  # fmt: skip
        report = "\n".join(lines) + "\n"
        print(report, end="")
        out = args.out or Path(__file__).parent / "results" / f"registry_pull-{datetime.date.today().isoformat()}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"wrote {out}")
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
