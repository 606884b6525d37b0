"""Native config loading: YAML reading, ``os.environ/`` interpolation and error messages.

The error tests pin the exact wording of field paths because operators (and the CLI's tests)
read them; the secret tests make sure no api_key can reach a log through a config error.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import Any

import pytest

from modelyard.config.loader import LoadResult, _display_path, interpolate, load_settings, settings_from_dict
from modelyard.config.schema import Strategy
from modelyard.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-live-DO-NOT-PRINT-4242"


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def dep(api_base: str = "http://up:8000/v1", **kw: Any) -> dict[str, Any]:
    return {"api_base": api_base, "model": "m", **kw}


def config_error(data: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(data, source="config.yaml", environ=environ or {})
    return str(info.value)


# --- loading ----------------------------------------------------------------------------------


def test_load_native_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {port: 9000}
        router: {strategy: least_busy, retry: {num_retries: 4}}
        models:
          - name: chat
            aliases: [chat-latest]
            deployments:
              - {api_base: "http://a:8000/v1/", model: m1, weight: 2}
              - {api_base: "https://b.example.com/v1", model: m2}
        """,
    )
    result = load_settings(path, environ={})
    assert isinstance(result, LoadResult)
    assert result.source_format == "native"
    assert result.path == str(path)
    assert result.warnings == []
    s = result.settings
    assert s.server.port == 9000
    assert s.router.strategy is Strategy.least_busy
    assert s.router.retry.num_retries == 4
    assert [d.api_base for d in s.models[0].deployments] == ["http://a:8000/v1", "https://b.example.com/v1"]
    assert s.models[0].deployments[0].weight == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.path = "x"  # type: ignore[misc]


def test_empty_file_is_native_with_no_models(tmp_path: Path) -> None:
    for text in ("", "# only a comment\n", "---\n"):
        result = load_settings(write(tmp_path, text), environ={})
        assert result.source_format == "native"
        assert result.settings.models == []


def test_settings_from_dict_defaults() -> None:
    result = settings_from_dict({"models": [{"name": "a", "deployments": [dep()]}]}, environ={})
    assert result.path is None and result.source_format == "native"
    with pytest.raises(ConfigError, match=r"^<config>: "):
        settings_from_dict({"bogus": 1}, environ={})


def test_native_example_loads() -> None:
    env = {"OPENAI_API_KEY": "sk-a", "OPENAI_PROXY_KEY": "sk-b"}
    result = load_settings(ROOT / "examples" / "modelyard.yaml", environ=env)
    assert result.source_format == "native" and result.warnings == []
    names = [m.name for m in result.settings.models]
    assert names == ["gpt-4o", "llama-3.1-8b"]
    assert result.settings.models[0].deployments[1].api_key == "sk-b"
    assert result.settings.models[0].fallbacks == ["llama-3.1-8b"]


# --- environment interpolation ----------------------------------------------------------------


def test_env_interpolation_everywhere(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {port: os.environ/PORT}
        models:
          - name: os.environ/MODEL_NAME
            aliases: [os.environ/ALIAS, plain]
            deployments:
              - api_base: os.environ/BASE
                model: m
                api_key: os.environ/KEY
                rpm: os.environ/RPM
                name: "prefix-os.environ/NOT_REPLACED"
        """,
    )
    env = {"PORT": "9100", "MODEL_NAME": "chat", "ALIAS": "c", "BASE": "http://h:1/v1", "KEY": "k", "RPM": "60"}
    s = load_settings(path, environ=env).settings
    assert s.server.port == 9100
    m = s.models[0]
    assert (m.name, m.aliases) == ("chat", ["c", "plain"])
    d = m.deployments[0]
    assert (d.api_base, d.api_key, d.rpm, d.name) == ("http://h:1/v1", "k", 60, "prefix-os.environ/NOT_REPLACED")


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_TEST_KEY", "from-process")
    path = write(
        tmp_path,
        "models: [{name: a, deployments: [{api_base: 'http://h', model: m, api_key: os.environ/MODELYARD_TEST_KEY}]}]",
    )
    assert load_settings(path).settings.models[0].deployments[0].api_key == "from-process"


def test_missing_env_var_names_field_and_variable_only() -> None:
    data = {
        "models": [
            {"name": "a", "deployments": [dep(api_key="os.environ/OPENAI_KEY")]},
            {"name": "b", "deployments": [dep(api_base="os.environ/B_BASE")]},
        ]
    }
    msg = config_error(data, environ={"OTHER": SECRET})
    assert msg.splitlines() == [
        "config.yaml: 2 problems",
        "  models[0].deployments[0].api_key: environment variable 'OPENAI_KEY' is not set",
        "  models[1].deployments[0].api_base: environment variable 'B_BASE' is not set",
    ]
    assert SECRET not in msg


def test_interpolate_does_not_mutate_input() -> None:
    data = {"a": ["os.environ/X", {"b": "os.environ/X"}]}
    problems: list[str] = []
    assert interpolate(data, "", {"X": "1"}, problems) == {"a": ["1", {"b": "1"}]}
    assert data == {"a": ["os.environ/X", {"b": "os.environ/X"}]} and problems == []
    interpolate("os.environ/", "f", {}, problems)
    assert problems == ["f: 'os.environ/' names no environment variable"]


# --- validation errors ---------------------------------------------------------------------


def three_models(bad: dict[str, Any]) -> dict[str, Any]:
    return {
        "models": [
            {"name": "a", "deployments": [dep()]},
            {"name": "b", "deployments": [dep()]},
            {"name": "c", "deployments": [bad]},
        ]
    }


def test_bad_url_path() -> None:
    msg = config_error(three_models(dep(api_base="ftp://nowhere")))
    assert msg == "config.yaml: models[2].deployments[0].api_base: not a URL (expected http(s)://host[:port][/path])"


@pytest.mark.parametrize(
    ("bad", "line"),
    [
        (dep(api_base="localhost:8000"), "api_base: not a URL (expected http(s)://host[:port][/path])"),
        (dep(api_base="http://h:99999"), "api_base: not a URL (bad port)"),
        (dep(weight=-1), "weight: Input should be greater than 0"),
        (dep(max_concurrency=0), "max_concurrency: Input should be greater than or equal to 1"),
        (dep(kind="ray"), "kind: must be one of: openai, local, process, provider"),
        (dep(api_key=12345), "api_key: Input should be a valid string"),
        (dep(apibase="x"), "apibase: unknown field (did you mean 'api_base'?)"),
        (dep(colour="red"), "colour: unknown field"),
        ({"model": "m"}, "api_base: required field is missing"),
    ],
)
def test_deployment_field_errors(bad: dict[str, Any], line: str) -> None:
    assert config_error(three_models(bad)) == f"config.yaml: models[2].deployments[0].{line}"


def test_every_problem_is_listed() -> None:
    data = {
        "server": {"port": 70000, "hots": "x"},
        "router": {"strategy": "random"},
        "models": [{"name": "a", "deployments": []}, {"deployments": [dep(weight=0)]}],
    }
    assert config_error(data).splitlines() == [
        "config.yaml: 6 problems",
        "  server.port: Input should be less than or equal to 65535",
        "  server.hots: unknown field (did you mean 'host'?)",
        "  router.strategy: Input should be 'weighted', 'round_robin', 'least_busy' or 'lowest_latency'",
        "  models[0]: give deployments (at least one) or a cascade",
        "  models[1].name: required field is missing",
        "  models[1].deployments[0].weight: Input should be greater than 0",
    ]


def test_duplicate_model_name_and_alias() -> None:
    data = {
        "models": [
            {"name": "a", "aliases": ["x"], "deployments": [dep()]},
            {"name": "a", "deployments": [dep()]},
            {"name": "b", "aliases": ["x"], "deployments": [dep()]},
        ]
    }
    assert config_error(data).splitlines() == [
        "config.yaml: 2 problems",
        "  models[1]: name 'a' already used by models[0]",
        "  models[2]: name 'x' already used by models[0]",
    ]


def test_unknown_and_self_fallback() -> None:
    data = {
        "models": [
            {"name": "a", "fallbacks": ["b", "nope"], "deployments": [dep()]},
            {"name": "b", "aliases": ["bb"], "fallbacks": ["bb"], "deployments": [dep()]},
        ]
    }
    assert config_error(data).splitlines() == [
        "config.yaml: 2 problems",
        "  models[0].fallbacks[1]: unknown model 'nope'",
        "  models[1].fallbacks[0]: a model cannot fall back to itself",
    ]


def test_litellm_keys_in_native_file_get_a_hint() -> None:
    msg = config_error({"router_settings": {}})
    assert msg.startswith("config.yaml: router_settings: unknown field (a LiteLLM key")


@pytest.mark.parametrize(("data", "kind"), [([1, 2], "a list"), ("text", "a string"), (3, "a number")])
def test_non_mapping_top_level(data: Any, kind: str) -> None:
    assert config_error(data) == f"config.yaml: the top level must be a mapping of settings, not {kind}"


def test_non_mapping_top_level_file(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: a\n- name: b\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: the top level must be a mapping of settings, not a list"):
        load_settings(path, environ={})


# --- file and YAML errors -------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == f"{path}: file not found"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path, environ={})


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  - name: a\n    deployments: [\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    msg = str(info.value)
    assert msg.startswith(f"{path}: YAML syntax error at line 4, column 1: ")
    assert "\n" not in msg


def test_yaml_tab_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"YAML syntax error at line 2, column 1: found character '\\t'"):
        load_settings(write(tmp_path, "server:\n\tport: 1\n"), environ={})


def test_yaml_duplicate_key_is_an_error_but_merge_keys_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"line 3, column 1: found duplicate key 'models'"):
        load_settings(write(tmp_path, "models: []\nserver: {}\nmodels: []\n"), environ={})
    text = """
    models:
      - name: a
        deployments:
          - &base {api_base: "http://h:1/v1", model: m1}
          - <<: *base
            model: m2
    """
    s = load_settings(write(tmp_path, text), environ={}).settings
    assert [d.model for d in s.models[0].deployments] == ["m1", "m2"]


def test_unsafe_yaml_tags_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_settings(write(tmp_path, "x: !!python/object/apply:os.system ['true']\n"), environ={})


# --- secrets -------------------------------------------------------------------------------


def test_api_key_never_in_validation_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        models:
          - name: a
            deployments:
              - {{api_base: "not a url {SECRET}", model: "", api_key: {{nested: "{SECRET}"}}, weight: "{SECRET}"}}
              - {{api_base: "http://h", model: m, api_key: "{SECRET}", wieght: "{SECRET}"}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    err = info.value
    text = str(err) + repr(err) + err.message + str(err.body())
    assert "models[0].deployments[0].api_key: Input should be a valid string" in text
    assert SECRET not in text
    # No chained pydantic error (its repr includes input_value) travels with the ConfigError.
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_api_key_never_in_yaml_errors(tmp_path: Path) -> None:
    path = write(tmp_path, f'models:\n  - api_key: "{SECRET}\n    name: [\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert SECRET not in str(info.value)


# --- LiteLLM files through the loader -------------------------------------------------------


def test_litellm_validation_errors_name_litellm_keys_and_hide_secrets() -> None:
    def e(**params: Any) -> dict[str, Any]:
        return {"model_name": "m", "litellm_params": {"model": "openai/x", "api_key": SECRET, **params}}

    data = {
        "model_list": [e(), e(rpm=-1, weight="heavy", api_base=f"nope-{SECRET}")],
        "router_settings": {"num_retries": 99},
    }
    msg = config_error(data)
    assert msg.splitlines() == [
        "config.yaml: 4 problems",
        "  router_settings.num_retries: Input should be less than or equal to 20",
        "  model_list[1].litellm_params.weight: Input should be a valid number, unable to parse string as a number",
        "  model_list[1].litellm_params.rpm: Input should be greater than or equal to 1",
        "  model_list[1].litellm_params.api_base: not a URL (expected http(s)://host[:port][/path])",
    ]
    assert SECRET not in msg
    # Structural problems are found by the translation, before validation.
    msg = config_error({"model_list": [e(), e(model="openai/", rpm=-1)]})
    assert msg == "config.yaml: model_list[1].litellm_params.model: no model name after the provider prefix"


def test_display_path_falls_back_to_the_nearest_origin() -> None:
    origins = {
        "models[0]": "model_list[0]",
        "models[0].deployments[1]": "model_list[3]",
        "router.timeout_s": "x.timeout",
    }
    assert _display_path("router.timeout_s", origins) == "x.timeout"
    assert (
        _display_path("models[0].deployments[1].kind", origins) == "models[0].deployments[1].kind (from model_list[3])"
    )
    assert _display_path("models[0].name", origins) == "models[0].name (from model_list[0])"
    assert _display_path("server.port", origins) == _display_path("server.port", None) == "server.port"


LITELLM_EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-openai",
    "LITELLM_MASTER_KEY": "sk-master-0123",
    "DATABASE_URL": "postgresql://litellm:pw@db.internal:5432/litellm",
    "REDIS_HOST": "redis.internal",
    "REDIS_PASSWORD": "redis-pw",
    "ANTHROPIC_API_KEY": "sk-anthropic",
}


def test_litellm_example_loads() -> None:
    result = load_settings(ROOT / "examples" / "litellm_config.yaml", environ=LITELLM_EXAMPLE_ENV)
    assert result.source_format == "litellm"
    s = result.settings
    assert [m.name for m in s.models] == ["gpt-4o", "llama-3.1-8b", "claude-3-5-sonnet"]
    gpt, llama, claude = s.models
    assert (claude.deployments[0].kind, claude.deployments[0].model) == ("provider", "anthropic/claude-3-5-sonnet-20240620")
    assert [d.weight for d in gpt.deployments] == [2.0, 1.0]
    assert [d.api_key for d in gpt.deployments] == ["sk-openai", "sk-proxy-placeholder"]  # 2nd: environment_variables
    assert (gpt.aliases, gpt.fallbacks, llama.fallbacks) == (["gpt-4"], ["llama-3.1-8b"], ["claude-3-5-sonnet"])
    assert [d.max_concurrency for d in llama.deployments] == [8, 8]
    assert (s.router.retry.num_retries, s.router.timeout_s, s.router.breaker.cooldown_s) == (3, 300.0, 60.0)
    assert s.auth.master_key == "sk-master-0123"
    assert s.database.url == "postgresql+asyncpg://litellm:pw@db.internal:5432/litellm"
    assert s.limits.redis_url == "redis://:redis-pw@redis.internal:6379/0"
    assert len(result.warnings) == len(set(result.warnings)) == 7
    assert not any("sk-" in w or "pw" in w for w in result.warnings)
    with pytest.raises(ConfigError) as info:
        load_settings(ROOT / "examples" / "litellm_config.yaml", environ={})
    assert "model_list[0].litellm_params.api_key: environment variable 'OPENAI_API_KEY' is not set" in str(info.value)
    for path, name in [
        ("general_settings.master_key", "LITELLM_MASTER_KEY"),
        ("general_settings.database_url", "DATABASE_URL"),
        ("router_settings.redis_host", "REDIS_HOST"),
        ("router_settings.redis_password", "REDIS_PASSWORD"),
    ]:
        assert f"{path}: environment variable {name!r} is not set" in str(info.value)


# --- routing intelligence (issue 11) ------------------------------------------------------------


def test_routing_problems_name_their_field_paths() -> None:
    data = {
        "routing": {"auto": {"default": "chat", "embedder": "nope",
                             "tasks": {"chat": {"model": "chat"}, "code": {"model": "missing", "overflow": "gone"}}}},
        "models": [
            {"name": "chat", "deployments": [dep()]},
            {"name": "loop", "cascade": {"tiers": [{"model": "chat", "threshold": -1}, {"model": "loop"}]}},
            {"name": "late", "cascade": {"tiers": [{"model": "chat", "threshold": -1}, {"model": "chat", "threshold": -2}]}},
        ],
    }
    lines = config_error(data).splitlines()
    assert lines[0] == "config.yaml: 5 problems"
    assert sorted(lines[1:]) == sorted([
        "  routing.auto.tasks.code.model: unknown model 'missing'",
        "  routing.auto.tasks.code.overflow: unknown model 'gone'",
        "  routing.auto.embedder: unknown model 'nope' (the classifier embeds with it)",
        "  models[1].cascade.tiers[1].model: 'loop' leads back to cascade 'loop' (a cycle)",
        "  models[2].cascade.tiers[1]: the last tier always answers; a threshold there means nothing",
    ])


def test_logprob_tiers_and_judges_must_be_able_to_give_logprobs() -> None:
    data = {
        "models": [
            {"name": "chat", "deployments": [dep()]},
            {"name": "blind", "deployments": [dep(), {**dep(), "logprobs": False, "name": "blind/b"}]},
            {"name": "inner", "cascade": {"tiers": [{"model": "chat", "threshold": -1}, {"model": "chat"}]}},
            {"name": "c1", "cascade": {"tiers": [{"model": "blind", "threshold": -1}, {"model": "chat"}]}},
            {"name": "c2", "cascade": {"tiers": [{"model": "inner", "confidence": "min_logprob"}, {"model": "chat"}]}},
            {"name": "c3", "cascade": {"tiers": [{"model": "chat", "confidence": "judge", "judge": "blind"},
                                                 {"model": "blind"}]}},
            {"name": "ok", "cascade": {"tiers": [{"model": "blind", "confidence": "judge", "judge": "chat"},
                                                 {"model": "blind"}]}},
        ],
    }
    lines = config_error(data).splitlines()
    assert lines[0] == "config.yaml: 3 problems"
    assert sorted(lines[1:]) == sorted([
        "  models[3].cascade.tiers[0].model: 'blind' cannot give token logprobs (mean_logprob): its deployment "
        "blind/b says logprobs: false; use confidence: judge with a model that can",
        "  models[4].cascade.tiers[0].model: 'inner' is a cascade, whose answers carry no usable token logprobs "
        "(min_logprob); use confidence: judge",
        "  models[5].cascade.tiers[0].judge: 'blind' cannot give token logprobs (judge): its deployment blind/b says "
        "logprobs: false; use confidence: judge with a model that can",
    ])


def test_auto_default_must_be_a_task_and_a_model_is_deployments_or_a_cascade() -> None:
    msg = config_error({"routing": {"auto": {"default": "x", "tasks": {"chat": {"model": "chat"}}}},
                        "models": [{"name": "chat", "deployments": [dep()],
                                    "cascade": {"tiers": [{"model": "chat"}, {"model": "chat"}]}}]})
    assert "routing.auto" in msg and "unknown task 'x'" in msg
    assert "models[0]" in msg
