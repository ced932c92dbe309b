"""drf-spectacular hooks: the error envelope on every management operation, and the
gateway's fast-path routes described by hand.

The OpenAI, botserver and panel routes are plain async Django views served
without middleware (``panel.fastpath``); they are not DRF views, so the
generator cannot see them. They are described here instead, without touching
them.
"""

from __future__ import annotations

ERROR = {"$ref": "#/components/schemas/ErrorResponse"}

ERROR_SCHEMA = {
    "type": "object",
    "description": "OpenAI's error envelope; `param` names the failing field.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

ERROR_STATUSES = {
    "400": "Invalid request; `param` names the field.",
    "401": "Missing or wrong API key.",
    "403": "The key or the caller's role does not allow this.",
    "404": "Not found, or not visible to the caller.",
}

ANY_OBJECT = {"type": "object", "additionalProperties": True}
BEARER = [{"bearerAuth": []}, {"cookieAuth": []}]


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, tag: str, *, body: str | None = None, params=(), ok="OK") -> dict:
    operation = {
        "summary": summary,
        "tags": [tag],
        "security": BEARER,
        "parameters": [
            {"name": name, "in": place, "required": place == "path", "schema": {"type": kind}}
            for name, place, kind in params
        ],
        "responses": {"200": _json(ANY_OBJECT, ok)},
    }
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    for status, text in ERROR_STATUSES.items():
        operation["responses"][status] = _json(ERROR, text)
    operation["responses"]["429"] = _json(ERROR, "A limit of the link or key was reached.")
    operation["responses"]["503"] = _json(ANY_OBJECT, "AI disabled or no upstream available.")
    return operation


REQUEST_SCHEMAS = {
    "ChatCompletionRequest": {
        "type": "object",
        "description": "OpenAI's chat completion request; `stream: true` answers with SSE.",
        "properties": {
            "model": {"type": "string", "description": "Default: the caller's default model."},
            "modelId": {"type": "integer", "description": "A model by id."},
            "messages": {"type": "array", "items": ANY_OBJECT},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer"},
            "temperature": {"type": "number"},
        },
        "required": ["messages"],
        "additionalProperties": True,
    },
    "CompletionRequest": {
        "type": "object",
        "properties": {"model": {"type": "string"}, "prompt": {}, "stream": {"type": "boolean"}},
        "required": ["prompt"],
        "additionalProperties": True,
    },
    "EmbeddingRequest": {
        "type": "object",
        "properties": {"model": {"type": "string"}, "input": {}},
        "required": ["input"],
        "additionalProperties": True,
    },
    "ImageGenerationRequest": {
        "type": "object",
        "properties": {"model": {"type": "string"}, "prompt": {"type": "string"}},
        "required": ["prompt"],
        "additionalProperties": True,
    },
    "PanelChatRequest": {
        "type": "object",
        "description": "A message (or messages) for the panel's chat; `modelId` picks a model.",
        "additionalProperties": True,
    },
}

OPENAI_PREFIXES = ("/v1", "/api/v1", "/api/ai/openai/v1")
MODEL_PARAM = [("model", "path", "string")]


def gateway_paths() -> dict[str, dict]:
    """The fast-path routes (see ``ai.api.urls`` and ``panel.urls``), described by hand."""
    paths: dict[str, dict] = {}
    for prefix in OPENAI_PREFIXES:
        tag = "OpenAI"
        paths.update(
            {
                f"{prefix}/chat/completions": {
                    "post": _operation(
                        "Create a chat completion", tag, body="ChatCompletionRequest"
                    )
                },
                f"{prefix}/completions": {
                    "post": _operation("Create a completion", tag, body="CompletionRequest")
                },
                f"{prefix}/embeddings": {
                    "post": _operation("Create embeddings", tag, body="EmbeddingRequest")
                },
                f"{prefix}/images/generations": {
                    "post": _operation("Generate images", tag, body="ImageGenerationRequest")
                },
                f"{prefix}/models": {"get": _operation("Models the caller may use", tag)},
                f"{prefix}/models/{{model}}": {
                    "get": _operation("One model", tag, params=MODEL_PARAM)
                },
            }
        )
    for name, body in (
        ("chat/completions", "ChatCompletionRequest"),
        ("inference", "ChatCompletionRequest"),
        ("embeddings", "EmbeddingRequest"),
    ):
        paths[f"/api/v1/ai/{name}"] = {
            "post": _operation(f"botserver: {name}", "botserver", body=body)
        }
    panel = "Panel"
    paths.update(
        {
            "/api/ai/chat": {"post": _operation("Chat", panel, body="PanelChatRequest")},
            "/api/ai/studio": {
                "post": _operation("Studio (paid tier)", panel, body="PanelChatRequest")
            },
            "/api/ai/models": {"get": _operation("Models for the panel", panel)},
            "/api/ai/my-models": {"get": _operation("The caller's models", panel)},
            "/api/ai/usage": {
                "get": _operation(
                    "Usage report",
                    panel,
                    params=[
                        ("from", "query", "string"),
                        ("to", "query", "string"),
                        ("group_by", "query", "string"),
                    ],
                )
            },
            "/api/deployments/{model_id}/health": {
                "get": _operation(
                    "Deployment health", "Health", params=[("model_id", "path", "integer")]
                )
            },
            "/api/deployments/{model_id}/upstreams/{upstream_id}/health": {
                "get": _operation(
                    "Upstream health",
                    "Health",
                    params=[("model_id", "path", "integer"), ("upstream_id", "path", "integer")],
                )
            },
        }
    )
    status = _operation("Gateway status (no auth)", "Health")
    status.pop("security")
    paths["/api/status"] = {"get": status}
    return paths


def postprocess(result, generator, request, public):
    """Adds the error envelope to management operations, then the hand-described routes."""
    components = result.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    schemas.update(REQUEST_SCHEMAS)
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status, text in ERROR_STATUSES.items():
                responses.setdefault(status, _json(ERROR, text))
    for path, path_item in gateway_paths().items():
        for method, operation in path_item.items():
            slug = "".join(c if c.isalnum() else "_" for c in path.strip("/"))
            operation["operationId"] = f"{slug}_{method}".replace("__", "_")
        result["paths"][path] = path_item
    components.setdefault("securitySchemes", {}).setdefault(
        "cookieAuth", {"type": "apiKey", "in": "cookie", "name": "sessionid"}
    )
    return result
