"""Running the fake upstream: in a test's background thread, or as ``python -m fakeupstream``.

Owns the server's lifecycle (bind, serve, shut down) and the command line
``python -m fakeupstream --host 127.0.0.1 --port 9100 [--models a,b]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
from typing import Any

from aiohttp import web

from fakeupstream import records
from fakeupstream.app import create_app, reset
from fakeupstream.faults import format_faults


async def _start_site(
    app: web.Application, host: str, port: int, shutdown_timeout: float
) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    return runner, bound_port


class FakeUpstreamThread:
    """Run the fake upstream on its own event loop in a daemon thread.

    >>> with FakeUpstreamThread() as fake:
    ...     base = fake.base_url(status=503)  # http://127.0.0.1:PORT/f/status=503/v1
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
        shutdown_timeout: float = 0.25,
    ) -> None:
        self.host = host
        self.port = port
        self.models = models
        self.shutdown_timeout = shutdown_timeout
        self.app: web.Application | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, **faults: Any) -> str:
        """``http://HOST:PORT/v1``, or ``http://HOST:PORT/f/<opts>/v1`` with faults."""
        opts = format_faults(**faults)
        return f"{self.url}/f/{opts}/v1" if opts else f"{self.url}/v1"

    def start(self) -> FakeUpstreamThread:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("fake upstream failed to start") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        runner = None
        try:
            self.app = create_app(self.models)
            runner, self.port = loop.run_until_complete(
                _start_site(self.app, self.host, self.port, self.shutdown_timeout)
            )
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, fn: Any) -> Any:
        async def run() -> Any:
            return fn()

        assert self._loop is not None, "not started"
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def requests(self) -> list[dict[str, Any]]:
        """A snapshot of the recorded requests (oldest first, at most 100)."""
        return self._call(lambda: records.snapshot(self.app))

    def clear(self) -> None:
        """Forget recorded requests and reset ``fail_first`` counters."""
        self._call(lambda: reset(self.app))

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeUpstreamThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _serve(host: str, port: int, models: list[str]) -> None:
    runner, bound = await _start_site(create_app(models), host, port, shutdown_timeout=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fake upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--models", default="", help="extra model ids, comma separated")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, models))
    sys.stdout.flush()
