"""Running the app under uvicorn (uvloop + httptools), with modelyard's shutdown semantics.

SIGTERM/SIGINT: mark the app draining (readiness 503, new /v1 requests 503 + Retry-After) and keep
the port open while requests are in flight (and for ``server.shutdown_delay_s`` at least), so new
clients get a clean 503 rather than a refused connection; then stop accepting, let what is left
finish within ``server.graceful_timeout_s``, flush the spend rows, stop the engines, close the upstream pool, exit 0. (uvicorn by
default re-raises the captured signal after a graceful stop, which would make the exit status 143;
a clean drain is a success, so modelyard exits 0.)
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Mapping

import uvicorn

from modelyard.api import create_app
from modelyard.api.app import ModelyardApp
from modelyard.config.schema import Settings


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: ModelyardApp, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._app = app
        self._on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            # Everything start-up made (imported modules, models, config) lives as long as the
            # process: move it out of the collector's reach, so that a full collection scans only
            # what requests allocate (measured: ~420k objects after the model imports, 160 ms a
            # full pass; see docs/design/reliability.md, "Tail latency").
            gc.collect()
            gc.freeze()
            self._on_ready()

    def handle_exit(self, sig: int, frame: object) -> None:  # type: ignore[override]
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain with the port still open: while requests are in flight (and for
        ``server.shutdown_delay_s`` at least) new ones get a clean 503 + Retry-After instead of a
        refused connection; then uvicorn's own shutdown with what is left of the grace period."""
        if self._app.services is not None:
            self._app.services.draining = True  # readiness 503; new /v1 requests 503 + Retry-After
        loop = asyncio.get_running_loop()
        settings = self._app.settings.server
        deadline = loop.time() + settings.shutdown_delay_s + settings.graceful_timeout_s
        if settings.shutdown_delay_s > 0:
            await asyncio.sleep(settings.shutdown_delay_s)
        while self.server_state.tasks and loop.time() < deadline and not self.force_exit:
            await asyncio.sleep(0.05)
        self.config.timeout_graceful_shutdown = max(0.1, deadline - loop.time())  # type: ignore[assignment]
        await super().shutdown(sockets)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover - uvloop is a dependency on every supported platform
        return "asyncio"
    return "uvloop"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost: may resolve to anything


def exposure_problem(
    host: str, settings: Settings, environ: Mapping[str, str], *, allow_unauthenticated: bool = False
) -> str | None:
    """Why serving on ``host`` would be unsafe (no key configured and not loopback; a master key
    from the environment too short to be one), or None."""
    env_key = environ.get("MODELYARD_MASTER_KEY")
    if env_key is not None and not settings.auth.master_key and len(env_key.strip()) < 8:
        return "MODELYARD_MASTER_KEY is set but shorter than 8 characters; use a long random key (or unset it)"
    if is_loopback(host) or settings.auth.master_key or env_key:
        return None
    if allow_unauthenticated or settings.auth.allow_unauthenticated:
        return None
    return (
        f"refusing to serve on {host} without API keys: anyone who can reach it could use every model. "
        "Set auth.master_key (or $MODELYARD_MASTER_KEY), bind to 127.0.0.1, or pass --allow-unauthenticated "
        "(auth.allow_unauthenticated: true) if something in front of modelyard authenticates."
    )


def serve(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "warning",
    allow_unauthenticated: bool = False,
) -> None:
    """Serve until SIGTERM/SIGINT. Prints ``modelyard listening on URL`` once ready."""
    host = host or settings.server.host
    port = settings.server.port if port is None else port
    problem = exposure_problem(host, settings, os.environ, allow_unauthenticated=allow_unauthenticated)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        sock = bind(host, port)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    actual = sock.getsockname()[1]
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        loop=_loop_name(),
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.server.graceful_timeout_s + 0.999),
        timeout_keep_alive=30,
        server_header=False,
        proxy_headers=False,  # modelyard never reads the client address
        date_header=False,
    )
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        print(f"modelyard listening on http://{shown}:{actual} ({len(settings.models)} models)", flush=True)

    _Server(config, app, ready).run(sockets=[sock])
    sys.stdout.flush()
