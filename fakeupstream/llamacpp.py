"""llama.cpp's own routes (``llama-server``), at the server's root, in their shapes.

``/completion`` and ``/infill`` answer ``content`` with ``tokens_predicted``,
``tokens_evaluated`` and ``timings`` (a stream: one event a token, the counts on the
last); ``/tokenize`` gives a token a word; ``/embeddings`` has no token counts, as
llama-server's own does not. ``n_predict`` sets the reply's length (default 5); the
body key ``"fake_upstream": {"chunk_delay_ms": N}`` slows a stream.

Its OpenAI-compatible routes are the fake's own (``handlers``); the ``cache_n`` option
adds llama-server's ``timings`` (``timings`` here) to their reply, or to a stream's
finishing chunk, as llama-server tells its prompt cache's reuse.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from fakeupstream import records

DEFAULT_PREDICT = 5


def _words(text: Any) -> list[str]:
    return text.split() if isinstance(text, str) else []


def _prompt_tokens(body: dict) -> int:
    parts = [body.get(name) for name in ("prompt", "input_prefix", "input_suffix", "content")]
    return max(1, sum(len(_words(part)) for part in parts))


def _predict(body: dict) -> int:
    value = body.get("n_predict")
    return value if isinstance(value, int) and value >= 0 else DEFAULT_PREDICT


def timings(prompt: int, predicted: int, cache_n: int = 0) -> dict:
    """llama-server's ``timings``: ``cache_n`` prompt tokens reused from its prompt cache,
    ``prompt_n`` the rest (evaluated now), ``predicted_n`` generated."""
    return {"cache_n": cache_n, "prompt_n": max(0, prompt - cache_n), "predicted_n": predicted}


def _final(body: dict, content: str) -> dict:
    prompt, predicted = _prompt_tokens(body), _predict(body)
    return {
        "content": content,
        "stop": True,
        "tokens_predicted": predicted,
        "tokens_evaluated": prompt,
        "timings": timings(prompt, predicted),
    }


async def _read(request: web.Request) -> dict | web.Response:
    raw = await request.read()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        body = None
    records.record(request, body, raw)
    if not isinstance(body, dict):
        return web.json_response({"error": {"code": 400, "message": "Invalid JSON"}}, status=400)
    return body


async def completion(request: web.Request) -> web.StreamResponse:
    body = await _read(request)
    if isinstance(body, web.Response):
        return body
    pieces = [f"tok{i} " for i in range(_predict(body))]
    if body.get("stream") is not True:
        return web.json_response(_final(body, "".join(pieces)))
    delay = (body.get("fake_upstream") or {}).get("chunk_delay_ms", 0) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for piece in pieces:
        await response.write(f"data: {json.dumps({'content': piece, 'stop': False})}\n\n".encode())
        await asyncio.sleep(delay)
    await response.write(f"data: {json.dumps(_final(body, ''))}\n\n".encode())
    await response.write_eof()
    return response


async def tokenize(request: web.Request) -> web.Response:
    body = await _read(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"tokens": list(range(len(_words(body.get("content")))))})


async def detokenize(request: web.Request) -> web.Response:
    body = await _read(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"content": " ".join(f"tok{t}" for t in body.get("tokens") or [])})


async def embeddings(request: web.Request) -> web.Response:
    body = await _read(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response([{"index": 0, "embedding": [[0.25, 0.5, 0.75]]}])


async def echo(request: web.Request) -> web.Response:
    """apply-template, reranking: what was asked, as llama-server would answer it."""
    body = await _read(request)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"route": request.path, "received": body})


async def info(request: web.Request) -> web.Response:
    records.record(request, None, None)
    if request.path == "/metrics":
        return web.Response(text="llamacpp:prompt_tokens_total 0\n", content_type="text/plain")
    if request.path == "/":
        return web.Response(text="<html><body>llama.cpp</body></html>", content_type="text/html")
    return web.json_response({"route": request.path, "query": request.query_string})


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_post("/completion", completion)
    router.add_post("/infill", completion)
    router.add_post("/tokenize", tokenize)
    router.add_post("/detokenize", detokenize)
    router.add_post("/embeddings", embeddings)
    router.add_post("/apply-template", echo)
    router.add_post("/reranking", echo)
    router.add_post("/props", echo)
    for path in ("/", "/props", "/slots", "/metrics", "/health"):
        router.add_get(path, info)
