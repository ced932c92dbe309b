"""Anthropic Messages over OpenAI-style chat upstreams, and chat over Messages upstreams:
the translation, pure (no I/O).

``request``  a Messages body checked and turned into the chat body sent upstream
``reply``    a chat completion as a Message; errors in Anthropic's shape
``stream``   a chat completion stream as Anthropic's events
``passthrough`` Messages as sent, to upstreams that speak them (``api_style`` anthropic)

And the reverse, for chat-protocol calls served by those upstreams:

``outbound``    a chat completion body as the Messages body sent upstream
``completion``  a Message as a chat completion; its errors in OpenAI's envelope
``chunks``      a Messages stream as chat completion chunks (a pipeline StreamRelay)

The routes are in ``ai.api.anthropic``.
"""

from .chunks import ChatChunkRelay
from .completion import chat_completion, chat_usage, openai_error
from .outbound import messages_body
from .passthrough import MESSAGES_PATH, MessagesRelay, speaks_messages
from .reply import error_body, message_id, message_reply, refusal_error
from .request import chat_body, chat_translation, prompt_estimate
from .stream import MessageStream, message_events

__all__ = [
    "MESSAGES_PATH",
    "ChatChunkRelay",
    "MessageStream",
    "MessagesRelay",
    "chat_body",
    "chat_completion",
    "chat_usage",
    "chat_translation",
    "error_body",
    "message_events",
    "message_id",
    "message_reply",
    "messages_body",
    "openai_error",
    "prompt_estimate",
    "refusal_error",
    "speaks_messages",
]
