"""The fake upstream: a fast, deterministic, OpenAI-compatible server for tests, demos and benchmarks.

It is no part of the product: pure aiohttp, no Django. Run it with ``python -m fakeupstream``;
start one in a test with ``FakeUpstreamThread``. Modules, each owning one concern:

``app``       the aiohttp application, its routes and the wrapper each ``/v1`` route runs through
``faults``    the fault options (path, ``X-Fake-*`` headers, ``"fake_upstream"`` body key) and
              the faults that act before a handler
``handlers``  what each OpenAI endpoint answers
``plans``     scripted completions: content, length and usage
``sse``       streaming a completion, with the streaming faults
``finetune``  OpenAI's files and fine-tuning jobs (a job progresses as it is polled)
``llamacpp``  llama.cpp's own routes at the root (``/completion``, ``/tokenize``...)
``records``   the log of received requests behind ``/_fake/requests``
``wire``      JSON bytes and the OpenAI error envelope
``server``    the test thread and the command line
"""

from fakeupstream.app import create_app
from fakeupstream.faults import OPTION_NAMES, format_faults
from fakeupstream.handlers import DEFAULT_MODELS, PNG_BYTES
from fakeupstream.plans import DEFAULT_TOKENS
from fakeupstream.records import auth_fingerprint
from fakeupstream.server import FakeUpstreamThread, main

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_TOKENS",
    "OPTION_NAMES",
    "PNG_BYTES",
    "FakeUpstreamThread",
    "auth_fingerprint",
    "create_app",
    "format_faults",
    "main",
]
