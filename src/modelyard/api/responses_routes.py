"""``/v1/responses`` (OpenAI's Responses API). Thin: parse, hand to ``api.responses``."""

from __future__ import annotations

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.errors import NotFoundError


def register(app: ModelyardApp) -> None:
    def service():  # noqa: ANN202 - resolved per request: services exist only after startup
        assert app.services is not None and app.services.responses is not None
        return app.services.responses

    async def create(req: Request) -> None:
        req.endpoint = "responses"
        data, _raw = await req.json_object(app.max_body)
        await service().create(req, data)

    def _split(req: Request) -> tuple[str, str]:
        rest = req.path[len("/v1/responses/"):]
        resp_id, _, sub = rest.partition("/")
        if not resp_id:
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
        return resp_id, sub

    async def get(req: Request) -> None:
        req.endpoint = "responses"
        resp_id, sub = _split(req)
        if sub == "":
            await service().get(req, resp_id)
        elif sub == "input_items":
            await service().input_items(req, resp_id)
        else:
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")

    async def post(req: Request) -> None:
        req.endpoint = "responses"
        resp_id, sub = _split(req)
        if sub != "cancel":
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
        await service().cancel(req, resp_id)

    async def delete(req: Request) -> None:
        req.endpoint = "responses"
        resp_id, sub = _split(req)
        if sub:
            raise NotFoundError(f"Unknown path {req.path!r}", code="unknown_url")
        await service().delete(req, resp_id)

    app.route("/v1/responses", "POST", create)
    app.prefix_route("/v1/responses/", "GET", get)
    app.prefix_route("/v1/responses/", "POST", post)
    app.prefix_route("/v1/responses/", "DELETE", delete)
