"""The fake upstream: a fast, deterministic, OpenAI-compatible server for tests, demos and benchmarks.

It is no part of the product (pure aiohttp, no Django). Run it with ``python -m fakeupstream``;
start one in a test with ``FakeUpstreamThread``.
"""

from fakeupstream.app import (
    DEFAULT_MODELS,
    DEFAULT_TOKENS,
    OPTION_NAMES,
    PNG_BYTES,
    FakeUpstreamThread,
    auth_fingerprint,
    create_app,
    format_faults,
    main,
)

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
