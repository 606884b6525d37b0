"""The Batch API's routes (``/v1/files``, ``/v1/batches``): thin — parse, call ``batch.service``, answer.

OpenAI's shapes (``OpenAIFile``, ``Batch``, the list objects); the operations and every decision
live in ``modelyard/batch/`` (docs/design/batch.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.errors import MethodNotAllowedError, NotFoundError

_FILES = "/v1/files/"
_BATCHES = "/v1/batches/"
_READ_CHUNK = 1 << 20


def register(app: ModelyardApp) -> None:
    def service(req: Request) -> Any:
        s = app.services
        batches = getattr(s, "batches", None)
        if batches is None:
            raise NotFoundError("the Batch API is not enabled on this server (batch.enabled)", code="unknown_url")
        return batches

    async def upload(req: Request) -> None:
        req.endpoint = "files"
        svc = service(req)
        ct = req.header(b"content-type")
        cl = req.header(b"content-length")
        out = await svc.upload(req.principal, ct.decode("latin-1") if ct else None,
                               int(cl) if cl is not None and cl.isdigit() else None, req.chunks())
        await req.respond_json(200, out)

    async def list_files(req: Request) -> None:
        req.endpoint = "files"
        await req.respond_json(200, await service(req).list_files(req.principal, req.query()))

    async def file_get(req: Request) -> None:
        req.endpoint = "files"
        svc = service(req)
        rest = req.path[len(_FILES):]
        if rest.endswith("/content"):
            f = await svc.file(req.principal, rest[: -len("/content")])
            await _send_file(req, svc.blobs.path(f.id), f.bytes)
            return
        if "/" in rest:
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
        from modelyard.batch.objects import file_object

        await req.respond_json(200, file_object(await svc.file(req.principal, rest)))

    async def file_delete(req: Request) -> None:
        req.endpoint = "files"
        rest = req.path[len(_FILES):]
        if "/" in rest:
            raise MethodNotAllowedError(f"method DELETE is not allowed on {req.path}", headers={"allow": "GET"})
        await req.respond_json(200, await service(req).delete_file(req.principal, rest))

    async def create_batch(req: Request) -> None:
        req.endpoint = "batches"
        data, _ = await req.json_object(app.max_body)
        await req.respond_json(200, await service(req).create_batch(req.principal, data))

    async def list_batches(req: Request) -> None:
        req.endpoint = "batches"
        await req.respond_json(200, await service(req).list_batches(req.principal, req.query()))

    async def batch_get(req: Request) -> None:
        req.endpoint = "batches"
        rest = req.path[len(_BATCHES):]
        if "/" in rest:
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
        await req.respond_json(200, await service(req).batch(req.principal, rest))

    async def batch_post(req: Request) -> None:
        req.endpoint = "batches"
        rest = req.path[len(_BATCHES):]
        if not rest.endswith("/cancel") or rest.count("/") != 1:
            raise MethodNotAllowedError(f"method POST is not allowed on {req.path}", headers={"allow": "GET"})
        await req.respond_json(200, await service(req).cancel(req.principal, rest[: -len("/cancel")]))

    app.route("/v1/files", "POST", upload)
    app.route("/v1/files", "GET", list_files)
    app.prefix_route(_FILES, "GET", file_get)
    app.prefix_route(_FILES, "DELETE", file_delete)
    app.route("/v1/batches", "POST", create_batch)
    app.route("/v1/batches", "GET", list_batches)
    app.prefix_route(_BATCHES, "GET", batch_get)
    app.prefix_route(_BATCHES, "POST", batch_post)


async def _send_file(req: Request, path: Any, size: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        fh = await loop.run_in_executor(None, open, path, "rb")
    except OSError:
        raise NotFoundError("the file's content is gone from this server's data directory", param="file_id") from None
    try:
        await req.start_stream(200, b"application/octet-stream", headers=[(b"content-length", str(size).encode())])
        while True:
            chunk = await loop.run_in_executor(None, fh.read, _READ_CHUNK)
            if not chunk:
                break
            await req.stream_chunk(chunk)
        await req.end_stream()
    finally:
        fh.close()
