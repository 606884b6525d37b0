"""``ProcessSpec``: how to run one model as a managed engine process, and presets for common engines.

A spec is pure data (frozen): the command line with placeholders, how to tell that the process is
ready, how to park and wake it, and the limits the supervisor applies (grace period, restarts, log
size). ``modelyard.engines.supervisor.ProcessEngine`` turns one into a running process.

Placeholders in ``command`` (and in string values of ``warmup_body``): ``{port}``, ``{host}``,
``{model_path}``, ``{gpu}``, ``{name}``, and from the load's ``LoadOptions`` ``{n_ctx}`` and
``{n_parallel}``. They are replaced literally (``str.replace``, not
``str.format``), so any other braces — a JSON argument such as ``--override '{"a": 1}'`` — pass
through untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from modelyard.runtime.base import LoadOptions

ShareMode = Literal["exclusive", "mps", "time-slice"]
PresetKind = Literal["vllm", "llamacpp-server", "tgi", "xllamacpp", "openai"]

LOOPBACK = "127.0.0.1"
MIB = 1 << 20
_PLACEHOLDERS = ("port", "host", "model_path", "gpu", "name", "n_ctx", "n_parallel")
_DEFAULT_WARMUP: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0.0}


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    command: list[str]  # argv with placeholders; command[0] is looked up on PATH
    health_path: str = "/health"  # GET; ready when it answers 200
    health_timeout_s: float = 120.0  # spawn → healthy, at most
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    declared_memory_bytes: int = 0  # what the engine uses on its device; 0: measure the tree's RSS after ready
    sleep_path: str | None = None  # POST that parks the engine (vLLM "/sleep?level=1": weights to CPU RAM)
    wake_path: str | None = None  # POST that brings it back (vLLM "/wake_up")
    model_path: str = ""  # used when load() gets no artifact path
    gpu: str | None = None  # GPU index or MIG UUID → CUDA_VISIBLE_DEVICES; None: inherit the environment's
    share: ShareMode = "time-slice"  # how the device is shared (see GpuPlacer and docs/design/engines.md)
    stop_grace_s: float = 10.0  # SIGTERM → SIGKILL of the process group
    max_restarts: int = 5  # failures within restart_window_s before the model stays down
    restart_backoff_s: float = 1.0  # doubles with each failure, capped at restart_backoff_cap_s
    restart_backoff_cap_s: float = 60.0
    restart_window_s: float = 600.0  # failures older than this are forgotten
    log_dir: str = ""  # "": <tmp>/modelyard-engines; the log is <log_dir>/<name>.log (+ .1 .. .N)
    log_max_bytes: int = 10 * MIB
    log_backups: int = 3
    warmup_path: str = "/v1/chat/completions"
    warmup_body: dict[str, Any] | None = field(default_factory=lambda: dict(_DEFAULT_WARMUP))  # None: no warm-up
    warmup_timeout_s: float = 120.0
    health_interval_s: float = 5.0  # probe a ready engine this often; 0: only watch for exits
    unhealthy_after: int = 3  # consecutive failed probes before the engine is reported down
    capabilities: tuple[str, ...] = ("chat", "completion")
    api_prefix: str = "/v1"  # base_url = http://127.0.0.1:<port><api_prefix>
    port_attempts: int = 3  # spawns with a fresh port when the port was taken under us

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ProcessSpec.name must not be empty")
        if not self.command or not all(isinstance(a, str) for a in self.command):
            raise ValueError(f"engine {self.name!r}: command must be a non-empty list of strings")
        if self.share not in ("exclusive", "mps", "time-slice"):
            raise ValueError(f"engine {self.name!r}: share must be exclusive, mps or time-slice, not {self.share!r}")
        for attr in ("health_timeout_s", "stop_grace_s", "restart_backoff_s", "warmup_timeout_s"):
            if getattr(self, attr) < 0:
                raise ValueError(f"engine {self.name!r}: {attr} must be >= 0")
        if self.max_restarts < 1 or self.port_attempts < 1 or self.log_backups < 0 or self.log_max_bytes < 1:
            raise ValueError(f"engine {self.name!r}: max_restarts and port_attempts must be >= 1, "
                             "log_backups >= 0, log_max_bytes >= 1")
        if (self.sleep_path is None) != (self.wake_path is None):
            raise ValueError(f"engine {self.name!r}: sleep_path and wake_path go together")

    def values(self, *, port: int, model_path: str, opts: LoadOptions | None = None) -> dict[str, str]:
        opts = opts or LoadOptions()
        return {"port": str(port), "host": LOOPBACK, "model_path": model_path or self.model_path,
                "gpu": self.gpu or "", "name": self.name, "n_ctx": str(opts.n_ctx), "n_parallel": str(opts.n_parallel)}

    def render(self, *, port: int, model_path: str = "", opts: LoadOptions | None = None) -> list[str]:
        """The argv to spawn, placeholders filled in."""
        vals = self.values(port=port, model_path=model_path, opts=opts)
        return [fill(a, vals) for a in self.command]

    def render_warmup(self, *, port: int, model_path: str = "", opts: LoadOptions | None = None) -> dict[str, Any] | None:
        if self.warmup_body is None:
            return None
        return _fill_tree(self.warmup_body, self.values(port=port, model_path=model_path, opts=opts))


def fill(text: str, vals: Mapping[str, str]) -> str:
    for key in _PLACEHOLDERS:
        token = "{" + key + "}"
        if token in text:
            text = text.replace(token, vals[key])
    return text


def _fill_tree(obj: Any, vals: Mapping[str, str]) -> Any:
    if isinstance(obj, str):
        return fill(obj, vals)
    if isinstance(obj, dict):
        return {k: _fill_tree(v, vals) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill_tree(v, vals) for v in obj]
    return obj


def preset(kind: PresetKind, **kw: Any) -> ProcessSpec:
    """A spec with the usual command line of ``kind``; ``kw`` sets or overrides any field.

    ``name`` is required (it names the log and the placement). ``extra_args`` (a list) is appended
    to the preset's command. The OpenAI ``model`` field an engine expects: vLLM is started with
    ``--served-model-name {name}``; llama.cpp, TGI and xllamacpp ignore it.
    """
    extra = list(kw.pop("extra_args", []))
    if "name" not in kw:
        raise ValueError("preset() needs name=...")
    if kind == "vllm":
        base: dict[str, Any] = {
            "command": ["vllm", "serve", "{model_path}", "--port", "{port}", "--host", LOOPBACK,
                        "--served-model-name", "{name}", "--enable-sleep-mode"],
            "sleep_path": "/sleep?level=1", "wake_path": "/wake_up", "health_timeout_s": 600.0,
            "warmup_body": {**_DEFAULT_WARMUP, "model": "{name}"},
            "env": {"VLLM_SERVER_DEV_MODE": "1"},  # vLLM registers /sleep and /wake_up only in dev mode
        }
    elif kind == "llamacpp-server":
        base = {"command": ["llama-server", "-m", "{model_path}", "--port", "{port}", "--host", LOOPBACK]}
    elif kind == "tgi":
        base = {"command": ["text-generation-launcher", "--model-id", "{model_path}", "--port", "{port}",
                            "--hostname", LOOPBACK], "health_timeout_s": 600.0}
    elif kind == "xllamacpp":
        base = {"command": [sys.executable, "-m", "modelyard.engines.xllamacpp_server",
                            "--model", "{model_path}", "--port", "{port}", "--alias", "{name}",
                            "--n-ctx", "{n_ctx}", "--n-parallel", "{n_parallel}"]}
    elif kind == "openai":  # any OpenAI-compatible server: the caller gives the command
        if "command" not in kw:
            raise ValueError("preset('openai') needs command=[...] (with {port} somewhere in it)")
        base = {}
    else:
        raise ValueError(f"unknown engine preset {kind!r}: expected vllm, llamacpp-server, tgi, xllamacpp or openai")
    env = {**base.pop("env", {}), **kw.pop("env", {})}
    spec = ProcessSpec(**{**base, **kw, "env": env})
    return replace(spec, command=[*spec.command, *extra]) if extra else spec
