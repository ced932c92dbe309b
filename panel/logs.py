"""Log lines: JSON by default (python-json-logger), text for a developer's terminal.

Every line carries its timestamp, level, logger and message, and the request id of the
gateway request it was written for (``request_id``, a context variable the AI routes set:
no thread hop, and each request's task has its own copy). Fields given as ``extra``
become the line's own fields (the gateway's access line, ``ai.gateway.observability``).
"""

from __future__ import annotations

import logging
import os
import threading
from contextvars import Context, ContextVar, copy_context

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


class _Entropy(threading.local):
    """os.urandom's bytes, drawn 4 KiB at a time for each thread."""

    def __init__(self) -> None:
        self.pool, self.at = b"", 0


_entropy = _Entropy()
# A forked child must not hand out the ids its parent's pool still holds.
os.register_at_fork(after_in_child=_entropy.__init__)


def new_request_id() -> str:
    """A new request id: ``req_`` and a random version-4 UUID's 32 hex digits.

    As ``uuid.uuid4().hex`` (upstreams such as llama-cpp-python's server take only a
    UUID as X-Request-Id), without building a UUID object, and without a getrandom
    system call a request: each one released the GIL, and under load the event loop
    then waited for the usage writer's thread to hand it back (py-spy at c=64 put 4 %
    of the gateway's samples there; issue 20).
    """
    entropy = _entropy
    if entropy.at >= len(entropy.pool):
        entropy.pool, entropy.at = os.urandom(4096), 0
    at = entropy.at
    entropy.at = at + 16
    n = int.from_bytes(entropy.pool[at : at + 16], "big")
    n = (n & ~(0xF000 << 64)) | (0x4000 << 64)  # the version: 4
    n = (n & ~(0xC000 << 48)) | (0x8000 << 48)  # the variant: RFC 4122
    return f"req_{n:032x}"


FORMATS = ("json", "text")
_OWN_HANDLERS = ("django", "django.server", "uvicorn", "uvicorn.error", "uvicorn.access")
# The attributes every LogRecord has (and the ones these formatters add): anything
# else on a record came as ``extra``.
_STANDARD = frozenset((*RESERVED_ATTRS, "taskName", "request_id"))


def outside_requests() -> Context:
    """The context for a process-long task: the current one without the request's id.

    A task started while serving a request (a writer that flushes everyone's rows, a
    connection's listener) would otherwise copy that request's id onto all its lines.
    """
    context = copy_context()
    context.run(request_id.set, None)
    return context


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on the record, unless the caller named one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.get()
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object a line: timestamp, level, logger, message, request_id, extras."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp=True,
        )

    def process_log_record(self, log_data: dict) -> dict:
        # Lines written outside a request have no request id: no null field for them.
        if log_data.get("request_id") is None:
            log_data.pop("request_id", None)
        return log_data


class TextFormatter(logging.Formatter):
    """``time level logger [request id] message key=value ...`` for reading in a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", None)
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _STANDARD and v is not None
        )
        head, _, rest = line.partition("\n")  # a traceback stays below the line
        head = f"{head} request_id={rid}" if rid else head
        head = f"{head} {extras}" if extras else head
        return f"{head}\n{rest}" if rest else head


def uvicorn_access_log_is_off() -> bool:
    """Whether uvicorn was started with --no-access-log (``access_log=False``).

    uvicorn sets up logging before it imports the application (and so these settings):
    its switch leaves the access logger without handlers and not propagating, and each
    connection writes access lines only while that logger has a handler somewhere.
    """
    access = logging.getLogger("uvicorn.access")
    return not access.handlers and not access.propagate


def logging_config(*, log_format: str, level: str) -> dict:
    """The LOGGING setting: every line through one console handler in ``log_format``."""
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    loggers = {name: {"handlers": [], "propagate": True} for name in _OWN_HANDLERS}
    if uvicorn_access_log_is_off():
        # Routed to the root's handler, the access logger would have one again and every
        # request would write (and format) a line that --no-access-log turned off.
        loggers["uvicorn.access"]["propagate"] = False
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"line": {"()": formatter}},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "filters": ["request_id"],
                "formatter": "line",
            }
        },
        "root": {"handlers": ["console"], "level": level},
        # Django and uvicorn give these loggers handlers of their own (text): none here,
        # so their lines reach the root's, in the same format as every other line.
        "loggers": loggers,
    }
