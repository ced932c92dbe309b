"""Real servers for tests: the ASGI app under uvicorn in a thread."""

import asyncio
import threading

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


class RedisServer:
    """A redis-server of the test's own on a free port, to kill, hang and bring back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> "RedisServer":
        import subprocess

        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                threading.Event().wait(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def hang(self) -> None:
        """Stop the process: connections stay open, nothing answers."""
        import signal

        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.kill()


class TcpProxy:
    """Forwards loopback connections to a server; ``cut`` makes the server a dead host.

    While cut, open connections are dropped and new ones are accepted but never
    answered, as with a host that vanished from the network; ``restore``
    forwards again.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.transports: set = set()
        self.is_cut = False
        self.port = 0

    def start(self) -> "TcpProxy":
        self.thread.start()
        server = self._call(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.server = server
        self.port = server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self._call(self._set_cut(True))

    def restore(self) -> None:
        self._call(self._set_cut(False))

    def stop(self) -> None:
        self._call(self._set_cut(True))
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    async def _set_cut(self, is_cut: bool) -> None:
        self.is_cut = is_cut
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()

    async def _handle(self, reader, writer) -> None:
        self.transports.add(writer.transport)
        try:
            if self.is_cut:
                await reader.read()  # swallow everything, answer nothing
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.transports.add(up_writer.transport)
            await asyncio.gather(_forward(reader, up_writer), _forward(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.transport.abort()


async def _forward(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()
