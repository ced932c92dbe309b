"""The chat page's WebSocket: conversations and replies streamed token by token.

Client messages: list, open, new (a blank draft), rename, delete, send, stop, regenerate
(answer the last user message again) and edit (replace a user message's text, drop what
followed it, answer it again).
Server messages: conversations, conversation, started, status (the model's instance is
starting: words to show until the first delta), delta, done, error.
Replies go through the same gateway functions as the REST routes.
"""

from __future__ import annotations

import asyncio
import contextlib

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext

from panel.errors import (
    ApiError,
    ErrorCode,
    FeatureDisabled,
    ModelStarting,
    NotFound,
    UpstreamRateLimited,
)
from panel.parsers import json_loads

from . import services
from .models import MessageRole, MessageStatus
from .selectors import ai_enabled_get

CLOSE_UNAUTHENTICATED = 4401
# Shown while the model's instance starts on demand (seconds to minutes).
STARTING = translation.gettext_noop("Starting the model…")
UNAVAILABLE = (
    ErrorCode.MODEL_NOT_AVAILABLE,
    ErrorCode.UPSTREAM_ERROR,
    ErrorCode.SERVICE_UNAVAILABLE,
    ErrorCode.AGENT_UNAVAILABLE,
    ErrorCode.INSTANCE_NOT_RUNNING,
)


def plain_words(exc: Exception) -> str:
    """An error as an end user should read it, naming its real cause.

    The caller's own limits and balance are theirs to wait out or top up; a model that is
    starting or whose upstreams fail or rate-limit us is the service's problem, not theirs.
    """
    if isinstance(exc, FeatureDisabled):
        return gettext("AI chat is turned off by the administrator.")
    code = getattr(exc, "code", "")
    retry = getattr(exc, "headers", {}).get("Retry-After")
    if isinstance(exc, UpstreamRateLimited):
        return gettext(
            "The model is unavailable right now: its provider is busy. Please try again soon."
        )
    if isinstance(exc, ModelStarting):
        return gettext(
            "The model is starting. It will answer in a minute or two; please send again."
        )
    if code in (ErrorCode.RATE_LIMIT_EXCEEDED, ErrorCode.QUOTA_EXCEEDED):
        words = gettext("You have reached your usage limit for this model.")
        if retry:
            words += " " + gettext("It resets in %(seconds)s seconds.") % {"seconds": retry}
        return words
    if code == ErrorCode.INSUFFICIENT_QUOTA:
        return gettext(
            "Your balance is too low for this request. Ask an administrator to top it up."
        )
    if code in UNAVAILABLE:
        return gettext("The model is unavailable right now. Please try again in a moment.")
    if code in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.INVALID_MODEL_TYPE):
        return gettext("This model is not available to you.")
    return getattr(exc, "message", None) or gettext("Something went wrong.")


def scope_language(scope) -> str:
    """The language the chat page was shown in: the selector's cookie, else Accept-Language.

    LocaleMiddleware does not run for WebSockets, so the consumer reads the same two sources.
    """
    headers = dict(scope.get("headers") or [])
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == settings.LANGUAGE_COOKIE_NAME and translation.check_for_language(value):
            return translation.get_supported_language_variant(value)
    accept = headers.get(b"accept-language", b"").decode("latin-1")
    for code, _q in translation.trans_real.parse_accept_lang_header(accept):
        if code == "*":
            break
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # A chat socket talks only to its own page: it joins no group and gets nothing
    # through the channel layer. With one, every socket would also sit on a Redis
    # BZPOPMIN in production, and die when Redis is away for a moment.
    channel_layer_alias = None

    async def connect(self):
        # Every message this consumer words (refusals, "starting") in the page's language.
        self.language = scope_language(self.scope)
        translation.activate(self.language)
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user_id = user.pk
        self.reply_task: asyncio.Task | None = None
        await self.accept()

    async def disconnect(self, code):
        task = getattr(self, "reply_task", None)
        if task and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        translation.activate(getattr(self, "language", settings.LANGUAGE_CODE))
        # Parsed here, not by Channels: a frame that is not a JSON object (or is
        # nested past the parser's depth limit) gets an error, never a crash.
        try:
            content = json_loads(text_data or bytes_data or b"")
        except ValueError:
            content = None
        if not isinstance(content, dict):
            await self.send_json({"type": "error", "message": "Unknown request."})
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs):
        handler = getattr(self, f"on_{content.get('type')}", None)
        if handler is None:
            await self.send_json({"type": "error", "message": "Unknown request."})
            return
        try:
            await handler(content)
        except (ApiError, FeatureDisabled) as exc:
            await self.send_json({"type": "error", "message": plain_words(exc)})

    async def on_list(self, content):
        conversations = await database_sync_to_async(services.conversations_for_user)(
            user_id=self.user_id
        )
        await self.send_json({"type": "conversations", "conversations": conversations})

    async def on_open(self, content):
        conversation, messages = await database_sync_to_async(services.conversation_messages)(
            user_id=self.user_id, conversation_id=content.get("conversation")
        )
        await self.send_json(
            {
                "type": "conversation",
                "id": conversation.id,
                "title": conversation.title,
                "model_id": conversation.model_id,
                "system_prompt": conversation.system_prompt,
                "messages": messages,
            }
        )

    async def on_rename(self, content):
        await database_sync_to_async(services.conversation_rename)(
            user_id=self.user_id,
            conversation_id=content.get("conversation"),
            title=str(content.get("title", "")),
        )
        await self.on_list(content)

    async def on_delete(self, content):
        await database_sync_to_async(services.conversation_delete)(
            user_id=self.user_id, conversation_id=content.get("conversation")
        )
        await self.on_list(content)

    async def on_stop(self, content):
        if self.reply_task and not self.reply_task.done():
            self.reply_task.cancel()

    async def on_send(self, content):
        text = str(content.get("content", "")).strip()
        if not text:
            raise NotFound("Type a message first.")
        if not await self._may_reply():
            return
        model_id = content.get("model_id")
        model_id = int(model_id) if str(model_id).isdigit() else None
        conversation = await database_sync_to_async(self._conversation_for)(content, model_id, text)
        message = await database_sync_to_async(services.message_add)(
            conversation=conversation, role=MessageRole.USER, content=text
        )
        self.reply_task = asyncio.create_task(self._reply(conversation, model_id, message.id))

    async def on_regenerate(self, content):
        await self.on_edit({**content, "message": None, "content": None})

    async def on_edit(self, content):
        text = content.get("content")
        text = None if text is None else str(text).strip()
        if text == "":
            raise NotFound("Type a message first.")
        if not await self._may_reply():
            return
        model_id = content.get("model_id")
        model_id = int(model_id) if str(model_id).isdigit() else None
        if not content.get("conversation"):
            raise NotFound("No such conversation.", code=ErrorCode.CONVERSATION_NOT_FOUND)
        conversation = await database_sync_to_async(self._conversation_for)(content, model_id, "")
        message = await database_sync_to_async(services.conversation_rewind)(
            conversation=conversation, message_id=content.get("message"), content=text
        )
        self.reply_task = asyncio.create_task(self._reply(conversation, model_id, message.id))

    async def _may_reply(self) -> bool:
        """One reply at a time, and only while the feature is on."""
        if self.reply_task and not self.reply_task.done():
            await self.send_json({"type": "error", "message": "Wait for the reply, or stop it."})
            return False
        if not await ai_enabled_get():
            raise FeatureDisabled()
        return True

    def _conversation_for(self, content, model_id, text):
        if content.get("conversation"):
            conversation = services.conversation_get_for_user(
                user_id=self.user_id, conversation_id=content["conversation"]
            )
            if model_id and conversation.model_id != model_id:
                conversation.model_id = model_id
                conversation.save(update_fields=["model", "updated_at"])
            return conversation
        return services.conversation_create(
            user_id=self.user_id,
            model_id=model_id,
            system_prompt=str(content.get("system_prompt", "")),
            first_message=text,
        )

    async def _say_starting(self):
        await self.send_json({"type": "status", "status": "starting", "message": gettext(STARTING)})

    async def _reply(self, conversation, model_id, user_message_id):
        body = await database_sync_to_async(services.chat_body)(
            conversation=conversation, model_id=model_id
        )
        await self.send_json(
            {"type": "started", "conversation": conversation.id, "user_message": user_message_id}
        )
        parts: list[str] = []
        status, error, headers = MessageStatus.COMPLETE, "", {}
        try:
            headers, pieces = await services.chat_stream(
                user_id=self.user_id, body=body, on_starting=self._say_starting
            )
            async for piece in pieces:
                parts.append(piece)
                await self.send_json({"type": "delta", "content": piece})
        except asyncio.CancelledError:
            status = MessageStatus.STOPPED
        except (ApiError, FeatureDisabled) as exc:
            status, error = MessageStatus.ERROR, plain_words(exc)
        message = await database_sync_to_async(services.message_add)(
            conversation=conversation,
            role=MessageRole.ASSISTANT,
            content="".join(parts),
            status=status,
            error=error,
        )
        await self.send_json(
            {
                "type": "done",
                "conversation": conversation.id,
                "message": message.id,
                "status": status,
                "error": error,
                "quota": _quota(headers),
            }
        )
        await self.on_list({})


def _quota(headers: dict) -> dict | None:
    """The remaining requests and tokens of the link, from the gateway's rate-limit headers."""
    quota = {}
    for metric in ("requests", "tokens"):
        if f"x-ratelimit-limit-{metric}" in headers:
            quota[metric] = {
                "limit": int(headers[f"x-ratelimit-limit-{metric}"]),
                "remaining": int(headers[f"x-ratelimit-remaining-{metric}"]),
                "reset": headers[f"x-ratelimit-reset-{metric}"],
            }
    return quota or None
