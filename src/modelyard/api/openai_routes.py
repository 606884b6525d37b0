"""OpenAI-compatible routes. Thin: parse and validate, hand to the proxy, map the result."""

from __future__ import annotations

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.api.protocol import validate_chat, validate_completion, validate_embedding
from modelyard.errors import ModelNotFoundError


def register(app: ModelyardApp) -> None:
    def services():  # noqa: ANN202 - resolved per request: services exist only after startup
        assert app.services is not None
        return app.services

    async def chat_completions(req: Request) -> None:
        req.endpoint = "chat.completions"
        data, raw = await req.json_object(app.max_body)
        model, stream = validate_chat(data)
        await services().proxy.forward(req, "/chat/completions", model, data, raw, stream=stream)

    async def completions(req: Request) -> None:
        req.endpoint = "completions"
        data, raw = await req.json_object(app.max_body)
        model, stream = validate_completion(data)
        await services().proxy.forward(req, "/completions", model, data, raw, stream=stream)

    async def embeddings(req: Request) -> None:
        req.endpoint = "embeddings"
        data, raw = await req.json_object(app.max_body)
        model = validate_embedding(data)
        await services().proxy.forward(req, "/embeddings", model, data, raw, stream=False)

    async def list_models(req: Request) -> None:
        req.endpoint = "models"
        data = [_model_card(name, group.cfg.owned_by, group.created) for name, group in services().router.public_names()]
        await req.respond_json(200, {"object": "list", "data": data})

    async def get_model(req: Request) -> None:
        req.endpoint = "models"
        name = req.path[len("/v1/models/"):]
        for public, group in services().router.public_names():
            if public == name:
                await req.respond_json(200, _model_card(public, group.cfg.owned_by, group.created))
                return
        raise ModelNotFoundError(f"The model {name!r} does not exist", param="model")

    app.route("/v1/chat/completions", "POST", chat_completions)
    app.route("/v1/completions", "POST", completions)
    app.route("/v1/embeddings", "POST", embeddings)
    app.route("/v1/models", "GET", list_models)
    app.prefix_route("/v1/models/", "GET", get_model)


def _model_card(name: str, owned_by: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
