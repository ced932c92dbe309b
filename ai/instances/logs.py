"""Instance log files: INSTANCE_LOG_DIR/<name>.log, rotated by copy and truncate.

The child writes its log itself (stdout and stderr on an O_APPEND descriptor),
so it keeps logging while the agent is away. Rotation therefore copies and
truncates: the child's descriptor stays valid and writes land at the new end.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

BLOCK = 64 * 1024


def log_path(directory: Path, name: str, backup: int = 0) -> Path:
    """The live log of ``name`` (backup 0) or its backup number ``backup``."""
    return Path(directory) / (f"{name}.log" if backup == 0 else f"{name}.log.{backup}")


def open_for_child(directory: Path, name: str):
    """The live log opened for append, to hand to the child as stdout and stderr."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    return open(log_path(directory, name), "ab")  # noqa: SIM115 - the caller closes it


def rotate_if_big(directory: Path, name: str, *, max_bytes: int, backups: int) -> bool:
    """Keep the tail of a log past ``max_bytes`` in <name>.log.1 and truncate the live file.

    What the child writes between the last read and the truncation is lost, as with
    any copy-and-truncate rotation; reading the tail first and the rest just before
    truncating keeps that window to a moment.
    """
    live = log_path(directory, name)
    try:
        size = live.stat().st_size
    except FileNotFoundError:
        return False
    if size <= max_bytes:
        return False
    with open(live, "rb") as source:
        source.seek(max(0, size - max_bytes))
        kept = source.read(max_bytes)
        kept += source.read()  # what came since, then cut at once
        os.truncate(live, 0)
    if backups < 1:
        return True
    for number in range(backups, 1, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(log_path(directory, name, number - 1), log_path(directory, name, number))
    # The tail starts inside a line: start the backup at the next one.
    kept = kept[-max_bytes:]
    if b"\n" in kept[:-1]:
        kept = kept[kept.index(b"\n") + 1 :]
    log_path(directory, name, 1).write_bytes(kept)
    return True


def _lines_from_end(path: Path, wanted: int) -> list[bytes]:
    """Up to ``wanted`` last lines of ``path``, reading blocks from its end."""
    with open(path, "rb") as file:
        file.seek(0, os.SEEK_END)
        position = file.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= wanted:
            step = min(BLOCK, position)
            position -= step
            file.seek(position)
            data = file.read(step) + data
    lines = data.splitlines(keepends=True)
    return lines[-wanted:] if wanted else []


def tail(directory: Path, name: str, lines: int | None = None) -> str | None:
    """The last ``lines`` lines of ``name``'s log, older files first if the live one is
    short (the live file whole without ``lines``); None when it has no log."""
    live = log_path(directory, name)
    if not live.exists():
        return None
    if lines is None:
        return live.read_bytes().decode("utf-8", errors="replace")
    found: list[bytes] = []
    for backup in range(0, 1000):
        path = log_path(directory, name, backup)
        if len(found) >= lines or not path.exists():
            break
        found = _lines_from_end(path, lines - len(found)) + found
    return b"".join(found).decode("utf-8", errors="replace")
