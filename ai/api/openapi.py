"""The gateway's routes in the OpenAPI document (/api/schema/), described by hand.

The OpenAI, botserver and panel routes are plain async Django views served
without middleware (``ai.api.fastpath``); they are not DRF views, so the
generator cannot see them. This drf-spectacular hook describes them instead,
after the project's own (``panel.openapi``), without touching them.
"""

from __future__ import annotations

from panel.openapi import ANY_OBJECT, ERROR, add_paths, json_content, operation

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
    "InferenceRequest": {
        "type": "object",
        "description": (
            "A chat completion request whose `input` (a text, or a list of texts and content"
            " parts) may stand for `messages`: it becomes one user message. Not both."
        ),
        "properties": {
            "model": {"type": "string", "description": "Default: the caller's default model."},
            "modelId": {"type": "integer", "description": "A model by id."},
            "messages": {"type": "array", "items": ANY_OBJECT},
            "input": {"oneOf": [{"type": "string"}, {"type": "array", "minItems": 1}]},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer"},
        },
        "additionalProperties": True,
    },
    "MessagesRequest": {
        "type": "object",
        "description": (
            "Anthropic's Messages request (translated to a chat completion); `stream: true`"
            " answers with Anthropic's events. Errors use Anthropic's shape"
            " `{type: error, error: {type, message}}`."
        ),
        "properties": {
            "model": {"type": "string", "description": "Default: the caller's default model."},
            "max_tokens": {"type": "integer", "minimum": 1},
            "system": {},
            "messages": {"type": "array", "items": ANY_OBJECT},
            "tools": {"type": "array", "items": ANY_OBJECT},
            "tool_choice": ANY_OBJECT,
            "stream": {"type": "boolean"},
        },
        "required": ["max_tokens", "messages"],
        "additionalProperties": True,
    },
    "TrainingStartRequest": {
        "type": "object",
        "description": "Seed 004's training job: a base model the caller may use and a dataset.",
        "properties": {
            "base_model": {"type": "string"},
            "dataset": {"type": "string", "description": "A dataset's file-… id or name."},
            "epochs": {"type": "integer", "minimum": 1, "maximum": 100},
            "hyperparameters": ANY_OBJECT,
            "trainer": {"type": "string"},
            "suffix": {"type": "string", "maxLength": 64},
            "organisation": {"type": "string", "description": "An organisation's slug."},
            "validation_dataset": {"type": "string"},
        },
        "required": ["base_model", "dataset"],
        "additionalProperties": False,
    },
    "FineTuningJobRequest": {
        "type": "object",
        "description": "OpenAI's fine-tuning job request (supervised).",
        "properties": {
            "model": {"type": "string"},
            "training_file": {"type": "string"},
            "validation_file": {"type": "string"},
            "hyperparameters": ANY_OBJECT,
            "suffix": {"type": "string", "maxLength": 64},
            "seed": {"type": "integer", "minimum": 0},
            "method": ANY_OBJECT,
        },
        "required": ["model", "training_file"],
        "additionalProperties": True,
    },
    "CountTokensRequest": {
        "type": "object",
        "description": "A Messages request without max_tokens; answers `{input_tokens}`.",
        "properties": {"model": {"type": "string"}, "messages": {"type": "array"}},
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

OPENAI_PREFIXES = ("/v1", "/api/v1", "/api/ai/openai/v1", "/api/ai/openai")
MODEL_PARAM = [("model", "path", "string")]


def gateway_paths() -> dict[str, dict]:
    """The fast-path routes (see ``ai.api.urls`` and ``panel.urls``)."""
    paths: dict[str, dict] = {}
    for prefix in OPENAI_PREFIXES:
        tag = "OpenAI"
        paths.update(
            {
                f"{prefix}/chat/completions": {
                    "post": operation("Create a chat completion", tag, body="ChatCompletionRequest")
                },
                f"{prefix}/completions": {
                    "post": operation("Create a completion", tag, body="CompletionRequest")
                },
                f"{prefix}/embeddings": {
                    "post": operation("Create embeddings", tag, body="EmbeddingRequest")
                },
                f"{prefix}/images/generations": {
                    "post": operation("Generate images", tag, body="ImageGenerationRequest")
                },
                f"{prefix}/models": {"get": operation("Models the caller may use", tag)},
                f"{prefix}/models/{{model}}": {
                    "get": operation("One model", tag, params=MODEL_PARAM)
                },
            }
        )
    for prefix in (*OPENAI_PREFIXES, "/api/ai/anthropic/v1"):
        tag = "Anthropic"
        paths[f"{prefix}/messages"] = {
            "post": operation("Create a message", tag, body="MessagesRequest")
        }
        paths[f"{prefix}/messages/count_tokens"] = {
            "post": operation("Count a message's tokens", tag, body="CountTokensRequest")
        }
    for name, body in (
        ("chat/completions", "ChatCompletionRequest"),
        ("inference", "InferenceRequest"),
        ("embeddings", "EmbeddingRequest"),
    ):
        paths[f"/api/v1/ai/{name}"] = {
            "post": operation(f"botserver: {name}", "botserver", body=body)
        }
    panel = "Panel"
    paths.update(
        {
            "/api/ai/chat": {"post": operation("Chat", panel, body="PanelChatRequest")},
            "/api/ai/studio": {
                "post": operation("Studio (paid tier)", panel, body="PanelChatRequest")
            },
            "/api/ai/models": {"get": operation("Models for the panel", panel)},
            "/api/ai/my-models": {"get": operation("The caller's models", panel)},
            "/api/ai/usage": {
                "get": operation(
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
                "get": operation(
                    "Deployment health", "Health", params=[("model_id", "path", "integer")]
                )
            },
            "/api/deployments/{model_id}/upstreams/{upstream_id}/health": {
                "get": operation(
                    "Upstream health",
                    "Health",
                    params=[("model_id", "path", "integer"), ("upstream_id", "path", "integer")],
                )
            },
        }
    )
    paths.update(llama_server_paths())
    paths.update(training_paths())
    return paths


JOB_PARAM = [("job_id", "path", "string")]
PAGE_PARAMS = [("after", "query", "string"), ("limit", "query", "integer")]


def training_paths() -> dict[str, dict]:
    """Seed 004's training routes and OpenAI's fine-tuning jobs (``ai.api.training``,
    ``ai.api.fine_tuning``); both answer with the job, 409 for a cancel of a finished one."""

    def op(summary: str, tag: str, *, body=None, params=(), accepted=False, cancel=False):
        described = operation(summary, tag, body=body, params=params)
        if accepted:
            described["responses"]["202"] = described["responses"].pop("200")
        if cancel:
            described["responses"]["409"] = json_content(ERROR, "The job has already finished.")
        return described

    paths = {
        "/api/v1/ai/training": {"get": op("List training jobs", "Training", params=PAGE_PARAMS)},
        "/api/v1/ai/training/start": {
            "post": op(
                "Start a training job", "Training", body="TrainingStartRequest", accepted=True
            )
        },
        "/api/v1/ai/training/{job_id}/status": {
            "get": op("Get training job status", "Training", params=JOB_PARAM)
        },
        "/api/v1/ai/training/{job_id}/cancel": {
            "post": op(
                "Cancel training job", "Training", params=JOB_PARAM, accepted=True, cancel=True
            )
        },
    }
    for prefix in OPENAI_PREFIXES:
        jobs = f"{prefix}/fine_tuning/jobs"
        paths[jobs] = {
            "get": op("List fine-tuning jobs", "OpenAI", params=PAGE_PARAMS),
            "post": op("Create a fine-tuning job", "OpenAI", body="FineTuningJobRequest"),
        }
        paths[f"{jobs}/{{job_id}}"] = {
            "get": op("Retrieve a fine-tuning job", "OpenAI", params=JOB_PARAM)
        }
        paths[f"{jobs}/{{job_id}}/cancel"] = {
            "post": op("Cancel a fine-tuning job", "OpenAI", params=JOB_PARAM, cancel=True)
        }
        paths[f"{jobs}/{{job_id}}/events"] = {
            "get": op("List a job's events", "OpenAI", params=[*JOB_PARAM, *PAGE_PARAMS])
        }
    return paths


def llama_server_paths() -> dict[str, dict]:
    """GET /api/v1/backends/llama-cpp/{help,version,devices}: the program's own text."""
    paths = {}
    for question, summary in (
        ("help", "Get help for llama server"),
        ("version", "Get version of llama server"),
        ("devices", "List available devices for llama server"),
    ):
        described = operation(summary, "Backends")
        described["responses"]["200"] = {
            "description": f"What `llama-server` of this host prints ({question}).",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
        described["responses"]["503"] = json_content(
            ERROR, "llama-server is not installed here, failed or took too long."
        )
        described["responses"].pop("429")
        paths[f"/api/v1/backends/llama-cpp/{question}"] = {"get": described}
    return paths


def postprocess(result, generator, request, public):
    """Adds the request schemas and the hand-described gateway routes."""
    result.setdefault("components", {}).setdefault("schemas", {}).update(REQUEST_SCHEMAS)
    add_paths(result, gateway_paths())
    return result
