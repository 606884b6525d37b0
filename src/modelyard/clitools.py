"""What every ``modelyard`` subcommand that reads the config shares: exit with a clear one-line
error, load the settings (warnings on stderr, as ``modelyard validate`` prints them)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import NoReturn

import click

from modelyard.config.loader import LoadResult, load_settings
from modelyard.config.schema import Settings
from modelyard.errors import ConfigError


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def load_or_exit(path: str, environ: Mapping[str, str] | None = None) -> LoadResult:
    """The config at ``path``; a broken one exits 2 naming every problem."""
    try:
        result = load_settings(path, environ=environ)
    except ConfigError as exc:
        fail(exc.message, 2)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    return result


def settings_or_defaults(config_path: str | None) -> Settings:
    return Settings() if config_path is None else load_or_exit(config_path).settings
