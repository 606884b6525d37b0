"""LiteLLM proxy ``config.yaml`` → native modelyard config.

Teams arrive with a working LiteLLM config; accepting it as-is makes trying modelyard a one-line
change. A key is either mapped to a native setting with the same meaning or reported in exactly
one warning naming its key path: nothing is dropped silently, since an operator who loses a
fallback chain without being told finds out during an outage. Providers that speak the OpenAI HTTP
API become ``kind: openai`` deployments (modelyard forwards their bytes); every other provider
prefix (``anthropic/``, ``bedrock/``, ``vertex_ai/``, ``cohere/``, ...) becomes a ``kind: provider``
deployment, called through the LiteLLM SDK as a library (backends/provider.py), its other
``litellm_params`` passed on as LiteLLM call arguments. Only a model without a provider prefix is
skipped with a warning. Structurally broken input is an error, as in LiteLLM.

Besides the models and the router, three deployment settings carry over: ``general_settings.master_key``
(→ ``auth.master_key``), ``general_settings.database_url`` (→ ``database.url``, rewritten for the
asyncpg driver) and ``router_settings.redis_*`` (→ ``limits.redis_url``). Their values are secrets:
messages about them name the key, never the value.

``translate`` is pure. Given ``environ`` it resolves ``os.environ/NAME`` in the values it uses
(never in ignored keys: an unset variable behind an ignored ``general_settings.alerting`` is not
an error), honours ``environment_variables:`` (the real environment wins over the file) and,
like LiteLLM, falls back to provider variables such as ``OPENAI_API_KEY`` when ``api_key`` is
absent (and to ``REDIS_PORT``/``REDIS_PASSWORD``/``REDIS_HOST`` for the parts of a Redis address
that ``router_settings`` leaves out). Without ``environ``, references stay as they are: a
``database_url`` or ``redis_url`` reference is passed through unconverted, and a Redis address
whose parts are references is not composed (with a warning).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from modelyard.config.litellm_urls import asyncpg_url, is_redis_url, redis_address
from modelyard.config.loader import ENV_PREFIX, config_error, interpolate, join_path
from modelyard.config.schema import PROVIDER_RESERVED_PARAMS

__all__ = ["OPENAI_COMPATIBLE", "Provider", "Translation", "split_provider", "translate", "translate_full"]

IGNORED = "not supported by modelyard yet; ignored"


@dataclass(frozen=True)
class Provider:
    """How LiteLLM finds an OpenAI-compatible provider's endpoint and key when not given."""

    default_base: str | None  # None: api_base is required
    base_env: tuple[str, ...] = ()
    key_env: tuple[str, ...] = ()


_OPENAI = Provider("https://api.openai.com/v1", ("OPENAI_BASE_URL", "OPENAI_API_BASE"), ("OPENAI_API_KEY",))

# LiteLLM provider prefixes whose upstream serves the OpenAI HTTP API as-is (same paths, same model
# name): served as kind openai. Every other prefix — azure (deployment URLs, api-version),
# fireworks_ai (LiteLLM rewrites model names), ollama (native API), mistral/perplexity (parameter
# differences) and the non-OpenAI protocols (anthropic, bedrock, vertex_ai, gemini, cohere, ...) —
# is served as kind provider, through LiteLLM itself.
OPENAI_COMPATIBLE: Mapping[str, Provider] = MappingProxyType(
    {
        "openai": _OPENAI,
        "text-completion-openai": _OPENAI,
        "custom_openai": Provider(None),
        "hosted_vllm": Provider(None, ("HOSTED_VLLM_API_BASE",), ("HOSTED_VLLM_API_KEY",)),
        "litellm_proxy": Provider(None, ("LITELLM_PROXY_API_BASE",), ("LITELLM_PROXY_API_KEY",)),
        "lm_studio": Provider(None, ("LM_STUDIO_API_BASE",), ("LM_STUDIO_API_KEY",)),
        "llamafile": Provider("http://127.0.0.1:8080/v1", (), ("LLAMAFILE_API_KEY",)),
        "openrouter": Provider("https://openrouter.ai/api/v1", (), ("OPENROUTER_API_KEY", "OR_API_KEY")),
        "groq": Provider("https://api.groq.com/openai/v1", (), ("GROQ_API_KEY",)),
        "together_ai": Provider("https://api.together.xyz/v1", (), ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY")),
        "deepinfra": Provider("https://api.deepinfra.com/v1/openai", (), ("DEEPINFRA_API_KEY",)),
        "deepseek": Provider("https://api.deepseek.com/v1", (), ("DEEPSEEK_API_KEY",)),
        "xai": Provider("https://api.x.ai/v1", (), ("XAI_API_KEY",)),
    }
)

# Unprefixed names LiteLLM itself resolves to the openai provider.
_OPENAI_NAME = re.compile(
    r"^(gpt-|chatgpt-|o[1-9](-|$)|text-embedding-|davinci|babbage|omni-moderation|dall-e|tts-|whisper-)"
)

_STRATEGIES: Mapping[str, str] = MappingProxyType(
    {"simple-shuffle": "weighted", "least-busy": "least_busy", "latency-based-routing": "lowest_latency"}
)
_WEIGHTED_INSTEAD = frozenset({"usage-based-routing", "usage-based-routing-v2", "cost-based-routing"})
_UNSUPPORTED_FALLBACKS = frozenset({"context_window_fallbacks", "content_policy_fallbacks", "default_fallbacks"})

# LiteLLM key → path under native ``router``, per section.
_RETRIES, _TIMEOUT = ("retry", "num_retries"), ("timeout_s",)
_FAILS, _COOLDOWN = ("breaker", "allowed_fails"), ("breaker", "cooldown_s")
_BACKOFF = ("retry", "backoff_base_s")
_LS = {"num_retries": _RETRIES, "request_timeout": _TIMEOUT, "allowed_fails": _FAILS, "cooldown_time": _COOLDOWN}
_RS = {"num_retries": _RETRIES, "timeout": _TIMEOUT, "allowed_fails": _FAILS, "cooldown_time": _COOLDOWN}
_SCALARS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"litellm_settings": MappingProxyType(_LS), "router_settings": MappingProxyType({**_RS, "retry_after": _BACKOFF})}
)
_HANDLED: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "litellm_settings": frozenset({"fallbacks", *_LS}),
        "router_settings": frozenset(
            {"fallbacks", "routing_strategy", "model_group_alias", *_RS, "retry_after", "redis_url", "redis_host",
             "redis_port", "redis_password"}
        ),
    }
)
# litellm_params key → native deployment field.
_DEPLOYMENT_FIELDS: Mapping[str, str] = MappingProxyType(
    {"rpm": "rpm", "tpm": "tpm", "weight": "weight", "timeout": "timeout_s", "max_parallel_requests": "max_concurrency"}
)
_COSTS: Mapping[str, str] = MappingProxyType(
    {"input_cost_per_token": "input_per_1k", "output_cost_per_token": "output_per_1k"}
)
_PARAMS_HANDLED = frozenset(
    {"model", "api_base", "base_url", "api_key", "custom_llm_provider", *_DEPLOYMENT_FIELDS, *_COSTS}
)
_DEFAULT_BACKOFF_MAX_S = 2.0  # schema.RetryConfig.backoff_max_s
# general_settings key → native path (the other general_settings keys are warned about).
_GENERAL: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"master_key": ("auth", "master_key"), "database_url": ("database", "url")}
)
_REDIS_PARTS = ("redis_host", "redis_port", "redis_password")  # router_settings keys; env REDIS_HOST, ...


@dataclass(frozen=True)
class Translation:
    """The native dict, the warnings, and where each native path came from (for error messages)."""

    native: dict[str, Any]
    warnings: list[str]
    origins: dict[str, str]  # native path ("models[0].deployments[1].rpm") → LiteLLM key path


@dataclass
class _Deployment:
    entry: str  # "model_list[3]"
    fields: dict[str, Any]
    origins: dict[str, str]  # native field → LiteLLM key path


@dataclass
class _Model:
    name: str
    entry: str  # the first entry that named it
    deployments: list[_Deployment] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    price: dict[str, float] = field(default_factory=dict)
    price_origins: dict[str, str] = field(default_factory=dict)


def translate(
    data: dict[str, Any], source: str, *, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """Translate a parsed LiteLLM config into ``(native dict, warnings)``; raise ConfigError if broken."""
    result = translate_full(data, source, environ=environ)
    return result.native, result.warnings


def translate_full(data: Mapping[str, Any], source: str, *, environ: Mapping[str, str] | None = None) -> Translation:
    """Like ``translate`` but also returns the origin of each native path (used by the loader)."""
    if not isinstance(data, Mapping):
        raise config_error(source, ["the top level must be a mapping of settings"])
    return _Translator(source, environ).run(data)


def split_provider(model: str, custom_provider: str | None = None) -> tuple[str | None, str]:
    """``"hosted_vllm/meta-llama/X"`` → ``("hosted_vllm", "meta-llama/X")``, as LiteLLM reads it."""
    if custom_provider:
        prefix = f"{custom_provider}/"
        return custom_provider, model[len(prefix) :] if model.startswith(prefix) else model
    if "/" in model:
        provider, _, rest = model.partition("/")
        return provider, rest
    return ("openai", model) if _OPENAI_NAME.match(model) else (None, model)


class _Translator:
    """One translation's working state (kept per call: the module holds no mutable state)."""

    def __init__(self, source: str, environ: Mapping[str, str] | None) -> None:
        self.source = source
        self.env = environ
        self.warnings: list[str] = []
        self.errors: list[str] = []
        self.models: dict[str, _Model] = {}
        self.aliases: dict[str, str] = {}  # alias → model name
        self.dropped: set[str] = set()  # model names whose every deployment was skipped
        self.router: dict[tuple[str, ...], tuple[Any, str]] = {}  # path under router → (value, origin)
        self.top: dict[tuple[str, ...], tuple[Any, str]] = {}  # other native paths → (value, origin)

    def warn(self, path: str, text: str) -> None:
        self.warnings.append(f"{path}: {text}")

    def value(self, value: Any, path: str) -> Any:
        """Resolve ``os.environ/NAME`` in a value that is actually used (only when environ is given)."""
        return value if self.env is None else interpolate(value, path, self.env, self.errors)

    @staticmethod
    def reference(value: Any) -> bool:
        """Still ``os.environ/NAME``: no environment was given (pure), or the variable is unset (reported)."""
        return isinstance(value, str) and value.startswith(ENV_PREFIX)

    def mapping(self, value: Any, path: str, expected: str = "a mapping") -> Mapping[Any, Any] | None:
        if value is not None and not isinstance(value, Mapping):
            self.errors.append(f"{path}: expected {expected}")
        return value if isinstance(value, Mapping) else None

    def run(self, data: Mapping[str, Any]) -> Translation:
        self.environment(self.mapping(data.get("environment_variables"), "environment_variables"))
        self.model_list(data.get("model_list"))
        sections = {name: self.mapping(data.get(name), name) or {} for name in _SCALARS}
        self.settings(sections)
        self.general(self.mapping(data.get("general_settings"), "general_settings") or {})
        for key, value in data.items():
            if key not in ("model_list", "environment_variables", "general_settings", *_SCALARS) and value is not None:
                self.warn(str(key), IGNORED)
        if self.errors:
            raise config_error(self.source, self.errors)
        return self.finish()

    def environment(self, section: Mapping[Any, Any] | None) -> None:
        """Honour ``environment_variables:`` as defaults for interpolation; the real env wins."""
        if not section or self.env is None:
            return
        file_env: dict[str, str] = {}
        for name, value in section.items():
            if isinstance(value, (Mapping, list)):
                self.errors.append(f"{join_path('environment_variables', name)}: expected a plain value")
            elif value is not None:
                file_env[str(name)] = str(value).lower() if isinstance(value, bool) else str(value)
        self.env = {**file_env, **self.env}

    def from_env(self, names: tuple[str, ...]) -> str | None:
        """LiteLLM's implicit provider variables (only when an environment was given)."""
        return next((self.env[n] for n in names if self.env is not None and self.env.get(n)), None)

    # --- model_list ---------------------------------------------------------------------------

    def model_list(self, entries: Any) -> None:
        if entries is not None and not isinstance(entries, list):
            self.errors.append("model_list: expected a list of {model_name, litellm_params} entries")
            return
        for k, entry in enumerate(entries or []):
            self.entry(f"model_list[{k}]", entry)
        for name, model in list(self.models.items()):
            if not model.deployments:
                self.warn(f"{model.entry}.model_name", f"model {name!r} has no supported deployment; model dropped")
                self.dropped.add(name)
                del self.models[name]

    def entry(self, path: str, entry: Any) -> None:
        if not isinstance(entry, Mapping):
            self.errors.append(f"{path}: expected a mapping with model_name and litellm_params")
            return
        name = self.value(entry.get("model_name"), f"{path}.model_name")
        params, ppath = entry.get("litellm_params"), f"{path}.litellm_params"
        if not isinstance(name, str) or not name.strip():
            self.errors.append(f"{path}.model_name: required (a non-empty string)")
            return
        if not isinstance(params, Mapping):
            self.errors.append(f"{ppath}: required (a mapping with at least 'model')")
            return
        if "*" in name:
            self.warn(f"{path}.model_name", f"wildcard model name {name!r} is not supported; entry skipped")
            return
        model = self.models.setdefault(name, _Model(name, path))
        target = self.value(params.get("model"), f"{ppath}.model")
        custom = self.value(params.get("custom_llm_provider"), f"{ppath}.custom_llm_provider")
        if not isinstance(target, str) or not target:
            self.errors.append(f"{ppath}.model: required (e.g. 'openai/<upstream model>')")
            return
        provider, upstream = split_provider(target, custom if isinstance(custom, str) else None)
        if provider is None:
            self.warn(
                path,
                f"model_name {name!r}: a model without a provider prefix ({target!r}) is not one LiteLLM can "
                "call either; deployment skipped (write <provider>/<model>, e.g. openai/<model> with api_base)",
            )
            return
        if not upstream:
            self.errors.append(f"{ppath}.model: no model name after the provider prefix")
            return
        if provider in OPENAI_COMPATIBLE:
            dep = self.deployment(path, params, provider, upstream)
        else:
            dep = self.provider_deployment(path, params, f"{provider}/{upstream}")
        if dep is None:
            return
        price, price_origins = self.costs(
            path, params, self.mapping(entry.get("model_info"), f"{path}.model_info"), dep
        )
        for key in entry:
            if key not in ("model_name", "litellm_params", "model_info"):
                self.warn(join_path(path, key), IGNORED)
        model.deployments.append(dep)
        if price and not model.price:
            model.price, model.price_origins = price, price_origins
        elif price and price != model.price:
            self.warn(
                path,
                f"cost differs from an earlier deployment of {name!r}; modelyard prices per model, keeping the first",
            )

    def deployment(self, path: str, params: Mapping[str, Any], provider: str, upstream: str) -> _Deployment | None:
        """Map one entry's ``litellm_params`` to a native deployment (and warn about the rest)."""
        ppath, spec = f"{path}.litellm_params", OPENAI_COMPATIBLE[provider]
        dep = _Deployment(path, {"kind": "openai", "model": upstream}, {"model": f"{ppath}.model"})
        base_key = next((k for k in ("api_base", "base_url") if params.get(k) is not None), None)
        if base_key == "api_base" and params.get("base_url") is not None:
            self.warn(f"{ppath}.base_url", "api_base is also set; ignored")
        if base_key is None:
            dep.fields["api_base"] = self.from_env(spec.base_env) or spec.default_base
            if dep.fields["api_base"] is None:
                hint = f" (or set {spec.base_env[0]})" if spec.base_env else ""
                self.errors.append(f"{ppath}.api_base: required for provider {provider!r}{hint}")
                return None
        if (key := self.from_env(spec.key_env) if params.get("api_key") is None else None) is not None:
            dep.fields["api_key"] = key
        for lkey, nkey in {
            **({base_key: "api_base"} if base_key else {}),
            "api_key": "api_key",
            **_DEPLOYMENT_FIELDS,
        }.items():
            if params.get(lkey) is not None:
                dep.fields[nkey] = self.value(params[lkey], f"{ppath}.{lkey}")
                dep.origins[nkey] = f"{ppath}.{lkey}"
        for key in params:
            if key == "stream_timeout":
                self.warn(
                    f"{ppath}.{key}", "not supported by modelyard (timeout applies to streamed requests too); ignored"
                )
            elif key not in _PARAMS_HANDLED:
                self.warn(join_path(ppath, key), IGNORED)
        return dep

    def provider_deployment(self, path: str, params: Mapping[str, Any], model: str) -> _Deployment:
        """A provider that is not OpenAI-compatible → ``kind: provider`` (LiteLLM as a library): the
        keys modelyard owns map as for ``openai``; every other ``litellm_params`` key is LiteLLM's own
        call argument (``aws_region_name``, ``vertex_project``, ``api_version``, ``drop_params``, ...)
        and goes to ``params`` unchanged."""
        ppath = f"{path}.litellm_params"
        dep = _Deployment(path, {"kind": "provider", "model": model}, {"model": f"{ppath}.model"})
        base_key = next((k for k in ("api_base", "base_url") if params.get(k) is not None), None)
        if base_key == "api_base" and params.get("base_url") is not None:
            self.warn(f"{ppath}.base_url", "api_base is also set; ignored")
        extra: dict[str, Any] = {}
        for key, raw in params.items():
            kpath = join_path(ppath, key)
            target = {"api_base": "api_base", "base_url": "api_base", "api_key": "api_key", **_DEPLOYMENT_FIELDS}.get(key)
            if raw is None or key in ("model", "custom_llm_provider", *_COSTS) or (target == "api_base" and key != base_key):
                continue
            if target is not None:
                dep.fields[target], dep.origins[target] = self.value(raw, kpath), kpath
            elif key in PROVIDER_RESERVED_PARAMS:
                self.warn(kpath, "modelyard owns retries and timeouts (router.retry, timeout); ignored")
            else:
                extra[key] = self.value(raw, kpath)
                dep.origins[f"params.{key}"] = kpath
        if extra:
            dep.fields["params"] = extra
        return dep

    def costs(
        self, path: str, params: Mapping[str, Any], info: Mapping[Any, Any] | None, dep: _Deployment
    ) -> tuple[dict[str, float], dict[str, str]]:
        """Per-token costs (litellm_params first, then model_info) as native per-1k prices."""
        info, ipath = info or {}, f"{path}.model_info"
        price: dict[str, float] = {}
        origins: dict[str, str] = {}
        for lkey, nkey in _COSTS.items():
            raw, where = params.get(lkey), f"{path}.litellm_params.{lkey}"
            if raw is None:
                raw, where = info.get(lkey), f"{ipath}.{lkey}"
            if raw is not None and (per_1k := self.per_1k(raw, where)) is not None:
                price[nkey], origins[nkey] = per_1k, where
        for key, value in info.items():
            if key == "id" and value is not None:
                dep.fields["name"], dep.origins["name"] = str(self.value(value, f"{ipath}.id")), f"{ipath}.id"
            elif key not in _COSTS:
                self.warn(join_path(ipath, key), IGNORED)
        return price, origins

    def per_1k(self, raw: Any, path: str) -> float | None:
        """Cost per token → per 1,000 tokens, exactly (``2.5e-06`` → ``0.0025``, not ``0.0025000000000000005``)."""
        raw = self.value(raw, path)
        try:
            if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
                raise InvalidOperation
            amount = Decimal(str(raw).strip())
            if not amount.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            self.errors.append(f"{path}: not a number")
            return None
        return float(amount * 1000)

    # --- router_settings / litellm_settings ----------------------------------------------------

    def settings(self, sections: Mapping[str, Mapping[Any, Any]]) -> None:
        ls, rs = sections["litellm_settings"], sections["router_settings"]
        in_router = {t: k for k, t in _SCALARS["router_settings"].items() if rs.get(k) is not None}
        for name, sec in sections.items():
            for key, target in _SCALARS[name].items():
                if sec.get(key) is None:
                    continue
                if sec is ls and target in in_router:
                    self.warn(f"{name}.{key}", f"overridden by router_settings.{in_router[target]}; ignored")
                else:
                    self.router[target] = (self.value(sec[key], f"{name}.{key}"), f"{name}.{key}")
        after, origin = self.router.get(("retry", "backoff_base_s"), (None, ""))
        try:
            minimum = float(after) if after is not None and not isinstance(after, bool) else 0.0
        except (TypeError, ValueError):
            minimum = 0.0  # validation reports it against router_settings.retry_after
        if minimum > _DEFAULT_BACKOFF_MAX_S:
            self.router[("retry", "backoff_max_s")] = (minimum, origin)  # else the cap would undo the minimum wait
        if rs.get("routing_strategy") is not None:
            self.strategy(self.value(rs["routing_strategy"], "router_settings.routing_strategy"))
        self.redis(rs)
        if rs.get("model_group_alias") is not None:
            self.model_group_alias(rs["model_group_alias"], "router_settings.model_group_alias")
        for name, sec in sections.items():
            if sec.get("fallbacks") is not None:
                self.fallbacks(sec["fallbacks"], f"{name}.fallbacks")
            for key in sec:
                if key in _UNSUPPORTED_FALLBACKS:
                    self.warn(f"{name}.{key}", "not supported by modelyard (only plain fallbacks are); ignored")
                elif key not in _HANDLED[name]:
                    self.warn(join_path(name, key), IGNORED)

    def strategy(self, value: Any) -> None:
        path = "router_settings.routing_strategy"
        if isinstance(value, str) and value in _STRATEGIES:
            self.router[("strategy",)] = (_STRATEGIES[value], path)
            return
        if isinstance(value, str) and value in _WEIGHTED_INSTEAD:
            self.warn(path, f"{value!r} is not supported by modelyard; using weighted (simple-shuffle)")
        else:
            self.warn(path, f"unknown routing strategy {value!r}; using weighted (simple-shuffle)")
        self.router[("strategy",)] = ("weighted", path)

    def canonical(self, name: Any) -> str | None:
        """The model a name (or alias) refers to, or None if it is not (or no longer) defined."""
        if not isinstance(name, str):
            return None
        return name if name in self.models else self.aliases.get(name)

    def missing(self, name: Any) -> str:
        """Why ``canonical(name)`` is None, for a warning."""
        if isinstance(name, str) and name in self.dropped:
            return f"model {name!r} was dropped (no supported deployment)"
        return f"unknown model {name!r}"

    def model_group_alias(self, value: Any, path: str) -> None:
        """``{alias: model}`` or ``{alias: {model, hidden}}`` → native ``aliases`` of that model."""
        value = self.mapping(self.value(value, path), path, "a mapping of alias: model")
        for alias, target in (value or {}).items():
            apath = join_path(path, alias)
            if isinstance(target, Mapping):
                if target.get("hidden"):
                    self.warn(f"{apath}.hidden", IGNORED)
                target = target.get("model")
            model = self.canonical(target)
            if not isinstance(alias, str) or not alias:
                self.errors.append(f"{apath}: an alias must be a non-empty string")
            elif alias in self.models or alias in self.aliases:
                self.warn(apath, f"{alias!r} is already a model name or alias; alias ignored")
            elif model is None:
                self.warn(apath, f"{self.missing(target)}; alias ignored")
            else:
                self.aliases[alias] = model
                self.models[model].aliases.append(alias)

    def fallbacks(self, value: Any, path: str) -> None:
        """``[{"a": ["b", "c"]}]`` → ``models[a].fallbacks``; unknown models are warned about and dropped."""
        value = self.value(value, path)
        if not isinstance(value, list):
            self.errors.append(f"{path}: expected a list of {{model: [fallback, ...]}}")
            return
        for i, item in enumerate(value):
            for src, targets in (
                self.mapping(item, f"{path}[{i}]", "a mapping of model: [fallback, ...]") or {}
            ).items():
                spath = join_path(f"{path}[{i}]", src)
                targets = [targets] if isinstance(targets, str) else targets
                model = self.canonical(src)
                if not isinstance(targets, list):
                    self.errors.append(f"{spath}: expected a list of model names")
                elif model is None:
                    self.warn(spath, f"{self.missing(src)}; its fallbacks are dropped")
                else:
                    for j, target in enumerate(targets):
                        resolved = self.canonical(target)
                        if resolved is None:
                            self.warn(f"{spath}[{j}]", f"{self.missing(target)}; fallback dropped")
                        elif resolved == model:
                            self.warn(f"{spath}[{j}]", "a model cannot fall back to itself; fallback dropped")
                        elif resolved not in self.models[model].fallbacks:
                            self.models[model].fallbacks.append(resolved)

    # --- general_settings and Redis ------------------------------------------------------------

    def general(self, section: Mapping[Any, Any]) -> None:
        """``master_key`` → ``auth.master_key``, ``database_url`` → ``database.url``; the rest is warned about."""
        for key, value in section.items():
            path = join_path("general_settings", key)
            if key not in _GENERAL:
                self.warn(path, IGNORED)
            elif value is not None:
                value = self.value(value, path)
                if key == "database_url" and not self.reference(value):
                    value = asyncpg_url(value, path, self.errors, self.warnings)
                if value is not None:
                    self.top[_GENERAL[key]] = (value, path)

    def redis(self, rs: Mapping[Any, Any]) -> None:
        """``redis_url``, or ``redis_host``/``redis_port``/``redis_password`` → ``limits.redis_url``."""
        if rs.get("redis_url") is not None:
            path = "router_settings.redis_url"
            for key in _REDIS_PARTS:
                if rs.get(key) is not None:
                    self.warn(f"router_settings.{key}", "overridden by router_settings.redis_url; ignored")
            url = self.value(rs["redis_url"], path)
            if self.reference(url) or is_redis_url(url):
                self.top[("limits", "redis_url")] = (url, path)
            else:
                self.errors.append(f"{path}: expected a redis://, rediss:// or unix:// URL")
            return
        given = [k for k in _REDIS_PARTS if rs.get(k) is not None]
        if not given:
            return
        parts: dict[str, tuple[Any, str]] = {}
        for key in _REDIS_PARTS:
            path, env_name = f"router_settings.{key}", key.upper()
            if key in given:
                parts[key] = (self.value(rs[key], path), path)
            elif (found := self.from_env((env_name,))) is not None:
                parts[key] = (found, f"{path} (from ${env_name})")
        if any(self.reference(v) for v, _ in parts.values()):
            if self.env is None:
                self.warn(f"router_settings.{given[0]}", "os.environ/ references need an environment; not composed")
            return
        url = redis_address(parts, self.errors)
        if url is not None:
            self.top[("limits", "redis_url")] = (url, "router_settings." + given[0])

    # --- output -------------------------------------------------------------------------------

    def finish(self) -> Translation:
        models: list[dict[str, Any]] = []
        origins: dict[str, str] = {}
        for i, model in enumerate(self.models.values()):
            mpath = f"models[{i}]"
            origins[mpath] = model.entry
            out: dict[str, Any] = {"name": model.name, "deployments": [dict(d.fields) for d in model.deployments]}
            for j, dep in enumerate(model.deployments):
                origins[f"{mpath}.deployments[{j}]"] = dep.entry
                origins.update({f"{mpath}.deployments[{j}].{k}": v for k, v in dep.origins.items()})
            if model.aliases:
                out["aliases"] = list(model.aliases)
            if model.fallbacks:
                out["fallbacks"] = list(model.fallbacks)
            if model.price:
                out["price"] = dict(model.price)
            origins.update({f"{mpath}.price.{k}": v for k, v in model.price_origins.items()})
            models.append(out)
        native: dict[str, Any] = {"models": models}
        for target, (value, origin) in self.router.items():
            node = native.setdefault("router", {})
            for part in target[:-1]:
                node = node.setdefault(part, {})
            node[target[-1]] = value
            origins["router." + ".".join(target)] = origin
        for target, (value, origin) in self.top.items():
            native.setdefault(target[0], {})[target[1]] = value
            origins[".".join(target)] = origin
        return Translation(native, self.warnings, origins)
