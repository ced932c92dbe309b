"""The exact response cache: a model's identical requests answered without an upstream call.

Opt-in per model (``AIModel.response_cache_ttl`` seconds; empty or 0: off). The
key is a digest of the tenant (the owner of the link that grants the model: a
user or an organisation, so a reply never crosses tenants), the model, the upstream
path and the request body in canonical form (sorted keys) without the fields that do
not change the reply (``stream``, ``stream_options``, ``user``). A stream may be
answered from a JSON reply and the other way round: a stored reply is a chat or
text completion object (a stream's is assembled from its events), replayed as
SSE for a stream.

Only a successful, complete reply is stored, and an image reply only when it holds
its images (``b64_json``): a ``url`` reply is not, since such URLs may expire before
the cached copy does. A request's ``x-switchboard-cache`` header: ``refresh`` (or
``no-cache``) skips the lookup and the fresh reply replaces the stored one (a failed
one leaves it in place), ``no-store`` skips both lookup and store.

Stored in Redis when REDIS_URL is set (one GET on the pipelined connection;
a SET written without waiting), else in the database (``CachedResponse``): one
thread hop for the lookup, writes queued and written in the background (served
from the queue until then). Either way only requests to a model with caching on
pay anything. An unreachable Redis or database is a miss, never an error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from datetime import timedelta

from django.db import DatabaseError
from django.utils import timezone

from panel import logs
from panel import redis as sb_redis
from panel.db import run_sync
from panel.errors import InvalidRequest

from ..models import CachedResponse
from . import streaming

logger = logging.getLogger(__name__)

HEADER = "x-switchboard-cache"
NO_CACHE, NO_STORE, REFRESH = "no-cache", "no-store", "refresh"
MODES = ("", NO_CACHE, NO_STORE, REFRESH)
# By upstream path: the Anthropic Messages and Responses routes, translated to chat
# completions, share the cache (a reply is stored as the chat completion each translates).
PATHS = frozenset({"chat/completions", "completions", "embeddings", "images/generations"})
# Body fields that do not change the reply.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "modelId"})
REDIS_PREFIX = "sb:rc:"

_pending: dict[str, tuple[dict, int]] = {}  # key -> (reply, ttl): not yet in the database
_writer: asyncio.Task | None = None


def cache_mode(value: str | None) -> str:
    """The request header's value, checked: "", ``refresh``, ``no-cache`` or ``no-store``."""
    mode = (value or "").strip().lower()
    if mode not in MODES:
        raise InvalidRequest(
            f"The {HEADER} header takes '{REFRESH}', '{NO_CACHE}' or '{NO_STORE}'.", param=HEADER
        )
    return mode


def is_cacheable(reply: dict) -> bool:
    """Whether a successful reply may be stored: not one that points at images by URL."""
    data = reply.get("data")
    if not isinstance(data, list):
        return True
    return not any(isinstance(item, dict) and "url" in item for item in data)


def cache_key(*, tenant: str, model_id: int, path: str, body: dict) -> str:
    canonical = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    text = json.dumps(
        [tenant, model_id, path, canonical],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


async def lookup(key: str) -> dict | None:
    """The stored reply for ``key``, or None (also when the store cannot be reached)."""
    if sb_redis.is_configured():
        try:
            data = await sb_redis.connection().execute("GET", REDIS_PREFIX + key)
        except (*sb_redis.UNREACHABLE, sb_redis.RedisError):
            return None
        return _loads(data)
    if (pending := _pending.get(key)) is not None:
        return pending[0]
    try:
        return await run_sync(_select, key)
    except DatabaseError:
        logger.warning("Response cache lookup failed; answering from the upstream", exc_info=True)
        return None


def save(key: str, reply: dict, ttl: int) -> None:
    """Store a reply for ``ttl`` seconds, off the request path (no waiting)."""
    data = json.dumps(reply, separators=(",", ":"))
    if sb_redis.is_configured():
        command = sb_redis.pack_command("SET", REDIS_PREFIX + key, data, "EX", ttl)
        sb_redis.connection().fire(command)
        return
    _pending[key] = (reply, ttl)
    global _writer
    if _writer is None or _writer.done():
        _writer = asyncio.get_running_loop().create_task(
            _write_pending(), context=logs.outside_requests()
        )


async def flush() -> None:
    """Wait until every queued reply is in the database (shutdown, tests)."""
    while _writer is not None and not _writer.done() and _pending:
        await asyncio.shield(_writer)


def is_idle() -> bool:
    return not _pending


def cache_purge() -> int:
    """Delete expired cached replies (database mode); how many went."""
    deleted, _ = CachedResponse.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


def _loads(data) -> dict | None:
    if not data:
        return None
    try:
        reply = json.loads(data)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


# --- The database (in Django's sync thread) ----------------------------------------------


async def _write_pending() -> None:
    while _pending:
        batch = dict(_pending)
        try:
            await run_sync(_upsert, batch)
        except DatabaseError:
            logger.exception("Could not store %d cached replies; dropped", len(batch))
        for key, entry in batch.items():
            if _pending.get(key) is entry:
                del _pending[key]


def _upsert(batch: dict[str, tuple[dict, int]]) -> None:
    now = timezone.now()
    for key, (reply, ttl) in batch.items():
        CachedResponse.objects.update_or_create(
            key=key, defaults={"reply": reply, "expires_at": now + timedelta(seconds=ttl)}
        )


def _select(key: str) -> dict | None:
    row = CachedResponse.objects.filter(key=key, expires_at__gt=timezone.now()).first()
    return row.reply if row is not None and isinstance(row.reply, dict) else None


# --- Streams: a reply assembled from its events, and replayed as events ------------------


def assemble(events: list[bytes], *, chat: bool) -> dict | None:
    """The chat or text completion object a whole stream's events make, or None."""
    reply: dict | None = None
    choices: dict[int, dict] = {}
    for event in events:
        data = event.partition(b"data:")[2].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            return None
        if not isinstance(chunk, dict):
            return None
        if reply is None:
            reply = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
            reply["object"] = "chat.completion" if chat else "text_completion"
        if isinstance(chunk.get("usage"), dict):
            reply["usage"] = chunk["usage"]
        for part in chunk.get("choices") or ():
            if not isinstance(part, dict) or not _merge(choices, part, chat=chat):
                return None
    if reply is None or not choices:
        return None
    reply["choices"] = [_finished(choices[i], chat=chat) for i in sorted(choices)]
    return reply


def _merge(choices: dict[int, dict], part: dict, *, chat: bool) -> bool:
    index = part.get("index", 0)
    if not isinstance(index, int):
        return False
    choice = choices.setdefault(index, {"index": index, "text": "", "tools": {}})
    if part.get("finish_reason"):
        choice["finish_reason"] = part["finish_reason"]
    if not chat:
        choice["text"] += part.get("text") or ""
        return True
    delta = part.get("delta") or {}
    if not isinstance(delta, dict):
        return False
    choice["text"] += delta.get("content") or ""
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            return False
        tool = choice["tools"].setdefault(
            call.get("index", 0), {"id": "", "type": "function", "name": "", "arguments": ""}
        )
        tool["id"] = call.get("id") or tool["id"]
        function = call.get("function") or {}
        tool["name"] += function.get("name") or ""
        tool["arguments"] += function.get("arguments") or ""
    return True


def _finished(choice: dict, *, chat: bool) -> dict:
    finish = choice.get("finish_reason", "stop")
    if not chat:
        return {"index": choice["index"], "text": choice["text"], "finish_reason": finish}
    message: dict = {"role": "assistant", "content": choice["text"] or None}
    if choice["tools"]:
        message["tool_calls"] = [
            {
                "id": t["id"],
                "type": t["type"],
                "function": {"name": t["name"], "arguments": t["arguments"]},
            }
            for _, t in sorted(choice["tools"].items())
        ]
    return {"index": choice["index"], "message": message, "finish_reason": finish}


def replay(reply: dict, *, include_usage: bool) -> list[bytes]:
    """A stored chat or text completion as the SSE events of its stream, ``[DONE]`` last."""
    chat = reply.get("object") == "chat.completion"
    head = {k: reply[k] for k in ("id", "created", "model") if k in reply}
    head["object"] = "chat.completion.chunk" if chat else "text_completion"
    chunks = []
    for choice in reply.get("choices") or ():
        index, finish = choice.get("index", 0), choice.get("finish_reason")
        if chat:
            message = choice.get("message") or {}
            delta: dict = {"role": "assistant", "content": message.get("content") or ""}
            if message.get("tool_calls"):
                delta["tool_calls"] = [
                    {"index": i, **call} for i, call in enumerate(message["tool_calls"])
                ]
            chunks.append({"index": index, "delta": delta, "finish_reason": None})
            chunks.append({"index": index, "delta": {}, "finish_reason": finish})
        else:
            chunks.append({"index": index, "text": choice.get("text") or "", "finish_reason": None})
            chunks.append({"index": index, "text": "", "finish_reason": finish})
    events = [_event({**head, "choices": [c]}) for c in chunks]
    if include_usage and isinstance(reply.get("usage"), dict):
        events.append(_event({**head, "choices": [], "usage": reply["usage"]}))
    events.append(streaming.DONE + b"\n\n")
    return events


def _event(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
