"""``modelyard router train``: (re)train the task classifier behind ``model: "auto"``.

Every failure prints ``error: ...`` on stderr and exits 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from modelyard.errors import ArtifactError, ConfigError
from modelyard.registry import default_store_dir
from modelyard.routing.tasks import TASKS, packaged_dataset_path

DEFAULT_MAX_CHARS = 600  # what the shipped model reads of the user's words; see docs/design/task-routing.md


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group("router", context_settings={"help_option_names": ["-h", "--help"]})
def router() -> None:
    """The task classifier behind ``model: "auto"``."""


@router.command("train")
@click.argument("data", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", "store_dir", type=click.Path(file_okay=False), default=None,
              help="artifact store directory (default: $MODELYARD_HOME/artifacts); it must hold (or gets) text-embedding")
@click.option("--held-out", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True,
              help="fraction of each task held out for evaluation")
@click.option("--seed", type=int, default=0, show_default=True, help="the split's seed")
@click.option("--max-chars", type=click.IntRange(min=0), default=DEFAULT_MAX_CHARS, show_default=True,
              help="the classifier reads the last N characters of the user's words (0: all)")
@click.option("--tasks", "tasks_csv", default=",".join(TASKS), show_default=True, help="the allowed task labels, comma-separated")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="also write the model to FILE")
@click.option("--no-store", is_flag=True, help="do not write an artifact (with --out: the file only)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch threads for the embedding")
def train_cmd(data: Path | None, store_dir: str | None, held_out: float, seed: int, max_chars: int, tasks_csv: str,
              out: Path | None, no_store: bool, threads: int | None) -> None:
    """Embed DATA.jsonl (default: the shipped router_tasks.jsonl) with text-embedding, train, print the
    held-out scores, and write the model as a new version of the `router-tasks` artifact."""
    from modelyard.registry.artifacts import ArtifactStore
    from modelyard.routing.train import Encoder, fit, read_dataset, store_model

    if no_store and out is None:
        _fail("--no-store without --out would write nothing")
    path = data or packaged_dataset_path()
    tasks = tuple(t.strip() for t in tasks_csv.split(",") if t.strip())
    try:
        items, digest = read_dataset(path, tasks)
        store = ArtifactStore(store_dir or default_store_dir())
        t0 = time.perf_counter()
        encoder = Encoder(store, n_threads=threads)
        t_load = time.perf_counter() - t0
        try:
            t1 = time.perf_counter()
            fitted = fit(items, encoder.embed, dataset_sha256=digest, held_out=held_out, seed=seed,
                         max_chars=max_chars or None, tasks=[t for t in tasks if any(it["task"] == t for it in items)],
                         embedding_model=encoder.model_id)
            t_fit = time.perf_counter() - t1
        finally:
            encoder.close()
        written = []
        if out is not None:
            fitted.model.save(out)
            written.append(str(out))
        if not no_store:
            m = store_model(store, fitted.model, source=f"modelyard router train {path.name} sha256:{digest[:12]}")
            written.append(f"{m.ref} in {store.root}")
    except (ConfigError, ArtifactError) as exc:
        _fail(exc.message)
    except OSError as exc:
        _fail(str(exc))
    _print_report(fitted.report, n=len(items), n_train=fitted.model.metadata["n_train"], t_load=t_load, t_fit=t_fit)
    for w in written:
        click.echo(f"wrote {w}")


def _print_report(report: dict[str, Any], *, n: int, n_train: int, t_load: float, t_fit: float) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(width=110, soft_wrap=True)
    acc = report["accuracy"]
    console.print(f"{n} examples: {n_train} trained, {report['n']} held out; encoder loaded in {t_load:.1f} s, "
                  f"embedded and trained in {t_fit:.1f} s")
    if acc is None:
        console.print("held-out accuracy: n/a (nothing held out)")
        return
    hard = report.get("hard")
    console.print(f"held-out accuracy: {acc:.3f}" + (f" (hard cases: {hard:.3f})" if hard is not None else ""))
    scores = Table(box=box.SIMPLE, title="per task (held out)")
    for col in ("task", "precision", "recall", "f1", "support"):
        scores.add_column(col, justify="left" if col == "task" else "right")
    for task, m in report["per_task"].items():
        scores.add_row(task, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(scores)
    conf = report["confusion"]
    matrix = Table(box=box.SIMPLE, title="confusion (rows: true task, columns: predicted)")
    matrix.add_column("true \\ predicted")
    for t in conf["tasks"]:
        matrix.add_column(t, justify="right")
    for t, row in zip(conf["tasks"], conf["matrix"], strict=True):
        matrix.add_row(t, *(str(v) for v in row))
    console.print(matrix)
