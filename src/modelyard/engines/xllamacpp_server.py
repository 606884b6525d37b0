"""Serve one GGUF through xllamacpp's own HTTP server (llama.cpp's server) on a loopback TCP port.

    python -m modelyard.engines.xllamacpp_server --model PATH --port PORT [--host 127.0.0.1]
        [--alias NAME] [--n-ctx 2048] [--n-parallel 2] [--threads N] [--n-gpu-layers 0] [--api-key KEY]

The managed-process twin of ``runtime/llamacpp.py``: there the listener is bound to a socket path
that is deleted at once (in-process calls only); here it is the whole point — llama.cpp's server
answers ``/health``, ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings`` (OpenAI-compatible, streaming included) on ``host:port``.

Runs until SIGTERM, SIGINT or SIGHUP, then exits 0 at once (``os._exit``): the process owns nothing
that needs flushing, and an ``xllamacpp.Server`` that never served a request can hang in its
destructor. The signals are blocked before the server starts, so every llama.cpp thread inherits
the mask and the main thread collects them with ``sigwait`` (no Python handler racing C++ threads).
Exit codes: 0 stopped by a signal, 1 load failure, 2 bad arguments, 98 the port is in use.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time

_STOP = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="modelyard.engines.xllamacpp_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="path of the GGUF file")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--alias", default=None, help="model name reported in responses (default: the file's stem)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context shared by the slots")
    ap.add_argument("--n-parallel", type=int, default=2, help="parallel slots (continuous batching)")
    ap.add_argument("--threads", type=int, default=None, help="default: cores - 1 (at least 1)")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    ap.add_argument("--api-key", default=os.environ.get("MODELYARD_ENGINE_API_KEY") or None,
                    help="require this bearer key (default: $MODELYARD_ENGINE_API_KEY, else none)")
    ap.add_argument("--verbosity", type=int, default=0)
    return ap.parse_args(argv)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    if not os.path.isfile(a.model):
        print(f"xllamacpp_server: no GGUF file at {a.model}", file=sys.stderr, flush=True)
        return 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = a.model
    threads = a.threads or max(1, _cores() - 1)
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = threads
    alias = a.alias or os.path.splitext(os.path.basename(a.model))[0]
    settings = {
        "n_ctx": a.n_ctx, "n_parallel": a.n_parallel, "n_gpu_layers": a.n_gpu_layers,
        "fit_params": False, "warmup": False,  # the supervisor sends its own warm-up request
        "offline": True, "ui": False, "endpoint_slots": False, "endpoint_metrics": False,
        "verbosity": a.verbosity, "hostnames": [a.host], "port": a.port, "model_alias": {alias},
        "reasoning_format": xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE,
    }
    if a.api_key:
        settings["api_keys"] = [a.api_key]
    for key, value in settings.items():
        setattr(p, key, value)
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP)  # before any llama.cpp thread exists
    t0 = time.perf_counter()
    try:
        server = xllamacpp.Server(p)
    except Exception as exc:
        if _port_in_use(a.host, a.port):
            print(f"xllamacpp_server: {a.host}:{a.port}: address already in use ({exc})", file=sys.stderr, flush=True)
            return 98
        print(f"xllamacpp_server: failed to load {a.model}: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"xllamacpp_server: {alias} listening on {server.listening_address} "
          f"(loaded in {time.perf_counter() - t0:.2f}s, {threads} thread(s), n_ctx {a.n_ctx}, "
          f"{a.n_parallel} slot(s))", flush=True)
    sig = signal.sigwait(_STOP)
    print(f"xllamacpp_server: {signal.Signals(sig).name}: exiting", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
