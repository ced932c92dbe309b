"""The progress protocol: what a trainer program writes on stdout, one JSON object a line.

Any trainer (the built-in one, or an admin's ``command`` trainer) reports this way::

    {"event": "progress", "step": 10, "total_steps": 120, "epoch": 0.25}
    {"event": "metrics", "step": 10, "loss": 2.31, "learning_rate": 0.0002}
    {"event": "log", "level": "info", "message": "loaded 1,200 examples"}
    {"event": "result", "path": "/data/training/ftjob-.../output", "format": "hf_lora"}
    {"event": "error", "message": "CUDA out of memory"}

``progress`` and ``metrics`` may be combined in one line (``step`` with a ``loss``).
Every metric is a finite number; other keys are ignored. A line that is not such an
object is kept as a log line. The job succeeds when the program exits 0 after a
``result``; it fails on any other exit, with its last ``error`` (else the tail of
its stderr) as the reason. The program reads its job from the JSON file named by
``{config}`` in its command (``trainers.write_config``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

# A line longer than this is cut (a trainer printing a tensor must not fill the table).
MAX_LINE = 4000
FORMATS = ("hf", "hf_lora", "gguf")
LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Line:
    """One parsed line of a trainer's stdout."""

    event: str  # progress, metrics, log, result, error
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    level: str = "info"
    message: str = ""
    path: str = ""
    format: str = ""


def parse(raw: str | bytes) -> Line | None:
    """The line as an event; None for an empty line; a log line for anything unreadable."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    text = raw.strip()
    if not text:
        return None
    text = text[:MAX_LINE]
    try:
        data = json.loads(text)
    except ValueError:
        return Line("log", message=text)
    if not isinstance(data, dict) or not isinstance(data.get("event"), str):
        return Line("log", message=text)
    event = data["event"]
    if event in ("progress", "metrics"):
        metrics = {
            key: float(value)
            for key, value in data.items()
            if key not in ("event", "step", "total_steps", "epoch")
            and _number(value)
            and not isinstance(value, bool)
        }
        return Line(
            "metrics" if metrics else "progress",
            step=_count(data.get("step")),
            total_steps=_count(data.get("total_steps")),
            epoch=float(data["epoch"]) if _number(data.get("epoch")) else None,
            metrics=metrics,
        )
    if event == "log":
        level = data.get("level") if data.get("level") in LEVELS else "info"
        return Line("log", level=level, message=str(data.get("message", ""))[:MAX_LINE])
    if event == "result":
        path, fmt = data.get("path"), data.get("format")
        if not isinstance(path, str) or not path or fmt not in FORMATS:
            return Line("log", level="warning", message=f"unreadable result line: {text}")
        return Line("result", path=path, format=fmt)
    if event == "error":
        return Line("error", level="error", message=str(data.get("message", ""))[:MAX_LINE])
    return Line("log", message=text)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
