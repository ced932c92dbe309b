"""The panel's own AI routes (seed 000): chat, studio, model discovery."""

from __future__ import annotations

from accounts.models import TIER_RANK, Permission, Tier
from panel.errors import ErrorCode, InvalidRequest, ModelNotFound, PermissionDenied, UpstreamError

from ..gateway import pipeline
from ..gateway.resolve import caller_get
from ..selectors import models_in_catalog, registry_get, usable_links
from .base import ai_route, json_body, json_response

FALLBACK_REPLY = (
    "AI chat is not set up for your account yet. Ask an administrator to assign you a model."
)


def _messages(body: dict) -> list[dict]:
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidRequest(
            "'message' is required and must be a non-empty string.", param="message"
        )
    history = body.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, dict)
        and turn.get("role") in ("user", "assistant", "system")
        and isinstance(turn.get("content"), str)
        for turn in history
    ):
        raise InvalidRequest("'history' must be a list of {role, content} turns.", param="history")
    system = body.get("systemPrompt")
    if system is not None and not isinstance(system, str):
        raise InvalidRequest("'systemPrompt' must be a string.", param="systemPrompt")
    prefix = [{"role": "system", "content": system}] if system else []
    turns = [{"role": t["role"], "content": t["content"]} for t in history]
    return [*prefix, *turns, {"role": "user", "content": message}]


async def _reply(identity, request_id, body: dict, extra: dict) -> dict:
    chat = {"messages": _messages(body), **extra}
    if body.get("modelId") is not None:
        chat["modelId"] = body["modelId"]
    try:
        call = await pipeline.prepare(
            identity=identity, route=pipeline.CHAT_ROUTE, body=chat, request_id=request_id
        )
    except ModelNotFound:
        if "modelId" in chat:
            raise
        return {"reply": FALLBACK_REPLY}
    reply = await pipeline.call_json(call)
    payload = reply.payload or {}
    content = _reply_content(payload)
    if reply.status != 200 or content is None:
        raise UpstreamError(f"The model could not answer (HTTP {reply.status}).")
    return {"reply": content, "model": payload.get("model"), "usage": payload.get("usage")}


def _reply_content(payload: dict) -> str | None:
    """The reply text of a chat completion, or None when the answer has none."""
    try:
        content = payload["choices"][0]["message"].get("content") or ""
    except (LookupError, TypeError, AttributeError):
        return None
    return content if isinstance(content, str) else None


@ai_route(methods={"POST": Permission.PROXY})
async def chat(request, identity, request_id):
    return json_response(await _reply(identity, request_id, json_body(request), {}))


@ai_route(methods={"POST": Permission.PROXY})
async def studio(request, identity, request_id):
    user = await caller_get(identity)
    if user.best_tier_rank < TIER_RANK[Tier.PAID]:
        raise PermissionDenied(
            "AI Studio needs the paid tier or higher.", code=ErrorCode.TIER_REQUIRED
        )
    body = json_body(request)
    extra = {}
    max_tokens, temperature = body.get("maxTokens"), body.get("temperature")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequest("'maxTokens' must be a positive integer.", param="maxTokens")
        extra["max_tokens"] = max_tokens
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InvalidRequest("'temperature' must be a number.", param="temperature")
        if not 0 <= temperature <= 2:
            raise InvalidRequest("'temperature' must be between 0 and 2.", param="temperature")
        extra["temperature"] = temperature
    return json_response(await _reply(identity, request_id, body, extra))


def _model_summary(model) -> dict:
    return {
        "id": model.id,
        "name": model.display_name,
        "modelName": model.name,
        "kind": model.kind,
        "config": model.config,
        "tags": list(model.tags),
    }


@ai_route(methods={"GET": Permission.READ})
async def models(request, identity, request_id):
    user = await caller_get(identity)
    visible = models_in_catalog(await registry_get(), user, identity.key)
    return json_response([_model_summary(m) for m in visible])


@ai_route(methods={"GET": Permission.READ})
async def my_models(request, identity, request_id):
    user = await caller_get(identity)
    registry = await registry_get()
    items = []
    for link in usable_links(user, identity.key):
        model = registry.by_id.get(link.model_id)
        if model is None:
            continue
        items.append(
            {
                "linkId": link.id,
                "owner": "user" if link.user_id else "organisation",
                "organisationId": link.organisation_id,
                "isDefault": link.is_default,
                "expiresAt": link.expires_at.isoformat() if link.expires_at else None,
                "model": _model_summary(model),
                "limits": {
                    k: (str(v) if k == "cost_per_month" and v is not None else v)
                    for k, v in link.limits.items()
                },
            }
        )
    return json_response(items)
