"""``modelyard models``: import, list, verify and remove artifacts in the local store; push them to and
pull them from the team's registry (an S3-compatible bucket, ``registry/remote.py``).

Every failure prints ``error: ...`` on stderr and exits 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from modelyard.errors import ArtifactError
from modelyard.registry import default_store_dir
from modelyard.registry.artifacts import ENGINES, ArtifactStore, Manifest


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _store_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--store",
        "store_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="artifact store directory (default: $MODELYARD_HOME/artifacts, MODELYARD_HOME=~/.modelyard)",
    )
    @functools.wraps(fn)
    def wrapper(store_dir: str | None, **kw: Any) -> Any:
        try:
            store = ArtifactStore(store_dir or default_store_dir())
            return fn(store, **kw)
        except ArtifactError as exc:
            _fail(exc.message)
        except OSError as exc:
            _fail(str(exc))

    return wrapper


@click.group("models", context_settings={"help_option_names": ["-h", "--help"]})
def models() -> None:
    """Manage the local artifact store (models are always loaded from it, never from a hub)."""


@models.command("import")
@click.argument("name", required=False)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--defaults", is_flag=True, help="import the default set from the installed model packages (NAME...: only those)")
@click.option("--engine", type=click.Choice(ENGINES), help="engine that loads it")
@click.option("--format", "fmt", help="artifact format, e.g. gguf, sentence-transformers, joblib")
@click.option("--quantisation", default=None, help="e.g. Q4_K_M")
@click.option("--sha256", "sha256", default=None, help="expected sha256 of the file (parts: of their concatenation)")
@click.option("--version", "version", default=None, help="version label (default: the digest's first 12 hex digits)")
@click.option("--source", default=None, help="where it came from (default: the absolute path(s))")
@click.option("--force", is_flag=True, help="with --defaults: re-import (rehash) models already present")
@_store_option
def import_(
    store: ArtifactStore,
    name: str | None,
    paths: tuple[Path, ...],
    defaults: bool,
    engine: str | None,
    fmt: str | None,
    quantisation: str | None,
    sha256: str | None,
    version: str | None,
    source: str | None,
    force: bool,
) -> None:
    """Import NAME from PATH [PATH...] (several paths are parts, concatenated in order; one directory
    is a directory model), or the default set with --defaults."""
    if defaults:
        from modelyard.registry.defaults import import_defaults

        names = [n for n in (name, *map(str, paths)) if n] or None
        t0 = time.perf_counter()
        ms = import_defaults(store, names, progress=lambda msg: click.echo(msg, err=True), force=force)
        click.echo(f"{len(ms)} default models ready in {store.root} ({time.perf_counter() - t0:.1f} s)")
        return
    if not name or not paths:
        _fail("give NAME PATH [PATH...] --engine E --format F, or --defaults")
    if engine is None or fmt is None:
        _fail("--engine and --format are required when importing a path")
    src = source or "+".join(f"file:{p.absolute()}" for p in paths)
    t0 = time.perf_counter()
    if len(paths) == 1 and paths[0].is_dir():
        if sha256:
            _fail("--sha256 applies to files, not to a directory")
        m = store.import_dir(name, paths[0], engine=engine, format=fmt, source=src, version=version, quantisation=quantisation)
    else:
        if any(p.is_dir() for p in paths):
            _fail("a directory model is imported from exactly one directory")
        m = store.import_file(
            name, list(paths), engine=engine, format=fmt, quantisation=quantisation,
            source=src, version=version, expected_sha256=sha256,
        )  # fmt: skip
    click.echo(f"imported {m.ref} {m.digest} ({_size(m.size)}) in {time.perf_counter() - t0:.2f} s")


@models.command("list")
@_store_option
def list_(store: ArtifactStore) -> None:
    """List every imported model version."""
    rows = [_row(m) for m in store.list()]
    headers = ("name", "version", "engine", "format", "quant", "size", "digest", "source")
    if not rows:
        click.echo(f"no models in {store.root} (import them: modelyard models import --defaults)")
        return
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        for r in (headers, *rows):
            click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return
    table = Table(title=f"artifacts in {store.root}", title_justify="left")
    for h in headers:  # only the source may wrap
        table.add_column(h, no_wrap=h != "source", overflow="fold", justify="right" if h == "size" else "left")
    for r in rows:
        table.add_row(*r)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@models.command("verify")
@click.argument("name", required=False)
@_store_option
def verify(store: ArtifactStore, name: str | None) -> None:
    """Rehash every artifact (or every version of NAME); exit 2 if any is missing or corrupt."""
    ms = [m for m in store.list() if name is None or m.name == name]
    if name is not None and not ms:
        _fail(f"model {name!r} is not in the artifact store {store.root}")
    bad = 0
    for m in ms:
        t0 = time.perf_counter()
        try:
            store.verify(m)
        except ArtifactError as exc:
            bad += 1
            click.echo(f"error: {exc.message}", err=True)
            continue
        click.echo(f"ok  {m.ref}  {m.digest[:19]}  {_size(m.size)}  {time.perf_counter() - t0:.2f} s")
    if bad:
        sys.exit(2)
    click.echo(f"{len(ms)} verified")


@models.command("remove")
@click.argument("name")
@click.argument("version")
@_store_option
def remove(store: ArtifactStore, name: str, version: str) -> None:
    """Remove NAME VERSION (its blob goes too once nothing else refers to it)."""
    store.remove(name, version)
    click.echo(f"removed {name}@{version}")


def _remote_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option("--remote", "remote_url", envvar="MODELYARD_REGISTRY_URL", default=None,
                  help="registry bucket s3://bucket/prefix (default: $MODELYARD_REGISTRY_URL, then the config's registry.url)")
    @click.option("--endpoint-url", envvar="AWS_ENDPOINT_URL", default=None,
                  help="S3-compatible endpoint, e.g. http://minio:9000 (default: $AWS_ENDPOINT_URL, the config, AWS)")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="config YAML whose `registry` section to use (credentials: os.environ/NAME or the AWS_* variables)")
    @functools.wraps(fn)
    def wrapper(store: ArtifactStore, remote_url: str | None, endpoint_url: str | None, config_path: str | None,
                **kw: Any) -> Any:  # fmt: skip
        from modelyard.clitools import settings_or_defaults
        from modelyard.registry.remote import remote_for

        reg = settings_or_defaults(config_path).registry
        update = {k: v for k, v in (("url", remote_url), ("endpoint_url", endpoint_url)) if v}
        if "url" in update and not str(update["url"]).startswith("s3://"):
            _fail(f"--remote {update['url']!r}: expected s3://bucket[/prefix]")
        remote = remote_for(store, reg.model_copy(update=update))
        if remote is None:
            _fail("no registry configured: give --remote s3://bucket/prefix, or set MODELYARD_REGISTRY_URL or registry.url")
        return fn(remote, **kw)

    return wrapper


@contextlib.contextmanager
def _progress(verb: str, what: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (bytes, rate, time left), shown from the first byte on (an error
    before any transfer stays one line); the callback takes (done, total)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(stderr=True))  # fmt: skip
    task = bar.add_task(f"{verb} {what}", total=None)
    started = False

    def update(done: int, total: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=total)

    try:
        yield update
    finally:
        if started:
            bar.stop()


@models.command("push")
@click.argument("ref")
@_store_option
@_remote_options
def push(remote: Any, ref: str) -> None:
    """Upload NAME[@VERSION|@sha256:HEX] (default: its latest version) to the registry: blobs first,
    the manifest last; files already there are skipped."""
    from modelyard.registry.remote import parse_ref

    name, version, digest = parse_ref(ref)
    t0 = time.perf_counter()
    with _progress("push", ref) as progress:
        r = remote.push(name, version, digest=digest, progress=progress)
    dt = time.perf_counter() - t0
    click.echo(f"pushed {r.manifest.ref} {r.manifest.digest} to {remote.url}: {_size(r.transferred)} uploaded, "
               f"{_size(r.skipped)} already there ({dt:.2f} s)")  # fmt: skip


@models.command("pull")
@click.argument("ref")
@_store_option
@_remote_options
def pull(remote: Any, ref: str) -> None:
    """Fetch NAME[@VERSION|@sha256:HEX] (default: the registry's latest version) into the local store,
    resuming an interrupted pull; the digest is verified before anything is stored."""
    from modelyard.registry.remote import parse_ref

    name, version, digest = parse_ref(ref)
    t0 = time.perf_counter()
    with _progress("pull", ref) as progress:
        r = remote.pull(name, version, digest=digest, progress=progress)
    dt = time.perf_counter() - t0
    if r.already_local:
        click.echo(f"{r.manifest.ref} {r.manifest.digest} is already in {remote.store.root}")
        return
    resumed = f", resumed after {_size(sum(r.resumed_from.values()))}" if r.resumed_from else ""
    rate = r.transferred / dt / 1e6 if dt > 0 else 0.0
    click.echo(f"pulled {r.manifest.ref} {r.manifest.digest} ({_size(r.manifest.size)}) from {remote.url}: "
               f"{_size(r.transferred)} in {dt:.2f} s ({rate:.0f} MB/s){resumed}, verified")  # fmt: skip


def _row(m: Manifest) -> tuple[str, ...]:
    parts = m.source.split("+")
    source = parts[0] + (f" (+{len(parts) - 1} parts)" if len(parts) > 1 else "")
    return (m.name, m.version, m.engine, m.format, m.quantisation or "-", _size(m.size), m.digest[:19], source)


def _size(size: int) -> str:
    n = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    models()
