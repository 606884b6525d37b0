"""``modelyard cascade calibrate``: run a labelled eval set through every tier of a cascade on a
running gateway, and choose the thresholds (issue 11 §4).

Each item goes to EVERY tier (through the official ``openai`` SDK, non-streaming, temperature 0,
``logprobs: true``, the item's ``max_tokens`` capped by the tier's), so one run prices every
threshold: an item answered at tier k costs tiers 0..k, which the sweep adds up without asking
again. Judge tiers also ask their judge (``top_logprobs: 10``, one token).

The items are split (``--holdout``, by a hash of the id within each task, so the split is the same
on every run) into a calibration part, where thresholds are chosen, and a held-out part, where
they are only measured: the figures to trust are the held-out ones.

Costs: each tier's ``price`` from the config × its tokens when every tier (and judge) is priced;
otherwise output tokens × the model's size in GB (its artifact in the store; 1.0 when unknown)
and input tokens at a quarter of that (prefill costs far less per token than decoding; a quarter
is the usual ratio of API input to output prices), which the report names. Relative costs are
what thresholds trade; the currency only labels them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click

from modelyard.clitools import fail, load_or_exit
from modelyard.config.schema import ModelConfig, Settings
from modelyard.routing import cascade_report
from modelyard.routing.cascade import (
    Trial,
    calibrate,
    confidence,
    cut_by_tier_cap,
    judge_confidence,
    judge_messages,
    save_calibration,
    threshold_warnings,
)
from modelyard.routing.checkers import check, spec_problem

DEFAULT_BASE_URL = "http://127.0.0.1:8400/v1"
PROMPT_WEIGHT = 0.25  # size basis: an input token costs a quarter of an output token


def default_data() -> Path:
    return Path(str(resources.files("modelyard.datasets") / "cascade_eval.jsonl"))


# --- pure helpers -------------------------------------------------------------------------------------


def parse_items(lines: Sequence[str], source: str) -> list[dict[str, Any]]:
    """Eval items, one JSON object a line (blank lines skipped); the first bad one raises
    ValueError naming ``source:N``."""
    items, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(item, dict):
            raise ValueError(f"{where}: not a JSON object")
        for key, kind in (("id", str), ("task", str), ("messages", list)):
            if not isinstance(item.get(key), kind) or not item[key]:
                raise ValueError(f"{where}: {key} must be a non-empty {kind.__name__}")
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in item["messages"]):
            raise ValueError(f"{where}: messages must be objects with a role")
        mt = item.get("max_tokens")
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise ValueError(f"{where}: max_tokens must be a positive integer")
        problem = spec_problem(item.get("check"))
        if problem:
            raise ValueError(f"{where}: {problem}")
        if item["id"] in seen:
            raise ValueError(f"{where}: duplicate id {item['id']!r}")
        seen.add(item["id"])
        items.append(item)
    if not items:
        raise ValueError(f"{source}: no items")
    return items


def stratified(items: Sequence[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first ``limit`` items taking tasks in turn (each task in file order, levels spread by
    taking every k-th item), so a small ``--limit`` still mixes tasks and difficulties."""
    if limit is None or limit >= len(items):
        return list(items)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it)
    share = {t: max(1, round(limit * len(v) / len(items))) for t, v in by_task.items()}
    queues = {}
    for t, v in by_task.items():
        step = max(1, len(v) // share[t])
        queues[t] = v[::step] + [x for i, x in enumerate(v) if i % step]
    out: list[dict[str, Any]] = []
    while len(out) < limit:
        for t in by_task:
            if queues[t] and len(out) < limit:
                out.append(queues[t].pop(0))
    return out


def split(items: Sequence[dict[str, Any]], holdout: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(calibration, held_out)``: per task, the ``holdout`` share of items whose id hashes lowest."""
    if holdout <= 0:
        return list(items), []
    held: set[str] = set()
    by_task: dict[str, list[str]] = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it["id"])
    for ids in by_task.values():
        k = math.floor(len(ids) * holdout) if len(ids) > 1 else 0
        held.update(sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:k])
    return [i for i in items if i["id"] not in held], [i for i in items if i["id"] in held]


@dataclass(frozen=True)
class Rate:
    """Cost per 1,000 prompt and completion tokens of one model."""

    prompt: float
    completion: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (self.prompt * prompt_tokens + self.completion * completion_tokens) / 1000.0


def find_model(settings: Settings, name: str) -> ModelConfig | None:
    return next((m for m in settings.models if name == m.name or name in m.aliases), None)


def rates(settings: Settings, names: Sequence[str], sizes: Mapping[str, int | None]) -> tuple[dict[str, Rate], str]:
    """Per-model rates and the basis they are on (see the module docstring)."""
    models = {n: find_model(settings, n) for n in names}
    if all(m is not None and m.price is not None for m in models.values()):
        out = {n: Rate(m.price.input_per_1k, m.price.output_per_1k) for n, m in models.items()
               if m is not None and m.price is not None}
        return out, "price: the config's price per 1k tokens × tokens"
    out, unknown = {}, []
    for n in names:
        size = sizes.get(n)
        if not size:
            unknown.append(n)
        gb = size / 1e9 if size else 1.0
        out[n] = Rate(gb * PROMPT_WEIGHT, gb)
    note = ("size: (output + input/4 tokens)/1000 × the model's artifact size in GB ("
            + ", ".join(f"{n} {r.completion:.3f} GB" for n, r in out.items()) + ")"
            + (f"; size unknown, weight 1.0: {', '.join(unknown)}" if unknown else "")
            + " — not every tier has a price in the config")
    return out, note


# --- effects ------------------------------------------------------------------------------------------


def _sizes(settings: Settings, names: Sequence[str]) -> dict[str, int | None]:
    from modelyard.backends.local_models import data_dir
    from modelyard.config.schema import LocalDeployment
    from modelyard.errors import ArtifactError
    from modelyard.registry.artifacts import ArtifactStore

    store = ArtifactStore(data_dir(settings) / "artifacts")
    out: dict[str, int | None] = {}
    for n in names:
        m = find_model(settings, n)
        dep = m.deployments[0] if m is not None and m.deployments else None
        size = None
        if isinstance(dep, LocalDeployment):
            try:
                size = store.get(dep.artifact, dep.version).size
            except (ArtifactError, OSError):
                size = None
        out[n] = size
    return out


class _Asker:
    def __init__(self, client: Any, rates_: Mapping[str, Rate]) -> None:
        self.client = client
        self.rates = rates_
        self.tokens: dict[str, list[int]] = {}

    def ask(self, model: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        resp = self.client.chat.completions.create(model=model, temperature=0, **body)
        data = resp.model_dump()
        usage = data.get("usage") or {}
        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.tokens.setdefault(model, [0, 0])
        self.tokens[model][0] += pt
        self.tokens[model][1] += ct
        choices = data.get("choices") or [{}]
        return choices[0], self.rates[model].cost(pt, ct)


def run_item(asker: _Asker, item: dict[str, Any], tiers: Sequence[Any]) -> list[tuple[Trial, str]]:
    """One item through every tier: ``(trial, the answer's text)`` per tier."""
    out = []
    for k, tier in enumerate(tiers):
        mt = item.get("max_tokens") or tier.max_tokens or 256
        if tier.max_tokens is not None:
            mt = min(mt, tier.max_tokens)
        choice, cost = asker.ask(tier.model, {"messages": item["messages"], "max_tokens": mt, "logprobs": True})
        text = ((choice.get("message") or {}).get("content")) or ""
        if tier.confidence == "judge":
            verdict, jcost = asker.ask(tier.judge, {"messages": judge_messages(item["messages"], text), "max_tokens": 1,
                                                    "logprobs": True, "top_logprobs": 10})
            conf = judge_confidence(verdict)
            cost += jcost
        else:
            conf = confidence(tier.confidence, choice)
        if cut_by_tier_cap(choice, tier.max_tokens, item.get("max_tokens")):
            conf = None  # unfinished by the cascade's own cap: the gateway escalates it too
        verdict_ = check(item["check"], text)
        out.append((Trial(item["id"], item["task"], k, conf, verdict_.ok, cost), text))
    return out


def run_all(client: Any, items: Sequence[dict[str, Any]], tiers: Sequence[Any], rates_: Mapping[str, Rate],
            concurrency: int, progress: Any = None) -> tuple[list[Trial], dict[str, list[int]], list[dict[str, Any]]]:
    asker = _Asker(client, rates_)
    trials: list[Trial] = []
    answers: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for n, (item, res) in enumerate(zip(items, pool.map(lambda it: run_item(asker, it, tiers), items), strict=True), 1):
            for trial, text in res:
                trials.append(trial)
                answers.append({"item": item["id"], "tier": trial.tier, "answer": text, "correct": trial.correct})
            if progress is not None:
                progress(n, len(items))
    return trials, asker.tokens, answers


def _client(base_url: str, api_key: str | None, timeout: float) -> Any:
    import openai

    key = api_key or os.environ.get("MODELYARD_API_KEY") or os.environ.get("OPENAI_API_KEY") or "sk-modelyard"
    client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=1, timeout=timeout)
    try:
        client.models.list()
    except openai.APIConnectionError:
        fail(f"cannot reach a modelyard gateway at {base_url} (start one with `modelyard serve`, or give --base-url)", 2)
    except openai.AuthenticationError:
        fail(f"{base_url} refused the API key (give --api-key or set MODELYARD_API_KEY)", 2)
    except openai.APIStatusError as exc:
        fail(f"{base_url}/models answered {exc.status_code}: is it a modelyard gateway?", 2)
    return client


@click.group("cascade")
def cascade_group() -> None:
    """Cascades: calibrate their confidence thresholds on labelled data."""


@cascade_group.command("calibrate")
@click.argument("data_arg", metavar="[DATA.jsonl]", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "name", required=True, help="the cascade model to calibrate")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config file (default: the embedded one)")
@click.option("--data", "data_path", type=click.Path(dir_okay=False), help="eval items, JSONL (default: the shipped set)")
@click.option("--base-url", default=DEFAULT_BASE_URL, show_default=True, help="a running modelyard gateway")
@click.option("--api-key", default=None, help="default: $MODELYARD_API_KEY or $OPENAI_API_KEY")
@click.option("--limit", type=click.IntRange(min=2), default=None, help="use N items, stratified by task")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.3, show_default=True,
              help="share of items (per task) kept out of calibration and only measured")
@click.option("--target-accuracy", type=click.FloatRange(0, 1), default=None, help="absolute accuracy to reach")
@click.option("--target-ratio", "--target", "target_ratio", type=click.FloatRange(0, 1), default=None,
              help="accuracy to reach as a share of the last tier's (default 0.95)")
@click.option("--max-escalation", type=click.FloatRange(0, 1), default=None,
              help="instead: the best accuracy escalating at most this share")
@click.option("--min-task-items", type=click.IntRange(min=1), default=30, show_default=True,
              help="items a task needs for its own threshold")
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="per request, seconds")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), help="default: <data_dir>/cascades/<model>.json")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), help="write report.md/.json and PNGs here")
def calibrate_cmd(data_arg: str | None, name: str, config_path: str | None, data_path: str | None, base_url: str,
                  api_key: str | None, limit: int | None, holdout: float, target_accuracy: float | None,
                  target_ratio: float | None, max_escalation: float | None, min_task_items: int, concurrency: int,
                  timeout_s: float, out_path: str | None, report_dir: str | None) -> None:
    """Run every eval item (DATA.jsonl or --data; default: the shipped set) through every tier of
    cascade MODEL on a running gateway, and choose its thresholds."""
    if data_arg is not None and data_path is not None and data_arg != data_path:
        fail("give the data file once (DATA or --data)", 2)
    data_path = data_path or data_arg
    if sum(x is not None for x in (target_accuracy, target_ratio, max_escalation)) > 1:
        fail("give one of --target-accuracy, --target-ratio, --max-escalation", 2)
    if config_path is None:
        from modelyard.config.defaults import default_settings

        settings = default_settings()
    else:
        settings = load_or_exit(config_path).settings
    model = find_model(settings, name)
    if model is None:
        fail(f"unknown model {name!r} (models: {', '.join(m.name for m in settings.models)})", 2)
    if model.cascade is None:
        cascades = [m.name for m in settings.models if m.cascade is not None]
        fail(f"model {name!r} is not a cascade (cascades: {', '.join(cascades) or 'none'})", 2)
    tiers = model.cascade.tiers
    source = data_path or str(default_data())
    try:
        items = parse_items(Path(source).read_text(encoding="utf-8").splitlines(), source)
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror or exc}", 2)
    except (UnicodeDecodeError, ValueError) as exc:
        fail(str(exc), 2)
    items = stratified(items, limit)
    train_items, held_items = split(items, holdout)
    if not train_items:
        fail("no items left for calibration (lower --holdout or raise --limit)", 2)
    models = [t.model for t in tiers]
    priced = models + [t.judge for t in tiers if t.judge]
    rates_, basis = rates(settings, priced, _sizes(settings, priced))
    client = _client(base_url, api_key, timeout_s)
    started = time.monotonic()

    def progress(n: int, total: int) -> None:
        if n == total or n % 10 == 0:
            click.echo(f"calibrate: {n}/{total} items ({time.monotonic() - started:.0f}s)", err=True)

    import openai

    try:
        trials, tokens, answers = run_all(client, items, tiers, rates_, concurrency, progress)
    except openai.APIConnectionError:
        fail(f"lost the gateway at {base_url} during the run", 1)
    except openai.APIStatusError as exc:
        fail(f"the gateway refused a request: {exc.status_code} {exc.message}", 1)
    held_ids = {i["id"] for i in held_items}
    train = [t for t in trials if t.item_id not in held_ids]
    held = [t for t in trials if t.item_id in held_ids]
    auto = settings.routing.auto
    task_names = set(auto.tasks) if auto is not None else set()
    kinds = [t.confidence for t in tiers]
    meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "data": source,
            "data_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(), "items": len(items),
            "calibration_items": len(train_items), "held_out_items": len(held_items), "confidence": kinds,
            "cost_basis": basis, "target_accuracy": target_accuracy, "target_ratio": target_ratio,
            "max_escalation": max_escalation}
    result = calibrate(train, models, model.name, target_accuracy=target_accuracy, max_escalation=max_escalation,
                       target_ratio=0.95 if target_ratio is None else target_ratio, min_task_items=min_task_items,
                       task_names=task_names, meta=meta)
    from modelyard.backends.local_models import data_dir

    out = Path(out_path) if out_path else data_dir(settings) / "cascades" / f"{model.name}.json"
    save_calibration(out, result.calibration)
    s = cascade_report.summary(model.name, models, kinds, train, held, result, cost_basis=basis,
                               settings={"limit": limit, "holdout": holdout, "seconds": round(time.monotonic() - started, 1),
                                         "tokens": tokens, "base_url": base_url})
    _print_table(s)
    click.echo(f"calibration: {out}")
    if report_dir:
        for p in cascade_report.write(s, report_dir):
            click.echo(f"report: {p}")
        (Path(report_dir) / "answers.jsonl").write_text(
            "".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
    for k, tier in enumerate(tiers[:-1]):
        if tier.threshold is not None or tier.thresholds:
            click.echo(f"note: tier {k} ({tier.model}) has thresholds in the config; they win over this calibration",
                       err=True)
    for w in threshold_warnings(model.name, tiers, result.calibration):
        click.echo(f"warning: {w}", err=True)


def _print_table(s: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for key, title in (("calibration", "calibration split"), ("held_out", "held-out split")):
        split_ = s.get(key)
        if not split_:
            continue
        table = Table(title=f"cascade {s['model']}: {title}, {split_['n']} items")
        for col in ("", "accuracy", "cost / item", "answered by tier 0", "saving vs last tier"):
            table.add_column(col)
        for row in cascade_report.table_rows(split_):
            table.add_row(*row)
        console.print(table)
    console.print(f"thresholds: {s['chosen']['thresholds']}  per task: {s['per_task_thresholds'] or 'none'}")
    console.print(f"cost basis: {s['cost_basis']}")
