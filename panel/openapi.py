"""drf-spectacular hooks of the project: the error envelope on every operation, /api/status.

The pieces here (the envelope schema, ``json_content``, ``operation`` and
``add_paths``) also serve the apps that describe routes the generator cannot
see, such as the gateway's (``ai.api.openapi``).
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
BEARER = [{"bearerAuth": []}, {"apiKeyAuth": []}, {"cookieAuth": []}]


def json_content(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def operation(summary: str, tag: str, *, body: str | None = None, params=(), ok="OK") -> dict:
    """A hand-described operation of a route the generator cannot see, with every error."""
    described = {
        "summary": summary,
        "tags": [tag],
        "security": BEARER,
        "parameters": [
            {"name": name, "in": place, "required": place == "path", "schema": {"type": kind}}
            for name, place, kind in params
        ],
        "responses": {"200": json_content(ANY_OBJECT, ok)},
    }
    if body:
        described["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    for status, text in ERROR_STATUSES.items():
        described["responses"][status] = json_content(ERROR, text)
    described["responses"]["429"] = json_content(ERROR, "A limit of the link or key was reached.")
    described["responses"]["503"] = json_content(
        ANY_OBJECT, "AI disabled or no upstream available."
    )
    return described


def add_paths(result: dict, paths: dict[str, dict]) -> None:
    """Adds hand-described path items to the document, each operation with an id."""
    for path, path_item in paths.items():
        for method, described in path_item.items():
            slug = "".join(c if c.isalnum() else "_" for c in path.strip("/"))
            described["operationId"] = f"{slug}_{method}".replace("__", "_")
        result["paths"][path] = path_item


def postprocess(result, generator, request, public):
    """Adds the error envelope to every generated operation, and /api/status."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
    for path_item in result.get("paths", {}).values():
        for described in path_item.values():
            responses = described.setdefault("responses", {})
            for status, text in ERROR_STATUSES.items():
                responses.setdefault(status, json_content(ERROR, text))
    status = operation("Gateway status (no auth)", "Health")
    status.pop("security")
    add_paths(result, {"/api/status": {"get": status}})
    components.setdefault("securitySchemes", {}).setdefault(
        "cookieAuth", {"type": "apiKey", "in": "cookie", "name": "sessionid"}
    )
    return result
