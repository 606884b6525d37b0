"""Reading a config file into validated ``Settings``.

The loader is the one place where untrusted YAML meets the typed schema, so it owns everything a
human sees when a config is wrong: every problem is reported at once (a failed start costs a
deploy cycle; fixing errors one by one is slow), each as a field path such as
``models[2].deployments[0].api_base: not a URL ...``, prefixed by the file name. It never lets a
traceback or a pydantic dump escape: pydantic's ``input_value`` would print secrets such as
``api_key`` verbatim, so only pydantic's message and location are used, and ``ConfigError`` is
raised ``from None`` so the original exception is not chained into a log either.

Two formats are accepted: the native one (``schema.Settings``) and a LiteLLM proxy
``config.yaml`` (recognised by a top-level ``model_list``), translated by ``config.litellm``.
``os.environ/NAME`` values are replaced by environment variables, taken from the ``environ``
argument (default ``os.environ``) so that tests and embedders never touch process state.
"""

from __future__ import annotations

import difflib
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from modelyard.config.schema import DEPLOYMENT_KINDS, Settings
from modelyard.errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "LoadResult",
    "config_error",
    "interpolate",
    "join_path",
    "load_settings",
    "settings_from_dict",
]

ENV_PREFIX = "os.environ/"

# Top-level keys of a LiteLLM config: a native file that has them (but no model_list) gets a hint.
_LITELLM_TOP_KEYS = frozenset({"router_settings", "litellm_settings", "general_settings", "environment_variables"})


@dataclass(frozen=True)
class LoadResult:
    """What a load produced: the settings plus what the caller should tell the operator."""

    settings: Settings
    warnings: list[str]  # one human-readable line per unsupported key/value
    source_format: str  # "native" or "litellm"
    path: str | None


def load_settings(path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> LoadResult:
    """Read, interpolate and validate the config file at ``path``; raise ``ConfigError`` if bad."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read file ({exc.strerror or type(exc).__name__})") from None
    data = parse_yaml(raw, source)
    result = settings_from_dict(data, source=source, environ=environ)
    return LoadResult(result.settings, result.warnings, result.source_format, source)


def settings_from_dict(data: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> LoadResult:
    """Validate already-parsed config data (native or LiteLLM); ``source`` prefixes error messages."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping of settings, not {_kind(data)}")
    if "model_list" in data:
        # Imported here: config.litellm imports this module's helpers.
        from modelyard.config.litellm import translate_full

        translation = translate_full(dict(data), source, environ=env)
        settings = _validate(translation.native, source, translation.origins)
        return LoadResult(settings, list(translation.warnings), "litellm", None)
    problems: list[str] = []
    resolved = interpolate(data, "", env, problems)
    if problems:
        raise config_error(source, problems)
    return LoadResult(_validate(resolved, source, None), _native_warnings(resolved), "native", None)


def _native_warnings(data: Mapping[str, Any]) -> list[str]:
    """Accepted but discouraged spellings in a native config."""
    from modelyard.config.scaling import RAY_ALIAS

    out: list[str] = []
    models = data.get("models")
    for i, m in enumerate(models if isinstance(models, list) else []):
        auto = m.get("autoscale") if isinstance(m, Mapping) else None
        if isinstance(auto, Mapping) and RAY_ALIAS in auto:
            out.append(f"models[{i}].autoscale.{RAY_ALIAS}: Ray's old spelling, read as target_ongoing_requests "
                       "(use that name)")
    return out


# --- environment interpolation ----------------------------------------------------------------


def join_path(path: str, key: Any) -> str:
    """Extend a field path the way error messages spell it: ``a.b[2].c``."""
    if isinstance(key, int) and not isinstance(key, bool):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def interpolate(value: Any, path: str, environ: Mapping[str, str], problems: list[str]) -> Any:
    """Return ``value`` with every string equal to ``os.environ/NAME`` replaced by ``environ[NAME]``.

    Containers are copied, never mutated. A missing variable appends one problem naming the field
    path and the variable (never any value) and leaves the reference in place, so that all missing
    variables are reported together.
    """
    if isinstance(value, str):
        if not value.startswith(ENV_PREFIX):
            return value
        name = value[len(ENV_PREFIX) :]
        if not name:
            problems.append(f"{path or '(top level)'}: {value!r} names no environment variable")
            return value
        if name not in environ:
            problems.append(f"{path or '(top level)'}: environment variable {name!r} is not set")
            return value
        return environ[name]
    if isinstance(value, Mapping):
        return {k: interpolate(v, join_path(path, k), environ, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, join_path(path, i), environ, problems) for i, v in enumerate(value)]
    return value


# --- YAML ------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key repeated in one mapping.

    Plain YAML keeps the last of two equal keys, which silently drops half of a config (typically
    a second ``deployments:`` pasted under the same model). Keys brought in by a ``<<`` merge may
    still be overridden, as YAML intends.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(raw: bytes, source: str) -> Any:
    """Parse YAML text; syntax errors become a ConfigError with line and column.

    The message is built from the error's parts, not ``str(exc)``: PyYAML's own rendering quotes
    the offending source line, which may be a line holding an api_key.
    """
    try:
        return yaml.load(raw, Loader=_StrictLoader)  # _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        context = ""
        if exc.context and exc.problem and exc.context_mark is not None:
            context = f" ({exc.context} started at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{source}: YAML syntax error{where}: {problem}{context}") from None
    except yaml.YAMLError as exc:  # ReaderError (bad encoding / control characters) and kin
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None


# --- validation and error formatting ------------------------------------------------------


def _validate(data: Any, source: str, origins: Mapping[str, str] | None) -> Settings:
    """Validate into ``Settings``; on failure raise one ConfigError listing every problem."""
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc, origins)
    raise config_error(source, problems)


def format_validation_error(exc: ValidationError, origins: Mapping[str, str] | None) -> list[str]:
    """Turn pydantic errors into ``path: message`` lines, without ever including the input value."""
    problems: list[str] = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = _strip_kind_tags(tuple(err["loc"]))
        kind = err["type"]
        msg = str(err["msg"])
        if kind == "invalid_kind":
            loc, msg = (*loc, "kind"), "must be one of: " + ", ".join(DEPLOYMENT_KINDS)
        elif kind == "extra_forbidden":
            msg = "unknown field" + _unknown_field_hint(loc)
        elif kind == "missing":
            msg = "required field is missing"
        else:
            for prefix in ("Value error, ", "Assertion failed, "):
                if msg.startswith(prefix):
                    msg = msg[len(prefix) :]
        path = ""
        for part in loc:
            path = join_path(path, part)
        lines = msg.splitlines() or [""]
        if not path:
            # Model-level checks (duplicate names, fallbacks) put their own paths in the message.
            problems.extend(lines)
            continue
        problems.append(f"{_display_path(path, origins)}: {lines[0]}")
        problems.extend(lines[1:])
    return problems


def _strip_kind_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop the deployment union's tag that pydantic puts in the path (the user never wrote it)."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if part in DEPLOYMENT_KINDS and i >= 2 and isinstance(loc[i - 1], int) and loc[i - 2] == "deployments":
            continue
        out.append(part)
    return tuple(out)


def _display_path(path: str, origins: Mapping[str, str] | None) -> str:
    """For a translated LiteLLM config, name the key the user actually wrote.

    An exact origin (``model_list[3].litellm_params.rpm``) replaces the native path; otherwise the
    native path is kept and the nearest known origin is added, e.g.
    ``models[0].deployments[1].api_base (from model_list[3])``.
    """
    if not origins:
        return path
    if path in origins:
        return origins[path]
    probe = path
    while probe:
        cut = max(probe.rfind("."), probe.rfind("["))
        if cut <= 0:
            break
        probe = probe[:cut]
        if probe in origins:
            return f"{path} (from {origins[probe]})"
    return path


def _unknown_field_hint(loc: tuple[Any, ...]) -> str:
    """Suggest the field a typo was probably meant to be, or point at LiteLLM format detection."""
    if len(loc) == 1 and loc[0] in _LITELLM_TOP_KEYS:
        return " (a LiteLLM key: a LiteLLM config is recognised by a top-level model_list)"
    name = loc[-1] if loc else None
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, _fields_at(loc[:-1]), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the schema allows at ``loc`` (walking Settings' annotations)."""
    tp: Any = Settings
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if get_origin(tp) is list and get_args(tp):
                tp = get_args(tp)[0]
                continue
            return []
        owners = [m for m in _models_of(tp) if isinstance(part, str) and part in m.model_fields]
        if owners:
            tp = owners[0].model_fields[part].annotation
            continue
        return []
    fields: list[str] = []
    for model in _models_of(_unwrap(tp)):  # a union (deployment kinds): every kind's fields
        fields.extend(f for f in model.model_fields if f not in fields)
    return fields


def _models_of(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if get_origin(tp) in (Union, types.UnionType):
        return [m for arg in get_args(tp) for m in _models_of(_unwrap(arg))]
    return []


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to X."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def config_error(source: str, problems: list[str]) -> ConfigError:
    """One ConfigError: ``file: problem`` for one problem, a header plus one line each for several."""
    if len(problems) == 1:
        return ConfigError(f"{source}: {problems[0]}")
    return ConfigError(f"{source}: {len(problems)} problems\n" + "\n".join(f"  {p}" for p in problems))


def _kind(value: Any) -> str:
    """A short, value-free description of a YAML node's type for error messages."""
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return f"a {type(value).__name__}"
