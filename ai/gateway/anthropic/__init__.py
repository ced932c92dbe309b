"""Anthropic Messages over OpenAI-style chat upstreams: the translation, pure (no I/O).

``request``  a Messages body checked and turned into the chat body sent upstream
``reply``    a chat completion as a Message; errors in Anthropic's shape
``stream``   a chat completion stream as Anthropic's events
``passthrough`` Messages as sent, to upstreams that speak them (``api_style`` anthropic)

The routes are in ``ai.api.anthropic``.
"""

from .passthrough import MESSAGES_PATH, MessagesRelay, speaks_messages
from .reply import error_body, message_id, message_reply, refusal_error
from .request import chat_body, chat_translation, prompt_estimate
from .stream import MessageStream, message_events

__all__ = [
    "MESSAGES_PATH",
    "MessageStream",
    "MessagesRelay",
    "chat_body",
    "chat_translation",
    "error_body",
    "message_events",
    "message_id",
    "message_reply",
    "prompt_estimate",
    "refusal_error",
    "speaks_messages",
]
