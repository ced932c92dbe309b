from .chat import (
    chat_body,
    chat_stream,
    conversation_create,
    conversation_delete,
    conversation_get_for_user,
    conversation_messages,
    conversation_rename,
    conversation_rewind,
    conversations_for_user,
    message_add,
)
from .health import health_prune, upstreams_check
from .reconcile import usage_reconcile
from .registry import DEMO_MODEL, demo_seed
from .usage import usage_prune, usage_rollup

__all__ = [
    "chat_body",
    "chat_stream",
    "conversation_create",
    "conversation_delete",
    "conversation_get_for_user",
    "conversation_messages",
    "conversation_rename",
    "conversation_rewind",
    "conversations_for_user",
    "message_add",
    "DEMO_MODEL",
    "demo_seed",
    "health_prune",
    "upstreams_check",
    "usage_prune",
    "usage_reconcile",
    "usage_rollup",
]
