"""LiteLLM proxy config translation: every mapping, every warning, and the errors it can raise.

Warnings are compared as whole lists: "exactly one warning per unsupported key" is a promise to
operators, so an extra or a missing line is a regression.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelyard.config.litellm import split_provider, translate
from modelyard.config.loader import settings_from_dict
from modelyard.config.schema import Settings, Strategy
from modelyard.errors import ConfigError

SECRET = "sk-live-DO-NOT-PRINT-4242"
IGNORED = "not supported by modelyard yet; ignored"


def entry(name: str, model: str, **params: Any) -> dict[str, Any]:
    info = params.pop("model_info", None)
    out: dict[str, Any] = {"model_name": name, "litellm_params": {"model": model, **params}}
    if info is not None:
        out["model_info"] = info
    return out


def load(data: dict[str, Any], environ: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    result = settings_from_dict(data, source="config.yaml", environ=environ or {})
    assert result.source_format == "litellm"
    return result.settings, result.warnings


def error(data: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="config.yaml", environ=environ or {})
    return str(info.value)


# --- model_list ----------------------------------------------------------------------------


def test_same_model_name_becomes_one_model_with_ordered_deployments() -> None:
    data = {
        "model_list": [
            entry("gpt", "openai/gpt-4o", api_key="k1"),
            entry("llama", "hosted_vllm/meta-llama/Llama-3.1-8B", api_base="http://v1:8000/v1"),
            entry("gpt", "openai/gpt-4o-mini", api_base="https://proxy.example.com/v1/"),
        ]
    }
    s, warnings = load(data)
    assert warnings == []
    assert [m.name for m in s.models] == ["gpt", "llama"]
    gpt = s.models[0].deployments
    assert [(d.kind, d.model, d.api_base, d.api_key) for d in gpt] == [
        ("openai", "gpt-4o", "https://api.openai.com/v1", "k1"),
        ("openai", "gpt-4o-mini", "https://proxy.example.com/v1", None),
    ]
    assert s.models[1].deployments[0].model == "meta-llama/Llama-3.1-8B"


def test_deployment_params_map() -> None:
    params = {"rpm": 100, "tpm": 5000, "weight": 3, "timeout": 45, "max_parallel_requests": 8}
    s, warnings = load({"model_list": [entry("m", "openai/x", **params)]})
    d = s.models[0].deployments[0]
    assert (d.rpm, d.tpm, d.weight, d.timeout_s, d.max_concurrency) == (100, 5000, 3.0, 45.0, 8)
    assert warnings == []


@pytest.mark.parametrize(
    ("model", "custom", "expected"),
    [
        ("openai/gpt-4o", None, ("openai", "gpt-4o")),
        ("hosted_vllm/org/model", None, ("hosted_vllm", "org/model")),
        ("gpt-4o-mini", None, ("openai", "gpt-4o-mini")),
        ("o3-mini", None, ("openai", "o3-mini")),
        ("llama3", None, (None, "llama3")),
        ("my-model", "openai", ("openai", "my-model")),
        ("openai/my-model", "openai", ("openai", "my-model")),
    ],
)
def test_split_provider(model: str, custom: str | None, expected: tuple[str | None, str]) -> None:
    assert split_provider(model, custom) == expected


@pytest.mark.parametrize(
    ("model", "base", "upstream"),
    [
        ("text-completion-openai/gpt-3.5-turbo-instruct", "https://api.openai.com/v1", "gpt-3.5-turbo-instruct"),
        ("groq/llama-3.1-8b-instant", "https://api.groq.com/openai/v1", "llama-3.1-8b-instant"),
        ("openrouter/anthropic/claude-3.5-sonnet", "https://openrouter.ai/api/v1", "anthropic/claude-3.5-sonnet"),
        ("together_ai/meta-llama/Llama-3-8b", "https://api.together.xyz/v1", "meta-llama/Llama-3-8b"),
    ],
)
def test_other_openai_compatible_providers(model: str, base: str, upstream: str) -> None:
    s, warnings = load({"model_list": [entry("m", model)]})
    d = s.models[0].deployments[0]
    assert (d.kind, d.api_base, d.model) == ("openai", base, upstream)
    assert warnings == []


@pytest.mark.parametrize(
    "model",
    [
        "llama3",  # every prefixed provider is served (kind provider: tests/unit/test_provider_backend.py)
        "claude-3-5-sonnet",
    ],
)
def test_unsupported_provider_skips_deployment_with_one_warning(model: str) -> None:
    data = {
        "model_list": [
            entry("ok", "openai/x"),
            entry("bad", model, api_key=SECRET, drop_params=True, model_info={"mode": "chat"}),
        ]
    }
    s, warnings = load(data)
    assert [m.name for m in s.models] == ["ok"]
    assert len(warnings) == 2
    assert warnings[0].startswith("model_list[1]: model_name 'bad': ")
    assert repr(model) in warnings[0] and "deployment skipped" in warnings[0]
    assert warnings[1] == "model_list[1].model_name: model 'bad' has no supported deployment; model dropped"
    assert SECRET not in "".join(warnings)


def test_model_keeps_its_supported_deployments() -> None:
    s, warnings = load({"model_list": [entry("m", "claude-3"), entry("m", "openai/gpt-4o")]})
    assert len(s.models[0].deployments) == 1
    assert len(warnings) == 1 and warnings[0].startswith("model_list[0]: model_name 'm': a model without a provider prefix")


def test_wildcard_model_name_is_skipped() -> None:
    s, warnings = load({"model_list": [entry("openai/*", "openai/*")]})
    assert s.models == []
    assert warnings == ["model_list[0].model_name: wildcard model name 'openai/*' is not supported; entry skipped"]


def test_costs_become_price_per_1k() -> None:
    info = {"input_cost_per_token": 2.5e-06, "output_cost_per_token": "1e-5", "id": "dep-a"}
    s, warnings = load({"model_list": [entry("m", "openai/x", model_info=info)]})
    assert s.models[0].price is not None
    assert (s.models[0].price.input_per_1k, s.models[0].price.output_per_1k) == (0.0025, 0.01)
    assert s.models[0].deployments[0].name == "dep-a"
    assert warnings == []
    # litellm_params costs win over model_info
    s, _ = load(
        {
            "model_list": [
                entry("m", "openai/x", input_cost_per_token=0.000001, model_info={"input_cost_per_token": 0.5})
            ]
        }
    )
    assert s.models[0].price is not None and s.models[0].price.input_per_1k == 0.001


@pytest.mark.parametrize("where", ["litellm_params", "model_info"])
def test_both_costs_from_either_place(where: str) -> None:
    costs = {"input_cost_per_token": "os.environ/IN_COST", "output_cost_per_token": 6e-07}
    e = entry("m", "openai/x", **costs) if where == "litellm_params" else entry("m", "openai/x", model_info=costs)
    s, warnings = load({"model_list": [e]}, {"IN_COST": "1.5e-7"})
    assert s.models[0].price is not None
    assert (s.models[0].price.input_per_1k, s.models[0].price.output_per_1k) == (0.00015, 0.0006)
    assert warnings == []


def test_differing_costs_keep_the_first_with_a_warning() -> None:
    data = {
        "model_list": [
            entry("m", "openai/a", input_cost_per_token=1e-6),
            entry("m", "openai/b", input_cost_per_token=2e-6),
        ]
    }
    s, warnings = load(data)
    assert s.models[0].price is not None and s.models[0].price.input_per_1k == 0.001
    assert warnings == [
        "model_list[1]: cost differs from an earlier deployment of 'm'; modelyard prices per model, keeping the first"
    ]


def test_default_api_base_and_implicit_provider_variables() -> None:
    data = {"model_list": [entry("a", "openai/x"), entry("b", "hosted_vllm/y")]}
    env = {"OPENAI_API_KEY": "sk-o", "OPENAI_API_BASE": "http://gw:9/v1", "HOSTED_VLLM_API_BASE": "http://vllm:8000/v1"}
    s, _ = load(data, env)
    a, b = s.models[0].deployments[0], s.models[1].deployments[0]
    assert (a.api_base, a.api_key) == ("http://gw:9/v1", "sk-o")
    assert (b.api_base, b.api_key) == ("http://vllm:8000/v1", None)


def test_provider_without_api_base_is_an_error() -> None:
    msg = error({"model_list": [entry("b", "hosted_vllm/y")]})
    assert (
        msg == "config.yaml: model_list[0].litellm_params.api_base: required for provider 'hosted_vllm'"
        " (or set HOSTED_VLLM_API_BASE)"
    )


def test_unknown_params_model_info_and_entry_keys_warn_once_each() -> None:
    e = entry(
        "m",
        "openai/x",
        drop_params=True,
        api_version="1",
        stream_timeout=5,
        model_info={"mode": "chat", "base_model": "b"},
    )
    e["tpm"] = 1
    _, warnings = load({"model_list": [e]})
    assert warnings == [
        "model_list[0].litellm_params.drop_params: " + IGNORED,
        "model_list[0].litellm_params.api_version: " + IGNORED,
        "model_list[0].litellm_params.stream_timeout: not supported by modelyard"
        " (timeout applies to streamed requests too); ignored",
        "model_list[0].model_info.mode: " + IGNORED,
        "model_list[0].model_info.base_model: " + IGNORED,
        "model_list[0].tpm: " + IGNORED,
    ]


def test_weights_are_not_inferred_from_rpm() -> None:
    s, _ = load({"model_list": [entry("m", "openai/a", rpm=300), entry("m", "openai/b", rpm=100)]})
    assert [(d.weight, d.rpm) for d in s.models[0].deployments] == [(1.0, 300), (1.0, 100)]


# --- router_settings / litellm_settings ------------------------------------------------------


@pytest.mark.parametrize(
    ("litellm", "native", "warned"),
    [
        ("simple-shuffle", Strategy.weighted, False),
        ("least-busy", Strategy.least_busy, False),
        ("latency-based-routing", Strategy.lowest_latency, False),
        ("usage-based-routing", Strategy.weighted, True),
        ("usage-based-routing-v2", Strategy.weighted, True),
        ("cost-based-routing", Strategy.weighted, True),
        ("random-thing", Strategy.weighted, True),
    ],
)
def test_routing_strategy(litellm: str, native: Strategy, warned: bool) -> None:
    s, warnings = load({"model_list": [entry("m", "openai/x")], "router_settings": {"routing_strategy": litellm}})
    assert s.router.strategy is native
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].startswith("router_settings.routing_strategy: ") and "using weighted" in warnings[0]


def test_router_scalars() -> None:
    rs = {"num_retries": 4, "timeout": 30, "allowed_fails": 2, "cooldown_time": 15, "retry_after": 0.5}
    s, warnings = load({"model_list": [entry("m", "openai/x")], "router_settings": rs})
    r = s.router
    assert (r.retry.num_retries, r.timeout_s, r.breaker.allowed_fails, r.breaker.cooldown_s) == (4, 30.0, 2, 15.0)
    assert (r.retry.backoff_base_s, r.retry.backoff_max_s) == (0.5, 2.0)
    assert warnings == []
    s, _ = load({"model_list": [], "router_settings": {"retry_after": "os.environ/AFTER"}}, {"AFTER": "5"})
    assert (s.router.retry.backoff_base_s, s.router.retry.backoff_max_s) == (5.0, 5.0)


def test_litellm_settings_scalars_and_router_precedence() -> None:
    ls = {"num_retries": 1, "request_timeout": 20, "allowed_fails": 5, "cooldown_time": 9}
    s, warnings = load({"model_list": [], "litellm_settings": ls})
    r = s.router
    assert (r.retry.num_retries, r.timeout_s, r.breaker.allowed_fails, r.breaker.cooldown_s) == (1, 20.0, 5, 9.0)
    assert warnings == []
    s, warnings = load({"model_list": [], "litellm_settings": ls, "router_settings": {"num_retries": 3, "timeout": 99}})
    assert (s.router.retry.num_retries, s.router.timeout_s) == (3, 99.0)
    assert warnings == [
        "litellm_settings.num_retries: overridden by router_settings.num_retries; ignored",
        "litellm_settings.request_timeout: overridden by router_settings.timeout; ignored",
    ]


def test_fallbacks_from_both_sections_with_unknown_targets_dropped() -> None:
    data = {
        "model_list": [entry("a", "openai/a"), entry("b", "openai/b"), entry("c", "openai/c"), entry("z", "z-unprefixed")],
        "litellm_settings": {"fallbacks": [{"a": ["c"]}]},
        "router_settings": {"fallbacks": [{"a": ["b", "nope", "a", "c"]}, {"ghost": ["a"]}, {"b": "z"}]},
    }
    s, warnings = load(data)
    assert [m.fallbacks for m in s.models] == [["c", "b"], [], []]
    assert warnings[2:] == [
        "router_settings.fallbacks[0].a[1]: unknown model 'nope'; fallback dropped",
        "router_settings.fallbacks[0].a[2]: a model cannot fall back to itself; fallback dropped",
        "router_settings.fallbacks[1].ghost: unknown model 'ghost'; its fallbacks are dropped",
        "router_settings.fallbacks[2].b[0]: model 'z' was dropped (no supported deployment); fallback dropped",
    ]


def test_model_group_alias() -> None:
    rs = {
        "model_group_alias": {
            "gpt-4": "gpt-4o",
            "old": {"model": "gpt-4o", "hidden": True},
            "x": "missing",
            "gpt-4o": "gpt-4o",
        }
    }
    s, warnings = load({"model_list": [entry("gpt-4o", "openai/gpt-4o")], "router_settings": rs})
    assert s.models[0].aliases == ["gpt-4", "old"]
    assert warnings == [
        "router_settings.model_group_alias.old.hidden: " + IGNORED,
        "router_settings.model_group_alias.x: unknown model 'missing'; alias ignored",
        "router_settings.model_group_alias.gpt-4o: 'gpt-4o' is already a model name or alias; alias ignored",
    ]


def test_every_unsupported_key_warns_exactly_once() -> None:
    data = {
        "model_list": [entry("m", "openai/x")],
        "router_settings": {
            "redis_db": "os.environ/REDIS_DB",
            "enable_pre_call_checks": True,
            "context_window_fallbacks": [{"m": ["m"]}],
        },
        "litellm_settings": {
            "success_callback": ["langfuse"],
            "drop_params": True,
            "content_policy_fallbacks": [],
            "default_fallbacks": ["m"],
        },
        "general_settings": {"alerting": ["slack"], "store_model_in_db": "os.environ/STORE_IN_DB"},
        "include": ["other.yaml"],
    }
    _, warnings = load(data)  # the unset variables behind ignored keys are not errors
    assert sorted(warnings) == sorted(
        [
            "router_settings.redis_db: " + IGNORED,
            "router_settings.enable_pre_call_checks: " + IGNORED,
            "router_settings.context_window_fallbacks: not supported by modelyard (only plain fallbacks are); ignored",
            "litellm_settings.success_callback: " + IGNORED,
            "litellm_settings.drop_params: " + IGNORED,
            "litellm_settings.content_policy_fallbacks: not supported by modelyard (only plain fallbacks are); ignored",
            "litellm_settings.default_fallbacks: not supported by modelyard (only plain fallbacks are); ignored",
            "general_settings.alerting: " + IGNORED,
            "general_settings.store_model_in_db: " + IGNORED,
            "include: " + IGNORED,
        ]
    )


# --- environment -----------------------------------------------------------------------------


def test_env_references_in_litellm_values() -> None:
    e = entry("m", "os.environ/MODEL", api_base="os.environ/BASE", api_key="os.environ/KEY", rpm="os.environ/RPM")
    data = {"model_list": [e], "router_settings": {"num_retries": "os.environ/RETRIES"}}
    env = {"MODEL": "openai/gpt-4o", "BASE": "http://h:1/v1", "KEY": "sk-k", "RPM": "50", "RETRIES": "5"}
    s, _ = load(data, env)
    d = s.models[0].deployments[0]
    assert (d.model, d.api_base, d.api_key, d.rpm, s.router.retry.num_retries) == (
        "gpt-4o",
        "http://h:1/v1",
        "sk-k",
        50,
        5,
    )


def test_missing_env_var_names_the_litellm_key() -> None:
    data = {"model_list": [entry("m", "openai/x", api_key="os.environ/AZURE_KEY")]}
    msg = error(data, {"UNRELATED": SECRET})
    assert msg == "config.yaml: model_list[0].litellm_params.api_key: environment variable 'AZURE_KEY' is not set"


def test_environment_variables_section_is_honoured_and_real_env_wins() -> None:
    data = {
        "model_list": [entry("m", "openai/x", api_key="os.environ/K1", api_base="os.environ/B")],
        "environment_variables": {"K1": "from-file", "B": "http://file:1/v1"},
    }
    s, warnings = load(data, {"B": "http://real:2/v1"})
    d = s.models[0].deployments[0]
    assert (d.api_key, d.api_base) == ("from-file", "http://real:2/v1")
    assert warnings == []


def test_translate_is_pure_without_environ() -> None:
    data = {"model_list": [entry("m", "openai/x", api_key="os.environ/K")], "environment_variables": {"K": "v"}}
    before = copy.deepcopy(data)
    native, warnings = translate(data, "config.yaml")
    assert data == before
    assert native == {
        "models": [
            {
                "name": "m",
                "deployments": [
                    {"kind": "openai", "model": "x", "api_base": "https://api.openai.com/v1", "api_key": "os.environ/K"}
                ],
            }
        ]
    }
    assert warnings == []


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"model_list": {"a": 1}}, "model_list: expected a list of {model_name, litellm_params} entries"),
        ({"model_list": ["x"]}, "model_list[0]: expected a mapping with model_name and litellm_params"),
        (
            {"model_list": [{"litellm_params": {"model": "openai/x"}}]},
            "model_list[0].model_name: required (a non-empty string)",
        ),
        (
            {"model_list": [{"model_name": "m"}]},
            "model_list[0].litellm_params: required (a mapping with at least 'model')",
        ),
        (
            {"model_list": [{"model_name": "m", "litellm_params": {}}]},
            "model_list[0].litellm_params.model: required (e.g. 'openai/<upstream model>')",
        ),
        ({"model_list": [], "router_settings": [1]}, "router_settings: expected a mapping"),
        (
            {"model_list": [], "router_settings": {"fallbacks": {"a": "b"}}},
            "router_settings.fallbacks: expected a list of {model: [fallback, ...]}",
        ),
    ],
)
def test_structural_errors(data: dict[str, Any], line: str) -> None:
    assert error(data) == f"config.yaml: {line}"


# --- general_settings and Redis ---------------------------------------------------------------

PG = "postgresql://litellm:" + SECRET + "@db.internal:5432/litellm"


def settings_of(general: dict[str, Any] | None = None, router: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> tuple[Settings, list[str]]:
    data: dict[str, Any] = {"model_list": [entry("m", "openai/x")]}
    if general is not None:
        data["general_settings"] = general
    if router is not None:
        data["router_settings"] = router
    return load(data, env)


def test_master_key_and_database_url_are_honoured() -> None:
    general = {"master_key": "os.environ/LITELLM_MASTER_KEY", "database_url": "os.environ/DATABASE_URL", "alerting": ["slack"]}
    s, warnings = settings_of(general, env={"LITELLM_MASTER_KEY": SECRET, "DATABASE_URL": PG})
    assert s.auth.master_key == SECRET
    assert s.database.url == "postgresql+asyncpg://litellm:" + SECRET + "@db.internal:5432/litellm"
    assert warnings == ["general_settings.alerting: " + IGNORED]
    s, warnings = settings_of({"master_key": "sk-literal-key", "database_url": None})
    assert (s.auth.master_key, s.database.url, warnings) == ("sk-literal-key", None, [])


@pytest.mark.parametrize(
    ("url", "native"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql+asyncpg://u:pw@h:5432/db"),
        ("postgres://u:pw@h/db", "postgresql+asyncpg://u:pw@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("PostgreSQL://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql+asyncpg://u:p%40ss@h/db?ssl=require"),
    ],
)
def test_database_url_scheme_is_rewritten_for_asyncpg(url: str, native: str) -> None:
    s, warnings = settings_of({"database_url": url})
    assert (s.database.url, warnings) == (native, [])


def test_database_url_prisma_parameters_are_dropped_with_a_warning() -> None:
    s, warnings = settings_of({"database_url": PG + "?schema=public&sslmode=require&connection_limit=5"})
    assert s.database.url == "postgresql+asyncpg://litellm:" + SECRET + "@db.internal:5432/litellm?ssl=require"
    assert warnings == [
        "general_settings.database_url: URL parameter 'schema' is not used by modelyard's PostgreSQL driver; dropped",
        "general_settings.database_url: URL parameter 'connection_limit' is not used by modelyard's PostgreSQL driver; dropped",
    ]


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (PG.replace("postgresql://", "postgresql+psycopg2://"), "driver 'psycopg2' is not supported (modelyard uses asyncpg: write postgresql://...)"),
        (PG.replace("postgresql://", "mysql://"), "unsupported database 'mysql' (expected postgresql://...)"),
        (SECRET, "expected a PostgreSQL URL (postgresql://user:password@host:5432/db)"),
        (5432, "expected a PostgreSQL URL (postgresql://user:password@host:5432/db)"),
    ],
)
def test_bad_database_url_is_an_error_naming_the_key_never_the_url(url: Any, line: str) -> None:
    msg = error({"model_list": [], "general_settings": {"database_url": url}})
    assert msg == "config.yaml: general_settings.database_url: " + line
    assert SECRET not in msg


def test_short_master_key_error_names_the_litellm_key_not_the_value() -> None:
    msg = error({"model_list": [], "general_settings": {"master_key": "sk-1234"}})
    assert msg.startswith("config.yaml: general_settings.master_key: ") and "8 characters" in msg
    assert "sk-1234" not in msg


def test_used_general_settings_need_their_variables() -> None:
    msg = error({"model_list": [], "general_settings": {"master_key": "os.environ/MK", "database_url": "os.environ/DB"}})
    assert msg == (
        "config.yaml: 2 problems\n"
        "  general_settings.master_key: environment variable 'MK' is not set\n"
        "  general_settings.database_url: environment variable 'DB' is not set"
    )
    assert error({"model_list": [], "general_settings": ["master_key"]}) == "config.yaml: general_settings: expected a mapping"


@pytest.mark.parametrize(
    ("router", "env", "url"),
    [
        ({"redis_host": "redis.internal", "redis_port": 6380, "redis_password": "p@ss/w:rd"}, {}, "redis://:p%40ss%2Fw%3Ard@redis.internal:6380/0"),
        ({"redis_host": "redis.internal"}, {}, "redis://redis.internal:6379/0"),
        ({"redis_host": "10.0.0.5", "redis_port": "6390", "redis_password": ""}, {}, "redis://10.0.0.5:6390/0"),
        ({"redis_host": "::1"}, {}, "redis://[::1]:6379/0"),
        (  # LiteLLM's redis client fills the parts router_settings leaves out from REDIS_*
            {"redis_host": "os.environ/RH"},
            {"RH": "cache", "REDIS_PORT": "7000", "REDIS_PASSWORD": "pw"},
            "redis://:pw@cache:7000/0",
        ),
        ({"redis_password": "os.environ/RP"}, {"RP": "pw", "REDIS_HOST": "envhost"}, "redis://:pw@envhost:6379/0"),
        ({"redis_url": "rediss://:pw@cache:6380/2"}, {}, "rediss://:pw@cache:6380/2"),
        ({"redis_url": "os.environ/REDIS_URL"}, {"REDIS_URL": "redis://cache:6379/1"}, "redis://cache:6379/1"),
        ({}, {"REDIS_HOST": "envhost", "REDIS_PORT": "6379"}, None),  # the variables alone do not turn Redis on
    ],
)
def test_redis_settings_become_limits_redis_url(router: dict[str, Any], env: dict[str, str], url: str | None) -> None:
    s, warnings = settings_of(router=router, env=env)
    assert (s.limits.redis_url, warnings) == (url, [])


def test_redis_url_overrides_the_parts_with_a_warning_each() -> None:
    router = {"redis_url": "redis://cache:6379/0", "redis_host": "other", "redis_password": SECRET}
    s, warnings = settings_of(router=router)
    assert s.limits.redis_url == "redis://cache:6379/0"
    assert warnings == [
        "router_settings.redis_host: overridden by router_settings.redis_url; ignored",
        "router_settings.redis_password: overridden by router_settings.redis_url; ignored",
    ]


@pytest.mark.parametrize(
    ("router", "env", "line"),
    [
        ({"redis_url": f"http://:{SECRET}@cache"}, {}, "router_settings.redis_url: expected a redis://, rediss:// or unix:// URL"),
        ({"redis_host": "cache", "redis_port": "port", "redis_password": SECRET}, {}, "router_settings.redis_port: expected a port number (1-65535)"),
        ({"redis_host": "cache", "redis_port": 70000}, {}, "router_settings.redis_port: expected a port number (1-65535)"),
        ({"redis_host": "cache"}, {"REDIS_PORT": "x"}, "router_settings.redis_port (from $REDIS_PORT): expected a port number (1-65535)"),
        ({"redis_host": f"{SECRET}@cache/0"}, {}, "router_settings.redis_host: expected a host name or IP address"),
        ({"redis_password": SECRET}, {}, "router_settings.redis_host: required with redis_port/redis_password (or set REDIS_HOST)"),
        ({"redis_host": "os.environ/RH"}, {}, "router_settings.redis_host: environment variable 'RH' is not set"),
    ],
)
def test_bad_redis_settings_are_errors_without_secrets(router: dict[str, Any], env: dict[str, str], line: str) -> None:
    msg = error({"model_list": [], "router_settings": router}, env)
    assert msg == "config.yaml: " + line
    assert SECRET not in msg


def test_pure_translation_passes_references_through() -> None:
    data = {
        "model_list": [],
        "general_settings": {"master_key": "os.environ/MK", "database_url": "os.environ/DB"},
        "router_settings": {"redis_host": "os.environ/RH"},
    }
    native, warnings = translate(data, "config.yaml")
    assert native == {"models": [], "auth": {"master_key": "os.environ/MK"}, "database": {"url": "os.environ/DB"}}
    assert warnings == ["router_settings.redis_host: os.environ/ references need an environment; not composed"]
