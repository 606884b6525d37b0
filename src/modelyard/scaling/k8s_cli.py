"""``modelyard render k8s``: write the Kubernetes manifests of a config (``scaling/k8s.py``) to a folder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import click
import yaml

from modelyard.clitools import fail, load_or_exit
from modelyard.config.loader import ENV_PREFIX
from modelyard.errors import ConfigError
from modelyard.scaling.k8s import RenderOptions, render


class _Unresolved(Mapping[str, str]):
    """An environment in which every ``os.environ/NAME`` stays a reference: the rendered config
    (a ConfigMap) must carry the reference, never the secret; the gateway resolves it in its pod."""

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def __getitem__(self, key: str) -> str:
        return ENV_PREFIX + key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _engine_images(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        key, sep, image = v.partition("=")
        if not sep:
            key, image = "*", v
        if not key or not image:
            raise click.BadParameter(f"{v!r}: expected IMAGE or PRESET=IMAGE", param_hint="--engine-image")
        out[key] = image
    return out


def file_name(manifest: dict) -> str:
    return f"{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"


@click.group("render")
def render_group() -> None:
    """Render deployment files from a config."""


@render_group.command("k8s")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="native or LiteLLM config")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="folder for the YAML files")
@click.option("--namespace", default="default", show_default=True)
@click.option("--image", default="modelyard:latest", show_default=True, help="the gateway's image")
@click.option("--engine-image", "engine_images", multiple=True,
              help="IMAGE for every engine, or PRESET=IMAGE (vllm, llamacpp-server, tgi, xllamacpp, command)")
@click.option("--prometheus-url", default="http://prometheus-server.monitoring.svc:80", show_default=True,
              help="where KEDA's prometheus triggers query")
@click.option("--gateway-replicas", default=2, show_default=True, type=click.IntRange(min=1))
def k8s(config_path: str, out_dir: str, namespace: str, image: str, engine_images: tuple[str, ...],
        prometheus_url: str, gateway_replicas: int) -> None:
    """Deployments, Services, HPAs / KEDA ScaledObjects for the engines; the gateway's Deployment,
    Service, ConfigMap and PodDisruptionBudget. One file per object, plus all.yaml."""
    settings = load_or_exit(config_path, environ=_Unresolved()).settings
    opts = RenderOptions(namespace=namespace, image=image, engine_images=_engine_images(engine_images),
                         prometheus_url=prometheus_url, gateway_replicas=gateway_replicas)
    try:
        manifests = render(settings, opts)
    except ConfigError as exc:
        fail(f"{config_path}: {exc.message}", 2)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for m in manifests:
            (out / file_name(m)).write_text(yaml.safe_dump(m, sort_keys=False))
        (out / "all.yaml").write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    except OSError as exc:
        fail(f"{out_dir}: cannot write ({exc.strerror or type(exc).__name__})", 2)
    click.echo(f"{len(manifests)} manifests written to {out_dir}")
