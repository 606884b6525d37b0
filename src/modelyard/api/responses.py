"""The Responses API service: create (unary, streamed, background), read, delete, cancel.

A response is a chat completion underneath (``responses.translate``), carried by the proxy as a
client's chat request would be (``api.internal``): keys, limits, budgets, routing (``auto``,
cascades, fallbacks), admission and spend apply unchanged, and the request's outcome (its hops) is
the outer request's, so the app records it once, under the endpoint ``responses``.

Stored responses (``store``, the default) go to the database (``responses.store``) *before* the
client sees the final body or event, so a ``previous_response_id`` sent right after always finds
its predecessor. Without a database (spend off and no master key) nothing is stored: ``store`` is
answered as false, and ``previous_response_id``/``background`` are a 400 that says why.

Background responses: the row is written ``queued`` and the client answered at once; a task runs
it (at most ``max_background`` at a time) and writes the final state with a conditional update, so
a cancel that wins the race stays cancelled. At shutdown running tasks are dropped, not failed:
their rows stay ``queued``/``in_progress`` and the next start runs them again (from the start —
a half-generated answer is not resumable), so a restart loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import orjson

from modelyard.accounting.recorder import Finished
from modelyard.api import internal
from modelyard.api.auth import MASTER, Principal
from modelyard.api.http import Request
from modelyard.config.responses import ResponsesConfig
from modelyard.epoch import to_us
from modelyard.errors import InvalidRequestError, ModelyardError, NotFoundError
from modelyard.responses.store import ANY, ResponseStore, Stored
from modelyard.responses.stream import StreamTranslator
from modelyard.responses.translate import (
    CreateRequest,
    base_response,
    chat_body,
    error_code,
    failed,
    new_id,
    output_messages,
    parse_create,
    response_object,
)

log = logging.getLogger("modelyard.responses")
_CHAT = "/v1/chat/completions"
_SSE = b"text/event-stream"
_PASS_HEADERS = (b"x-modelyard-", b"x-ratelimit-", b"retry-after")


class ResponseNotFoundError(NotFoundError):
    code = "response_not_found"


def _owner(principal: Principal | None) -> Any:
    """Whose responses a caller sees: the master key every one, a key its own, no keys: all alike."""
    if principal is None:
        return None
    return ANY if principal.admin and principal.key is None else principal.key_id


class ResponsesService:
    def __init__(self, proxy: Any, store: ResponseStore | None, recorder: Any, cfg: ResponsesConfig, *,
                 clock: Callable[[], float], wall_clock: Callable[[], dt.datetime], ring: Any = None,
                 router: Any = None) -> None:
        self._proxy = proxy
        self._router = router
        self._store = store
        self._recorder = recorder
        self._cfg = cfg
        self._clock = clock
        self._now = wall_clock
        self._ring = ring
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(cfg.max_background)
        self._purger: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._store is None:
            return
        try:
            await self._store.purge(self._now_us())
            pending = await self._store.pending()
        except ModelyardError as exc:
            log.error("stored responses unavailable at start: %s", exc.message)
            return
        for row in pending:
            self._resume(row)
        if pending:
            log.info("resumed %d background responses", len(pending))
        self._purger = asyncio.get_running_loop().create_task(self._purge_loop())

    async def aclose(self) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        if self._purger is not None:
            tasks.append(self._purger)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _purge_loop(self) -> None:
        assert self._store is not None
        while True:
            await asyncio.sleep(self._cfg.purge_interval_s)
            try:
                n = await self._store.purge(self._now_us())
                if n:
                    log.info("deleted %d responses past their retention", n)
            except ModelyardError as exc:
                log.warning("purging stored responses failed: %s", exc.message)

    def _now_us(self) -> int:
        return to_us(self._now())

    def _now_s(self) -> int:
        return int(self._now().timestamp())

    @property
    def running(self) -> int:
        return len(self._tasks)

    # --- create ---------------------------------------------------------------------------------
    async def create(self, req: Request, data: dict[str, Any]) -> None:
        creq = parse_create(data)
        req.model = creq.model
        if self._speaks_responses(creq.model):
            await self._native(req, creq, data)
            return
        if self._store is None:
            if creq.previous_response_id or creq.background:
                param = "previous_response_id" if creq.previous_response_id else "background"
                raise InvalidRequestError(f"{param}: needs stored responses, and this server has no database "
                                          "(spend.enabled is false and no master key is set)", param=param)
            creq.store = False
        if creq.background and creq.stream:
            raise InvalidRequestError("stream: a background response cannot be streamed; poll GET /v1/responses/{id}",
                                      param="stream", code="unsupported_value")
        history = await self._history(creq, req.principal)
        resp_id = new_id("resp")
        if creq.background:
            await self._queue(resp_id, creq, history, data, req.principal)
            await req.respond_json(200, base_response(resp_id, creq, self._now_s(), status="queued"))
            return
        req.watch_disconnect()
        if creq.stream:
            await self._stream(req, resp_id, creq, history)
        else:
            status, body = await self._unary(req, resp_id, creq, history)
            await req.respond(status, body)

    def _speaks_responses(self, model: str) -> bool:
        """Every deployment of ``model`` is an upstream that serves /v1/responses itself."""
        auto = self._proxy.auto
        if self._router is None or (auto is not None and model == auto.name):
            return False
        try:
            group = self._router.resolve(model)
        except ModelyardError:
            return False  # the translated path gives the proper error
        deps = group.cfg.deployments
        return group.cascade is None and bool(deps) and all(getattr(d, "responses_api", False) for d in deps)

    async def _native(self, req: Request, creq: CreateRequest, data: dict[str, Any]) -> None:
        """Pass the request through to an upstream that speaks the Responses API. It stores the
        response; modelyard records whose it is (a row with the body as created), so that
        ``previous_response_id`` — sent on to the upstream, which shares one key among all of
        modelyard's tenants — only continues a caller's own responses, and GET answers it."""
        if creq.previous_response_id:
            if self._store is None or await self._store.get(creq.previous_response_id, _owner(req.principal),
                                                            now_us=self._now_us()) is None:
                raise ResponseNotFoundError(f"Previous response with id {creq.previous_response_id!r} not found.",
                                            param="previous_response_id")
        req.watch_disconnect()
        box: list[Request] = []
        if not creq.stream:
            try:
                cap = await internal.unary(self._proxy, "/v1/responses", creq.model, data, principal=req.principal,
                                           t0=req.t0, request_id=req.request_id, headers=req.scope["headers"],
                                           endpoint="responses", box=box)
            finally:
                _adopt(req, box[0] if box else None)
            _adopt_headers(req, cap.request)
            body = cap.json()
            if cap.status == 200 and isinstance(body, dict):
                await self._own(body, creq, req.principal)
            await req.respond(cap.status or 502, cap.body)
            return
        buf = b""
        final: dict[str, Any] = {}

        async def on_start(status: int, headers: Any) -> None:
            _adopt_headers(req, box[0] if box else None)
            await req.start_stream(200, _SSE)

        async def on_chunk(chunk: bytes) -> None:
            nonlocal buf
            payloads, buf = internal.sse_events(buf + chunk)
            for p in payloads:
                if b'"response.created"' in p or b'"response.completed"' in p or b'"response.incomplete"' in p:
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError, AttributeError):
                        final.update(orjson.loads(p)["response"])
            if final.get("status") in ("completed", "incomplete") and b"[DONE]" not in chunk:
                await self._own(dict(final), creq, req.principal)  # before the client reads the last event
                final["status"] = "owned"
            await req.stream_chunk(chunk)

        try:
            await internal.stream(self._proxy, "/v1/responses", creq.model, data, principal=req.principal, t0=req.t0,
                                  request_id=req.request_id, headers=req.scope["headers"], endpoint="responses",
                                  on_start=on_start, on_chunk=on_chunk, box=box)
        finally:
            _adopt(req, box[0] if box else None)
        if req.started and not req.finished:
            await req.end_stream()

    async def _own(self, body: dict[str, Any], creq: CreateRequest, principal: Any) -> None:
        resp_id = body.get("id")
        if self._store is None or not creq.store or not isinstance(resp_id, str):
            return
        now = self._now_us()
        await self._store.put(id=resp_id, key_id=_key_id(principal), model=creq.model,
                              status=str(body.get("status") or "completed"), background=False, now_us=now,
                              expires_us=now + self._retention_us(), previous_id=creq.previous_response_id,
                              body=body, context=None, input_items=creq.input_items, request=None)

    async def run_unary(self, data: dict[str, Any], *, principal: Any, request_id: str,
                        priority: int | None = None) -> tuple[int, dict[str, Any], Any]:
        """One non-streaming, non-background response for an internal caller (a batch item):
        (status, body, the inner request's outcome tally — for the caller to record)."""
        creq = parse_create(data)
        if creq.stream or creq.background:
            raise InvalidRequestError("stream/background are not available here", param="stream")
        if self._store is None:
            creq.store = False
        history = await self._history(creq, principal)
        cap = await internal.unary(self._proxy, _CHAT, creq.model, chat_body(creq, history, stream=False),
                                   principal=principal, t0=self._clock(), request_id=request_id,
                                   endpoint="responses", priority=priority)
        status, body = await self._complete(new_id("resp"), creq, history, cap, principal)
        return status, orjson.loads(body), cap.outcome

    async def _history(self, creq: CreateRequest, principal: Any) -> list[dict[str, Any]]:
        if not creq.previous_response_id:
            return []
        assert self._store is not None
        prev = await self._store.get(creq.previous_response_id, _owner(principal), now_us=self._now_us())
        if prev is None:
            raise ResponseNotFoundError(f"Previous response with id {creq.previous_response_id!r} not found.",
                                        param="previous_response_id")
        if prev.status not in ("completed", "incomplete") or prev.context is None:
            raise InvalidRequestError(f"previous_response_id: response {prev.id!r} is {prev.status}; only a finished "
                                      "response can be continued", param="previous_response_id")
        return prev.context

    async def _unary(self, req: Request, resp_id: str, creq: CreateRequest,
                     history: list[dict[str, Any]]) -> tuple[int, bytes]:
        box: list[Request] = []
        try:
            cap = await internal.unary(self._proxy, _CHAT, creq.model, chat_body(creq, history, stream=False),
                                       principal=req.principal, t0=req.t0, request_id=req.request_id,
                                       headers=req.scope["headers"], endpoint="responses", box=box)
        finally:
            _adopt(req, box[0] if box else None)
        _adopt_headers(req, cap.request)
        return await self._complete(resp_id, creq, history, cap, req.principal)

    async def _complete(self, resp_id: str, creq: CreateRequest, history: list[dict[str, Any]],
                        cap: internal.Captured, principal: Any) -> tuple[int, bytes]:
        completion = cap.json()
        if cap.status != 200 or not isinstance(completion, dict):
            return cap.status or 502, cap.body  # the model's own OpenAI-shaped error, as it came
        resp = response_object(base_response(resp_id, creq, self._now_s(), status="in_progress"), completion,
                               self._now_s())
        if creq.store:
            await self._put(resp, creq, history, principal)
        return 200, orjson.dumps(resp)

    async def _put(self, resp: dict[str, Any], creq: CreateRequest, history: list[dict[str, Any]],
                   principal: Any, *, request: dict[str, Any] | None = None) -> None:
        assert self._store is not None
        context = self._context(creq, history, resp)
        now = self._now_us()
        await self._store.put(id=resp["id"], key_id=_key_id(principal), model=creq.model, status=resp["status"],
                              background=creq.background, now_us=now, expires_us=now + self._retention_us(),
                              previous_id=creq.previous_response_id, body=resp, context=context,
                              input_items=creq.input_items, request=request)

    def _context(self, creq: CreateRequest, history: list[dict[str, Any]],
                 resp: dict[str, Any]) -> list[dict[str, Any]] | None:
        if resp["status"] not in ("completed", "incomplete"):
            return None
        context = [*history, *creq.input_messages, *output_messages(resp["output"])]
        if len(orjson.dumps(context)) > self._cfg.max_chain_bytes:
            return None  # too long to continue from: previous_response_id on it is a clear 400
        return context

    def _retention_us(self) -> int:
        return int(self._cfg.retention_days * 86400 * 1_000_000)

    async def _stream(self, req: Request, resp_id: str, creq: CreateRequest, history: list[dict[str, Any]]) -> None:
        tr = StreamTranslator(base_response(resp_id, creq, self._now_s(), status="in_progress"))
        buf = b""
        inner_box: list[Request] = []

        async def on_start(status: int, headers: Any) -> None:
            inner = inner_box[0] if inner_box else None
            if inner is not None:
                _adopt_headers(req, inner)
            await req.start_stream(200, _SSE)
            await req.stream_chunk(_encode(tr.start()))

        async def on_chunk(chunk: bytes) -> None:
            nonlocal buf
            payloads, buf = internal.sse_events(buf + chunk)
            out = []
            for p in payloads:
                if p == b"[DONE]" or tr.done:
                    continue
                try:
                    obj = orjson.loads(p)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
                    err = obj["error"]
                    out.extend(tr.fail(error_code(_status_of(err)), str(err.get("message") or "upstream error"),
                                       err.get("param")))
                elif isinstance(obj, dict):
                    out.extend(tr.feed(obj))
            if out:
                await req.stream_chunk(_encode(out))

        try:
            await internal.stream(self._proxy, _CHAT, creq.model, chat_body(creq, history, stream=True),
                                        principal=req.principal, t0=req.t0, request_id=req.request_id,
                                        headers=req.scope["headers"], endpoint="responses", on_start=on_start,
                                        on_chunk=on_chunk, box=inner_box)
        finally:
            _adopt(req, inner_box[0] if inner_box else None)
        if not req.started:
            return  # pragma: no cover - the proxy either raised or started the stream
        final = tr.end(self._now_s()) if not tr.done else []
        if creq.store and tr.response["status"] in ("completed", "incomplete"):
            try:
                await self._put(tr.response, creq, history, req.principal)
            except ModelyardError as exc:  # the answer is the client's; say it could not be stored
                final = [e for e in final if e["type"] == "error"] + tr.fail("server_error", exc.message)
        await req.end_stream(_encode(final))

    # --- background -----------------------------------------------------------------------------
    async def _queue(self, resp_id: str, creq: CreateRequest, history: list[dict[str, Any]], data: dict[str, Any],
                     principal: Any) -> None:
        resp = base_response(resp_id, creq, self._now_s(), status="queued")
        await self._put(resp, creq, history, principal, request=data)
        self._spawn(resp_id, creq, history, principal, resp)

    def _spawn(self, resp_id: str, creq: CreateRequest, history: list[dict[str, Any]], principal: Any,
               resp: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._background(resp_id, creq, history, principal, resp))
        self._tasks[resp_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(resp_id, None))

    def _resume(self, row: Stored) -> None:
        try:
            if row.request is None:
                raise InvalidRequestError("no request was stored")
            creq = parse_create(row.request)
            principal = self._principal(row.key_id)
        except ModelyardError as exc:
            self._spawn_fail(row, exc.message)
            return

        async def run() -> None:
            try:
                history = await self._history(creq, principal)
            except ModelyardError as exc:
                await self._end(row.id, failed(row.body, error_code(exc.status), exc.message), None)
                return
            await self._background(row.id, creq, history, principal, row.body)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks[row.id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(row.id, None))

    def _spawn_fail(self, row: Stored, message: str) -> None:
        async def run() -> None:
            await self._end(row.id, failed(row.body, "server_error", f"cannot resume: {message}"), None)

        asyncio.get_running_loop().create_task(run())

    def _principal(self, key_id: str | None) -> Any:
        if key_id is None:
            return None
        if key_id == "master":
            return MASTER
        key = self._ring.get(key_id) if self._ring is not None else None
        now = self._now()
        if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= now):
            raise InvalidRequestError(f"the API key {key_id!r} that created it is no longer valid")
        return Principal(key, admin=False)

    async def _background(self, resp_id: str, creq: CreateRequest, history: list[dict[str, Any]], principal: Any,
                          resp: dict[str, Any]) -> None:
        assert self._store is not None
        async with self._slots:
            running = {**resp, "status": "in_progress"}
            if not await self._store.finish(resp_id, status="in_progress", body=running, context=None,
                                            now_us=self._now_us()):
                return  # cancelled (or deleted) while queued
            t0 = self._clock()
            request_id = new_id("req")
            cap: internal.Captured | None = None
            status = 500
            try:
                cap = await internal.unary(self._proxy, _CHAT, creq.model, chat_body(creq, history, stream=False),
                                           principal=principal, t0=t0, request_id=request_id, endpoint="responses")
                status = cap.status
                completion = cap.json()
                if cap.status == 200 and isinstance(completion, dict):
                    final = response_object(dict(running), completion,
                                            self._now_s())
                else:
                    err = completion.get("error") if isinstance(completion, dict) else None
                    msg = err.get("message") if isinstance(err, dict) else f"the model answered {cap.status}"
                    final = failed(dict(running), error_code(cap.status), str(msg))
            except asyncio.CancelledError:
                status = 499
                raise
            except ModelyardError as exc:
                status = exc.status
                final = failed(dict(running), error_code(exc.status), exc.message)
            finally:
                self._record(request_id, creq.model, status, t0, principal, cap)
            await self._end(resp_id, final, self._context(creq, history, final))

    async def _end(self, resp_id: str, final: dict[str, Any], context: list[dict[str, Any]] | None) -> None:
        assert self._store is not None
        try:
            await self._store.finish(resp_id, status=final["status"], body=final, context=context,
                                     now_us=self._now_us())
        except ModelyardError as exc:
            log.error("background response %s finished but could not be stored: %s", resp_id, exc.message)

    def _record(self, request_id: str, model: str, status: int, t0: float, principal: Any,
                cap: internal.Captured | None) -> None:
        inner = cap.request if cap is not None else None
        tally = inner.outcome if inner is not None else None
        self._recorder.record(Finished(
            request_id=request_id, method="POST", path="/v1/responses", endpoint="responses", status=status,
            elapsed_s=self._clock() - t0, model=(inner.model if inner is not None else None) or model,
            key_id=principal.key_id if principal is not None else None,
            team=principal.team if principal is not None else None,
        ), tally.end(status) if tally is not None else None, principal)

    # --- read, delete, cancel -------------------------------------------------------------------
    async def _get(self, resp_id: str, principal: Any) -> Stored:
        if self._store is None:
            raise ResponseNotFoundError(f"No response with id {resp_id!r} (this server stores no responses).",
                                        param="response_id")
        row = await self._store.get(resp_id, _owner(principal), now_us=self._now_us())
        if row is None:
            raise ResponseNotFoundError(f"No response found with id {resp_id!r}.", param="response_id")
        return row

    async def get(self, req: Request, resp_id: str) -> None:
        if req.query().get("stream") in ("true", "1"):
            raise InvalidRequestError("stream: re-streaming a stored response is not supported", param="stream",
                                      code="unsupported_value")
        row = await self._get(resp_id, req.principal)
        await req.respond_json(200, row.body)

    async def input_items(self, req: Request, resp_id: str) -> None:
        row = await self._get(resp_id, req.principal)
        q = req.query()
        items = list(row.input_items or [])
        if q.get("order", "desc") == "desc":
            items.reverse()
        after = q.get("after")
        if after:
            ids = [it.get("id") for it in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        try:
            limit = max(1, min(100, int(q.get("limit", "20"))))
        except ValueError:
            raise InvalidRequestError("limit: expected an integer from 1 to 100", param="limit") from None
        page = items[:limit]
        await req.respond_json(200, {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                     "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    async def delete(self, req: Request, resp_id: str) -> None:
        await self._get(resp_id, req.principal)
        assert self._store is not None
        task = self._tasks.get(resp_id)
        if task is not None:
            task.cancel()
        await self._store.delete(resp_id, _owner(req.principal))
        await req.respond_json(200, {"id": resp_id, "object": "response", "deleted": True})

    async def cancel(self, req: Request, resp_id: str) -> None:
        row = await self._get(resp_id, req.principal)
        assert self._store is not None
        if not row.background:
            raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
        if row.status in ("queued", "in_progress"):
            body = {**row.body, "status": "cancelled"}
            if await self._store.cancel(resp_id, _owner(req.principal), body, now_us=self._now_us()):
                task = self._tasks.get(resp_id)
                if task is not None:
                    task.cancel()
                await req.respond_json(200, body)
                return
            row = await self._get(resp_id, req.principal)  # it finished meanwhile: say how
        await req.respond_json(200, row.body)


def _key_id(principal: Any) -> str | None:
    return principal.key_id if principal is not None else None


def _status_of(err: dict[str, Any]) -> int:
    code = err.get("code")
    return 429 if code in ("rate_limit_exceeded", "queue_full", "budget_exceeded") else 500


def _adopt(req: Request, inner: Request | None) -> None:
    """The inner request's bookkeeping becomes the outer's (the app records it once)."""
    if inner is None:
        return
    req.outcome = inner.outcome
    if inner.model is not None:
        req.model = inner.model
    req.priority = inner.priority


def _adopt_headers(req: Request, inner: Request | None) -> None:
    if inner is None:
        return
    req.extra_headers.extend((k, v) for k, v in inner.extra_headers if k.startswith(_PASS_HEADERS))


def _encode(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)
