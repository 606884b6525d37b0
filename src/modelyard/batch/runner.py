"""The batch runner: validates batches, runs their items on idle capacity, finalizes them.

One task (``_loop``) owns every decision; items run as tasks of their own. Per model the pure
``batch/policy.decide`` says how many items may start, from the model group's admission counters
(less this runner's own items), the memory manager's residency and the model's recent load. Each
item is one request through the gateway's own proxy (``api/internal.unary``) on the batch owner's
behalf — their key's models, limits, budget, routing and spend — at the LOW priority.

Durability (docs/design/batch.md): a batch's items are written to the database when it is
validated; an item's output line, its state and the batch's counts are committed in one
transaction (results are group-committed by ``_committer``; an item's slot is not reused before its
commit is done). After SIGTERM or SIGKILL a restarted gateway resumes from the items without a
result: an item that was running when the process died is run again (its answer was never
recorded); a committed one never is. Spend rows carry the item's stable request id, so a re-run's
row is the same row (the store keeps the first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelyard.accounting.recorder import Finished, utc_now
from modelyard.api import internal
from modelyard.api.auth import MASTER, Principal
from modelyard.api.protocol import validate_chat, validate_embedding
from modelyard.accounting.pricing import from_nano, to_nano
from modelyard.batch import states
from modelyard.batch.blobs import Blobs
from modelyard.batch.finalize import Finalizer
from modelyard.batch.jsonl import error_line, is_success, item_id, output_line, parse_input
from modelyard.batch.policy import Counters, Decision, Knobs, Load, Residency, decide, interactive
from modelyard.batch.store import ANY, FAILED, PENDING, BatchStore, Pending, Result
from modelyard.config.batch import BatchAPIConfig
from modelyard.db import DatabaseError
from modelyard.errors import (
    AuthenticationError, BudgetExceededError, EngineRestartingError, InvalidRequestError, ModelNotFoundError,
    ModelNotReadyError, ModelyardError, OverloadedError, ShuttingDownError, UpstreamStatusError, internal_error_body,
)
from modelyard.routing.priority import LOW

log = logging.getLogger("modelyard.batch")
CHUNK = 512  # pending items loaded per batch at a time
PURGE_EVERY_S = 60.0


@dataclass(eq=False)
class _Open:
    """An in_progress (or cancelling/expiring) batch as the runner holds it."""

    id: str
    endpoint: str
    key_id: str | None
    status: str
    expires_us: int
    queue: list[Pending] = field(default_factory=list)
    next_line: int = 0  # the largest line loaded from the database
    exhausted: bool = False  # every pending item has been loaded
    inflight: set[int] = field(default_factory=set)
    attempts: dict[int, int] = field(default_factory=dict)


class Runner:
    def __init__(self, services: Any, store: BatchStore, blobs: Blobs, cfg: BatchAPIConfig, *,
                 clock: Callable[[], float], now_us: Callable[[], int]) -> None:
        self._s = services  # api.services.Services: proxy, router, memory, recorder, gate/ring/budgets
        self._store = store
        self._cfg = cfg
        self._clock = clock
        self._now_us = now_us
        self._finalizer = Finalizer(store, blobs, retention_s=cfg.retention_s)
        self._blobs = blobs
        self._open: dict[str, _Open] = {}
        self._running: dict[str, int] = {}  # scheduling key → items started, not yet committed
        self._in_proxy: dict[str, int] = {}  # model group → items inside the proxy right now
        self._last_busy: dict[str, float] = {}
        self._hold: dict[str, float] = {}
        self._last: dict[str, Decision] = {}  # the last decision per key (/admin and tests read it)
        self._tasks: set[asyncio.Task[None]] = set()
        self._commits: list[tuple[Result, asyncio.Future[None]]] = []
        self._commit_ev = asyncio.Event()
        self._wake = asyncio.Event()
        self._rescan = True
        self._loop_task: asyncio.Task[None] | None = None
        self._committer_task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_purge = 0.0
        self._last_error: str | None = None
        self._owned_db_start: Callable[[], Any] | None = None  # set by the service when it owns the database
        mm = services.memory
        self._local = {m["name"] for m in mm.snapshot()} if mm is not None else set()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._blobs.sweep()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="modelyard-batch-runner")
        self._committer_task = asyncio.get_running_loop().create_task(self._committer(), name="modelyard-batch-commit")

    def poke(self) -> None:
        """A batch was created or cancelled: look at the database now rather than at the next poll."""
        self._rescan = True
        self._wake.set()

    def decisions(self) -> dict[str, Decision]:
        return dict(self._last)

    async def aclose(self) -> None:
        """Stop: running items are cancelled (they stay pending and run again at the next start);
        results already produced are committed first."""
        self._closing = True
        for t in [self._loop_task, *self._tasks]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*[t for t in [self._loop_task, *self._tasks] if t is not None], return_exceptions=True)
        await self._flush()
        if self._committer_task is not None:
            self._committer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer_task

    # --- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        next_scan = 0.0
        while True:
            now = self._clock()
            try:
                if self._rescan or now >= next_scan:
                    self._rescan = False
                    next_scan = now + self._cfg.poll_interval_s
                    await self._scan()
                await self._refill()
            except ModelyardError as exc:
                if exc.message != self._last_error:  # once per distinct failure, not every poll
                    log.warning("batch runner: %s (retrying)", exc.message)
                self._last_error = exc.message
                if isinstance(exc, DatabaseError) and self._owned_db_start is not None:
                    with contextlib.suppress(ModelyardError):
                        await self._owned_db_start()
            except Exception:  # noqa: BLE001 - the runner must outlive a bug in one batch
                log.exception("batch runner: unexpected error (retrying)")
            else:
                self._last_error = None
            if not self._s.draining:
                self._dispatch()
            self._wake.clear()
            timeout = max(0.005, next_scan - self._clock())
            holds = [h for h in self._hold.values() if h > now]
            if holds:
                timeout = min(timeout, max(0.005, min(holds) - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _scan(self) -> None:
        now_us = self._now_us()
        rows = await self._store.open_batches()
        seen = set()
        for b in rows:
            bid, st = b["id"], b["status"]
            seen.add(bid)
            if st == states.VALIDATING:
                await self._validate(b)
                continue
            ob = self._open.get(bid)
            if ob is None:
                ob = self._open[bid] = _Open(bid, b["endpoint"], b["key_id"], st, int(b["expires_us"]))
            ob.status = st
            if st in (states.CANCELLING, states.FINALIZING) or now_us >= ob.expires_us:
                ob.queue.clear()  # nothing new starts; what runs finishes
                if ob.inflight:
                    continue
                dst = {states.CANCELLING: states.CANCELLED, states.FINALIZING: states.COMPLETED}.get(st, states.EXPIRED)
                await self._finish(b, dst)
            elif ob.exhausted and not ob.queue and not ob.inflight:
                if await self._store.move(bid, states.FINALIZING, now_us=now_us):
                    await self._finish(b, states.COMPLETED)
        for bid in [k for k in self._open if k not in seen]:
            if not self._open[bid].inflight:
                del self._open[bid]
        if self._clock() >= self._next_purge:
            self._next_purge = self._clock() + PURGE_EVERY_S
            gone = await self._store.purge(now_us=now_us, finished_before_us=now_us - int(self._cfg.retention_s * 1e6))
            for fid in gone:
                self._blobs.remove(fid)

    async def _finish(self, b: dict[str, Any], dst: str) -> None:
        await self._finalizer.finish(b, dst, now_us=self._now_us())
        self._open.pop(b["id"], None)

    async def _validate(self, b: dict[str, Any]) -> None:
        bid, now_us = b["id"], self._now_us()
        f = await self._store.get_file(b["input_file_id"], ANY, now_us=now_us)
        if f is None:
            await self._store.move(bid, states.FAILED, now_us=now_us, errors=[{
                "code": "file_not_found", "line": None, "param": "input_file_id",
                "message": f"the input file {b['input_file_id']!r} was deleted before the batch ran"}])
            return
        loop = asyncio.get_running_loop()
        try:
            parsed = await loop.run_in_executor(None, lambda: parse_input(
                self._blobs.lines(f.id), b["endpoint"], max_requests=self._cfg.max_requests))
        except OSError as exc:
            await self._store.move(bid, states.FAILED, now_us=now_us, errors=[{
                "code": "file_unreadable", "line": None, "param": "input_file_id", "message": f"input file: {exc}"}])
            return
        if parsed.errors:
            await self._store.move(bid, states.FAILED, now_us=now_us, errors=parsed.errors)
            return
        rows: list[dict[str, Any]] = [{"line": it.line, "custom_id": it.custom_id, "model": it.model, "state": PENDING,
                                       "request": orjson.dumps(it.body).decode(), "result": None} for it in parsed.items]
        rows += [{"line": x.line, "custom_id": x.custom_id, "model": None, "state": FAILED, "request": None,
                  "result": orjson.dumps(error_line(bid, x.line, x.custom_id, x.code, x.message)).decode()}
                 for x in parsed.bad]
        rows.sort(key=lambda r: r["line"])
        models = [it.model for it in parsed.items if it.model]
        await self._store.start(bid, rows=rows, failed=len(parsed.bad), model=models[0] if models else None,
                                now_us=self._now_us())
        self._rescan = True

    async def _refill(self) -> None:
        for ob in list(self._open.values()):
            if ob.status == states.IN_PROGRESS and not ob.exhausted and len(ob.queue) < CHUNK // 2:
                raw = await self._store.pending(ob.id, after_line=ob.next_line, limit=CHUNK)
                ob.queue.extend(p for p in raw if p.line not in ob.inflight)
                if raw:
                    ob.next_line = raw[-1].line
                if len(raw) < CHUNK:
                    ob.exhausted = True
                    self._rescan = True

    # --- scheduling ----------------------------------------------------------------------------
    def _groups_of(self, model: str | None) -> tuple[str, list[Any], Residency]:
        """(scheduling key, groups whose load counts, residency) for an item's model; key "" = ungated
        (an unknown model: the item fails at once with 404, no capacity needed)."""
        router = self._s.router
        auto = self._s.proxy.auto
        if model is None:
            return "", [], Residency.remote
        if auto is not None and model == auto.name:
            target = None
        else:
            try:
                target = router.resolve(model)
            except ModelNotFoundError:
                return "", [], Residency.remote
            if target.cascade is not None:  # its first tier answers first: that model's capacity
                try:
                    target = router.resolve(target.cascade.tiers[0].model)
                except ModelNotFoundError:
                    return "", [], Residency.remote
        if target is None:  # auto: decided per request; hold it to the whole machine's load
            groups = [g for g in router.groups() if g.cascade is None]
            return "auto", groups, Residency.active
        res = self._residency(target)
        if res is not Residency.remote and self._cfg.share_device:
            return target.name, [g for g in router.groups() if self._is_local(g)], res
        return target.name, [target], res

    def _is_local(self, g: Any) -> bool:
        return any(d.name in self._local for d in g.deployments)

    def _residency(self, g: Any) -> Residency:
        mm = self._s.memory
        names = [d.name for d in g.deployments if d.name in self._local]
        if not names or mm is None:
            return Residency.remote
        if any(mm.tier(n).value == "active" for n in names):
            return Residency.active
        return Residency.cold_fits if any(not mm.would_evict(n) for n in names) else Residency.cold_evicts

    def _decide(self, key: str, groups: list[Any], res: Residency) -> Decision:
        now = self._clock()
        waiting, in_flight = interactive(Counters(g.admission.in_flight, g.admission.queued, g.admission.depths()[LOW],
                                                  self._in_proxy.get(g.name, 0)) for g in groups)
        knobs = Knobs(self._cfg.concurrency_for(key), self._cfg.pause_at_in_flight, self._cfg.resume_after_s,
                      self._cfg.ramp_s)
        d = decide(Load(waiting, in_flight, self._running.get(key, 0), res), knobs, now=now,
                   last_busy=self._last_busy.get(key), hold_until=self._hold.get(key))
        if d.busy:
            self._last_busy[key] = now
        self._last[key] = d
        return d

    def _dispatch(self) -> None:
        blocked: set[str] = set()
        for ob in list(self._open.values()):
            if ob.status != states.IN_PROGRESS or self._now_us() >= ob.expires_us:
                continue
            keep: list[Pending] = []
            for i, item in enumerate(ob.queue):
                if i >= CHUNK:
                    keep.extend(ob.queue[i:])
                    break
                key, groups, res = self._groups_of(item.model)
                if key in blocked or (key and self._decide(key, groups, res).slots <= 0):
                    blocked.add(key)
                    keep.append(item)
                    continue
                self._start(ob, item, key, key if key not in ("", "auto") else None)
            ob.queue = keep

    def _start(self, ob: _Open, item: Pending, key: str, group: str | None) -> None:
        self._running[key] = self._running.get(key, 0) + 1
        ob.inflight.add(item.line)
        task = asyncio.get_running_loop().create_task(self._item(ob, item, key, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one item ------------------------------------------------------------------------------
    async def _item(self, ob: _Open, item: Pending, key: str, group: str | None) -> None:
        try:
            try:
                res = await self._execute(ob, item, group)
            except Exception:  # noqa: BLE001 - a bug must cost one item (a 500 line), not the batch
                log.exception("batch %s line %d: unexpected error", ob.id, item.line)
                body = orjson.loads(internal_error_body())
                res = Result(ob.id, item.line, False, output_line(ob.id, item.line, item.custom_id, 500, body))
            if res is None:
                ob.queue.insert(0, item)  # refused for now (overload, rate limit): again after the hold
                return
            try:
                await self._commit(res)
            except ModelyardError as exc:
                log.warning("batch %s line %d: result not committed (%s); the item runs again", ob.id, item.line,
                            exc.message)
                self._hold[key] = self._clock() + 1.0
                ob.queue.insert(0, item)
        finally:
            self._running[key] -= 1
            ob.inflight.discard(item.line)
            self._wake.set()

    async def _execute(self, ob: _Open, item: Pending, group: str | None) -> Result | None:
        rid = item_id(ob.id, item.line)
        data = item.request
        ep = ob.endpoint.removeprefix("/v1/").replace("/", ".")
        t0 = self._clock()
        tally = principal = None
        model = group
        try:
            principal = self._principal(ob.key_id)
            await self._check_budget(principal)
            if ob.endpoint == "/v1/chat/completions":
                model, stream = validate_chat(data)
            elif ob.endpoint == "/v1/embeddings":
                model, stream = validate_embedding(data), False
            else:
                model, stream = str(data.get("model") or ""), bool(data.get("stream"))
            if stream:
                raise InvalidRequestError("stream: a batch item cannot stream (leave stream out)", param="stream")
            model = group or model
            if group is not None:
                self._in_proxy[group] = self._in_proxy.get(group, 0) + 1
            try:
                status, body, tally, label = await self._call(ob.endpoint, model, data, principal, t0, rid)
            finally:
                if group is not None:
                    self._in_proxy[group] -= 1
            model = label or model
        except ModelyardError as exc:
            if self._retryable(exc) and ob.attempts.get(item.line, 0) < self._cfg.retry_limit:
                ob.attempts[item.line] = ob.attempts.get(item.line, 0) + 1
                key = self._groups_of(item.model)[0]
                self._hold[key] = self._clock() + max(0.1, exc.retry_after_s or 1.0)
                return None
            status, body = exc.status, exc.body()
        usage = body.get("usage") if isinstance(body, dict) else None
        tin, tout = _tokens(usage)
        key_id = principal.key_id if principal is not None else ob.key_id
        team = principal.team if principal is not None else None
        self._s.recorder.record(Finished(
            request_id=rid, method="POST", path=ob.endpoint, endpoint=f"batch.{ep}", status=status,
            elapsed_s=self._clock() - t0, model=model or None, key_id=key_id, team=team, batch_id=ob.id),
            tally.end(status) if tally is not None else None, principal)
        line = output_line(ob.id, item.line, item.custom_id, status, body)
        return Result(ob.id, item.line, is_success(line), line, tin, tout)

    async def _call(self, endpoint: str, model: str, data: dict[str, Any], principal: Any, t0: float,
                    rid: str) -> tuple[int, Any, Any, str | None]:
        """(status, body, the inner request's tally, the model label) of one item's request."""
        if endpoint == "/v1/responses":
            responses = getattr(self._s, "responses", None)
            if responses is None:
                raise InvalidRequestError("this server has no /v1/responses endpoint", param="url",
                                          code="endpoint_unavailable")
            out = await responses.run_unary(data, principal=principal, request_id=rid, priority=LOW)
            status, body = out[0], out[1]
            tally = out[2] if len(out) > 2 else None
            return status, body, tally, model
        cap = await internal.unary(self._s.proxy, endpoint, model, data, principal=principal, t0=t0, request_id=rid,
                                   endpoint=endpoint.removeprefix("/v1/").replace("/", "."), priority=LOW)
        body = cap.json()
        if body is None:
            body = {"error": {"message": cap.body[:500].decode("utf-8", "replace"), "type": "upstream_error",
                              "param": None, "code": "invalid_upstream_body"}}
        req = cap.request
        return cap.status, body, req.outcome if req is not None else None, req.model if req is not None else None

    @staticmethod
    def _retryable(exc: ModelyardError) -> bool:
        if isinstance(exc, ShuttingDownError):
            return False
        if isinstance(exc, (OverloadedError, ModelNotReadyError, EngineRestartingError)):
            return True
        return isinstance(exc, UpstreamStatusError) and exc.upstream_status == 429

    def _principal(self, key_id: str | None) -> Principal | None:
        """The batch owner, as the gate would see them now (a key revoked meanwhile: its items fail 401)."""
        if key_id is None:
            return None
        if key_id == "master":
            return MASTER
        ring = self._s.ring
        key = ring.get(key_id) if ring is not None else None
        if key is None or key.revoked_at is not None:
            raise AuthenticationError(f"the API key {key_id!r} that created this batch has been revoked",
                                      code="revoked_api_key")
        if key.expires_at is not None and key.expires_at <= utc_now():
            raise AuthenticationError(f"the API key {key_id!r} that created this batch has expired",
                                      code="expired_api_key")
        return Principal(key, admin=False)

    async def _check_budget(self, principal: Principal | None) -> None:
        key = principal.key if principal is not None else None
        budgets = self._s.budgets
        if key is None or key.max_budget is None or budgets is None:
            return
        spent = await budgets.spent(key, utc_now())
        if spent >= to_nano(key.max_budget):
            raise BudgetExceededError(f"Budget exceeded: API key {key.display()} has spent {from_nano(spent)} "
                                      f"of its max_budget {key.max_budget}.")

    # --- commits -------------------------------------------------------------------------------
    async def _commit(self, res: Result) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commits.append((res, fut))
        self._commit_ev.set()
        await fut

    async def _committer(self) -> None:
        while True:
            await self._commit_ev.wait()
            self._commit_ev.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._commits:
            n = self._cfg.commit_max_rows
            batch, self._commits = self._commits[:n], self._commits[n:]
            try:
                await self._store.commit([r for r, _ in batch])
            except ModelyardError as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)


def _tokens(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, dict):
        return 0, 0
    p = usage.get("prompt_tokens", usage.get("input_tokens"))
    c = usage.get("completion_tokens", usage.get("output_tokens"))
    return (p if isinstance(p, int) and p > 0 else 0), (c if isinstance(c, int) and c > 0 else 0)
