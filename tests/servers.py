"""Real servers for tests: the ASGI app under uvicorn in a thread."""

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn


class UvicornThread:
    """Serves panel.asgi on 127.0.0.1 at a free port until stopped."""

    def __init__(self, app: str = "panel.asgi:application") -> None:
        self.config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        from ai.gateway.upstream import close_session

        try:
            await self.server.serve()
        finally:
            await close_session()

    def start(self) -> "UvicornThread":
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            threading.Event().wait(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "UvicornThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, timeout: float = 30.0) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_gateway(
    redis_url: str | None, extra_env: dict | None = None, *, lifespan: str = "on"
) -> tuple[str, subprocess.Popen]:
    """The ASGI app under a uvicorn subprocess, on the test database, at a free port."""
    from django.db import connection

    db = connection.settings_dict
    if connection.vendor == "sqlite":
        database_url = f"sqlite:///{db['NAME']}"
    else:
        database_url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url or "",
        "LOG_LEVEL": "WARNING",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "panel.asgi:application",
            "--port",
            str(port),
            "--no-access-log",
            "--lifespan",
            lifespan,
            "--log-level",
            "warning",
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
    )
    return f"http://127.0.0.1:{port}", process
