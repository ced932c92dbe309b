"""Chat page services: conversations and the streaming of one reply."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from django.db import transaction
from django.db.models import Q

from accounts.authentication import Identity
from panel import logs
from panel.errors import ErrorCode, NotFound, UpstreamError

from ..gateway import pipeline
from ..gateway.pipeline import Reply, Stream
from ..models import Conversation, Message, MessageRole, MessageStatus

TITLE_LENGTH = 60


def conversation_get_for_user(*, user_id: int, conversation_id) -> Conversation:
    """The user's own conversation; anyone else's is simply not found."""
    conversation = Conversation.objects.filter(pk=conversation_id, user_id=user_id).first()
    if conversation is None:
        raise NotFound("No such conversation.", code=ErrorCode.CONVERSATION_NOT_FOUND)
    return conversation


def conversations_for_user(*, user_id: int) -> list[dict]:
    return [
        {
            "id": c.id,
            "title": c.title,
            "model_id": c.model_id,
            "updated_at": c.updated_at.isoformat(),
        }
        for c in Conversation.objects.filter(user_id=user_id)[:200]
    ]


def conversation_create(
    *, user_id: int, model_id: int | None, system_prompt: str, first_message: str
):
    """A new conversation titled after its first message."""
    title = conversation_title(first_message)
    return Conversation.objects.create(
        user_id=user_id, model_id=model_id, system_prompt=system_prompt or "", title=title
    )


def conversation_title(first_message: str) -> str:
    """The first line with words in it, cut at a word near TITLE_LENGTH characters."""
    line = next((" ".join(ln.split()) for ln in first_message.splitlines() if ln.strip()), "")
    if len(line) <= TITLE_LENGTH:
        return line or "New chat"
    cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0] if " " in line[:TITLE_LENGTH] else ""
    return (cut or line[:TITLE_LENGTH]).rstrip(" ,.;:") + "…"


def conversation_rename(*, user_id: int, conversation_id, title: str) -> Conversation:
    conversation = conversation_get_for_user(user_id=user_id, conversation_id=conversation_id)
    conversation.title = title.strip()[:200] or conversation.title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, user_id: int, conversation_id) -> None:
    conversation_get_for_user(user_id=user_id, conversation_id=conversation_id).delete()


def conversation_messages(*, user_id: int, conversation_id) -> tuple[Conversation, list[dict]]:
    conversation = conversation_get_for_user(user_id=user_id, conversation_id=conversation_id)
    messages = [
        {"id": m.id, "role": m.role, "content": m.content, "status": m.status, "error": m.error}
        for m in conversation.messages.all()
    ]
    return conversation, messages


def message_add(
    *, conversation: Conversation, role: str, content: str, status=MessageStatus.COMPLETE, error=""
):
    message = Message.objects.create(
        conversation=conversation, role=role, content=content, status=status, error=error[:300]
    )
    conversation.save(update_fields=["updated_at"])
    return message


def conversation_rewind(
    *, conversation: Conversation, message_id=None, content: str | None = None
) -> Message:
    """Cut the conversation after one of its user messages, to answer it again.

    Regenerate: no ``message_id``, the last user message; its replies go. Edit and resend:
    ``message_id`` names a user message, ``content`` replaces its text, and everything said
    after it goes, so the stored turns stay the ones the model sees next.
    """
    users = conversation.messages.filter(role=MessageRole.USER)
    if message_id is not None:
        users = users.filter(pk=message_id if str(message_id).isdigit() else None)
    message = users.order_by("-created_at", "-id").first()
    if message is None:
        raise NotFound("No such message.")
    with transaction.atomic():
        conversation.messages.filter(
            Q(created_at__gt=message.created_at)
            | Q(created_at=message.created_at, id__gt=message.id)
        ).delete()
        fields = ["updated_at"]
        if content is not None and content != message.content:
            # A title made from the first message follows its edit; one the user chose stays.
            first = not Message.objects.filter(
                conversation=conversation, role=MessageRole.USER, id__lt=message.id
            ).exists()
            if first and conversation.title == conversation_title(message.content):
                conversation.title = conversation_title(content)
                fields.append("title")
            message.content = content
            message.save(update_fields=["content"])
        conversation.save(update_fields=fields)
    return message


def chat_body(*, conversation: Conversation, model_id: int | None) -> dict:
    """The OpenAI chat request for the conversation so far (its stored turns)."""
    messages = []
    if conversation.system_prompt:
        messages.append({"role": "system", "content": conversation.system_prompt})
    for message in conversation.messages.all():
        if message.content and message.status != MessageStatus.ERROR:
            messages.append({"role": message.role, "content": message.content})
    body = {"messages": messages, "stream": True}
    if model_id is not None:
        body["modelId"] = model_id
    return body


async def chat_stream(
    *,
    user_id: int,
    body: dict,
    on_starting: Callable[[], Awaitable[None]] | None = None,
) -> tuple[dict, AsyncIterator[str]]:
    """Stream a reply through the gateway (resolution, limits, failover, usage): headers, pieces.

    The same functions serve /v1/chat/completions; nothing here calls the HTTP API.
    ``on_starting`` is awaited before the reply waits for the model's instance to start.
    """
    call = await pipeline.prepare(
        identity=Identity(user_id=user_id, key=None),
        route=pipeline.CHAT_ROUTE,
        body=body,
        request_id=logs.new_request_id(),
    )
    call.on_starting = on_starting
    result: Stream | Reply = await pipeline.open_stream(call)
    if isinstance(result, Reply):
        raise UpstreamError(f"The model refused the request (HTTP {result.status}).")

    return result.headers, result.deltas()
