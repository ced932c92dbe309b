"""What the configured console handler (settings.LOGGING) writes, for the log tests.

The handler's stream is swapped for a buffer: the lines are the formatter's real output
(and its filter's request id), not caplog's records.
"""

from __future__ import annotations

import io
import json
import logging

import pytest


class LogCapture:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self) -> list[dict]:
        """Every line written, each parsed as JSON (a line that is not fails the test)."""
        return [json.loads(line) for line in self.text.splitlines() if line]

    def events(self, event: str) -> list[dict]:
        return [line for line in self.lines() if line.get("event") == event]


@pytest.fixture
def log_lines():
    root = logging.getLogger()
    handler = next(h for h in root.handlers if h.name == "console")
    capture, level = LogCapture(), root.level
    previous = handler.setStream(capture.stream)
    root.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        handler.setStream(previous)
        root.setLevel(level)
