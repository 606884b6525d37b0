"""OpenAI-compatible routes. Thin: parse and validate, hand to the proxy, map the result."""

from __future__ import annotations

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
import orjson

from modelyard.api.protocol import (
    validate_chat,
    validate_classification,
    validate_completion,
    validate_embedding,
    validate_moderation,
)
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

    async def moderations(req: Request) -> None:
        req.endpoint = "moderations"
        data, raw = await req.json_object(app.max_body)
        had_model = "model" in data
        model = validate_moderation(data, DEFAULT_MODERATION_MODEL)
        if not had_model:
            raw = orjson.dumps(data)
        await services().proxy.forward(req, "/moderations", model, data, raw, stream=False)

    async def classifications(req: Request) -> None:
        req.endpoint = "classifications"
        data, raw = await req.json_object(app.max_body)
        model = validate_classification(data)
        await services().proxy.forward(req, "/classifications", model, data, raw, stream=False)

    async def list_models(req: Request) -> None:
        req.endpoint = "models"
        who = req.principal
        data = [
            _model_card(name, group.cfg.owned_by, group.created)
            for name, group in services().router.public_names()
            if who is None or who.allows(name, group.name)
        ]
        auto = services().proxy.auto
        if auto is not None and (who is None or who.allows(auto.name)):
            data.append(_model_card(auto.name, "modelyard", services().router.created))
        await req.respond_json(200, {"object": "list", "data": data})

    async def get_model(req: Request) -> None:
        req.endpoint = "models"
        name = req.path[len("/v1/models/"):]
        who = req.principal
        for public, group in services().router.public_names():
            if public == name and (who is None or who.allows(public, group.name)):
                await req.respond_json(200, _model_card(public, group.cfg.owned_by, group.created))
                return
        auto = services().proxy.auto
        if auto is not None and name == auto.name and (who is None or who.allows(name)):
            await req.respond_json(200, _model_card(name, "modelyard", services().router.created))
            return
        raise ModelNotFoundError(f"The model {name!r} does not exist", param="model")

    app.route("/v1/chat/completions", "POST", chat_completions)
    app.route("/v1/completions", "POST", completions)
    app.route("/v1/embeddings", "POST", embeddings)
    app.route("/v1/moderations", "POST", moderations)
    app.route("/v1/classifications", "POST", classifications)
    app.route("/v1/models", "GET", list_models)
    app.prefix_route("/v1/models/", "GET", get_model)


# OpenAI's default when a moderation request names no model; configure it as a name or alias.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


def _model_card(name: str, owned_by: str, created: int) -> dict[str, object]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
