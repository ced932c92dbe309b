"""A backend's own program asked about itself: ``llama-server --help``, ``--version``,
``--list-devices`` (seed 003's /backends/llama-cpp/help, /version, /devices).

Run on this host (the web process's), as an asyncio subprocess with a time limit:
the event loop never waits on it. It gets the host's environment only (no
Switchboard setting), like an instance does.
"""

from __future__ import annotations

import asyncio
import subprocess

from panel.errors import BackendUnavailable

from ..models import Backend
from .backends import EXECUTABLES
from .launch import host_environment

TIMEOUT = 10.0
# Enough for any help text; a program that writes more is cut here.
MAX_OUTPUT = 1024 * 1024
QUESTIONS = {"help": "--help", "version": "--version", "devices": "--list-devices"}


async def llama_server_says(question: str) -> str:
    """What ``llama-server <flag of question>`` prints (stdout and stderr); raises
    BackendUnavailable (503) when it is not installed, fails or takes too long."""
    return await _ask(EXECUTABLES[Backend.LLAMA_CPP][0], QUESTIONS[question])


async def _ask(program: str, flag: str) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            program,
            flag,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=host_environment(),
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise BackendUnavailable(
            f"{program} is not installed on this host (not found on the PATH of Switchboard's "
            "web process); install llama.cpp to use this route."
        ) from exc
    try:
        output = await asyncio.wait_for(_read_all(process.stdout), TIMEOUT)
        code = await asyncio.wait_for(process.wait(), TIMEOUT)
    except TimeoutError:
        raise BackendUnavailable(f"{program} {flag} did not finish within {TIMEOUT:g} s.") from None
    finally:
        if process.returncode is None:  # timed out, cancelled, or too much output
            process.kill()
            await process.wait()
    if output is None:
        raise BackendUnavailable(f"{program} {flag} printed more than {MAX_OUTPUT} bytes.")
    text = output.decode(errors="replace")
    if code != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise BackendUnavailable(f"{program} {flag} failed (exit status {code}): {last[0]}")
    return text


async def _read_all(stream: asyncio.StreamReader) -> bytes | None:
    """Everything until the end, or None past MAX_OUTPUT bytes."""
    chunks, size = [], 0
    while chunk := await stream.read(64 * 1024):
        size += len(chunk)
        if size > MAX_OUTPUT:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
