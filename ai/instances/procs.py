"""Processes as the agent sees them: /proc start times, process groups, free ports.

A pid alone names a process only until it exits: the kernel may give it to
another program. The pair (pid, start time in clock ticks since boot, field 22
of /proc/PID/stat) names one process for good, so every check here takes both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Field 3 (state) is the first after ")", so field N is at index N - 3.
    return text.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), None when there is none."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int | None) -> bool:
    """Whether the process ``pid`` that started at ``started`` still runs (zombies do not)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or int(fields[19]) == started


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """The live processes of the group ``pgid`` (zombies, which a signal no longer
    reaches and which only their reaper removes, do not count)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # Field 5 (the process group) is at index 2; field 3 (the state) at 0.
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to the group ``pgid``; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def kill_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGKILL)


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as servers do, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def parse_port_range(text: str) -> range:
    """``"8200-8999"`` as range(8200, 9000)."""
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)
