"""Real servers for tests: the ASGI app under uvicorn, Redis (TCP or TLS), a TCP proxy."""

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path

import uvicorn

from tests.workers import worker_number


class UvicornThread:
    """Serves panel.asgi on 127.0.0.1 at a free port until stopped."""

    def __init__(self, app: str = "panel.asgi:application") -> None:
        from panel.http import PROTOCOL

        # Production's HTTP protocol (panel.http), so the tests that go through a real
        # server (the browser's pages, the chat's socket) run on the one deployments run.
        self.config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
            access_log=False,
            http=PROTOCOL,
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
        # uvicorn waits for open connections to close, without end: a test that left a
        # stream or a socket open held the session's server (and its worker) 10 s at the
        # suite's end. After a grace, force the exit, as a second Ctrl-C does.
        self.server.should_exit = True
        self.thread.join(timeout=2)
        self.server.force_exit = True
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


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def processes() -> dict[int, tuple[int, str, str]]:
    """Every process on the machine: pid -> (parent pid, state, start time), from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command name, which may hold spaces and parentheses:
            # state (field 3 of proc(5)), ppid (4), ... starttime (22).
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def descendants(pid: int) -> dict[int, tuple[int, str]]:
    """The processes under pid (children, grandchildren...): pid -> (parent pid, start time)."""
    table = processes()
    found: dict[int, tuple[int, str]] = {}
    parents = [pid]
    while parents:
        parent = parents.pop()
        for child, (ppid, _, started) in table.items():
            if ppid == parent and child not in found:
                found[child] = (ppid, started)
                parents.append(child)
    return found


def still_running(found: dict[int, tuple[int, str]]) -> set[int]:
    """Those of ``found`` (from ``descendants``) still running: same pid and start time,
    not a zombie."""
    table = processes()
    return {
        pid
        for pid, (_, started) in found.items()
        if pid in table and table[pid][2] == started and table[pid][1] != "Z"
    }


# The local Redis when REDIS_URL is unset: database 0, or one of its own per xdist worker.
LOCAL_REDIS = f"redis://127.0.0.1:6379/{worker_number()}"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


def redis_url_or_skip() -> str:
    """The Redis the suite may use (REDIS_URL, else the local server), or skip the test."""
    import os

    import pytest
    import redis

    url = os.environ.get("REDIS_URL") or LOCAL_REDIS
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError:
        pytest.skip(f"issue 11: needs a Redis server at {url} (CI always has one)")
    return url


def postgres_admin_url_or_skip() -> str:
    """A URL to the `postgres` maintenance database (the host of DATABASE_URL when it
    names PostgreSQL, else the local server), or skip the test."""
    import os
    from urllib.parse import urlsplit, urlunsplit

    import psycopg
    import pytest

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        url = LOCAL_POSTGRES
    url = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("issue 11: needs a PostgreSQL server (CI always has one)")
    return url


class ScratchDatabase:
    """A PostgreSQL database of one test's own, created on entry and dropped on exit."""

    def __init__(self, admin_url: str, name: str) -> None:
        from urllib.parse import urlsplit, urlunsplit

        self.admin_url = admin_url
        self.name = name
        self.url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))

    def _execute(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql)

    def __enter__(self) -> "ScratchDatabase":
        self._execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *exc) -> None:
        self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def send_slowly_until_closed(
    port: int, start: bytes, *, trickle: bytes = b"", interval: float = 0.2, bound: float = 60.0
) -> bytes:
    """Send ``start``, then ``trickle`` a byte at a time every ``interval`` seconds (each
    byte would reset an idle timeout), until the server closes the connection.

    Returns what the server wrote before closing; fails if it has not closed within
    ``bound`` seconds (a generous limit, not the timeout under test).
    """
    import socket
    import time

    received = b""
    deadline = time.monotonic() + bound
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(interval)
        if start:
            sock.sendall(start)
        position = 0
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except TimeoutError:
                if trickle:
                    try:
                        sock.sendall(trickle[position % len(trickle) :][:1])
                    except (BrokenPipeError, ConnectionResetError):
                        return received
                    position += 1
                continue
            except ConnectionResetError:
                return received
            if not data:
                return received
            received += data
    raise AssertionError(f"the server kept the connection open for {bound} s")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, its own CA, and its key: PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    subject_key = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(subject_key, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(subject_key),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class RedisServer:
    """A redis-server of the test's own on a free port, to kill, hang and bring back.

    With ``tls_dir`` it speaks TLS only, with a self-signed certificate written
    there, and ``url`` is a ``rediss://`` URL that trusts it; ``args`` are more
    server options (``--user ...``). With ``data_dir`` it keeps its data there as a
    production server does by default (a snapshot on shutdown, loaded at start), so
    ``restart`` brings it back with its keys; without, it starts empty every time.
    """

    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        args: tuple[str, ...] = (),
        data_dir: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = ["--port", str(self.port)]
        if tls_dir is not None:
            self.cert, key = self_signed_certificate(tls_dir)
            self.url = f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"
            self.options = ["--port", "0", "--tls-port", str(self.port)]
            self.options += ["--tls-cert-file", str(self.cert), "--tls-key-file", str(key)]
            self.options += ["--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]
        self.options += list(args)
        self.persistence = ["--save", ""]
        if data_dir is not None:
            self.persistence = ["--dir", str(data_dir), "--save", "3600 1"]
        self.process = None

    def start(self) -> "RedisServer":
        import subprocess

        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", *self.options, *self.persistence]
            + ["--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.AuthenticationError:
                return self  # it answers; this URL is just not allowed in
            except redis.ConnectionError:
                threading.Event().wait(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Stop the server as an operator does (SIGTERM: it saves, with ``data_dir``), start it."""
        self.process.terminate()
        self.process.wait(timeout=30)
        self.start()

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
    forwards again. While stalled, every connection stays open and nothing is
    forwarded either way, as with a server that stopped answering; ``resume``
    forwards what was held and carries on.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.transports: set = set()
        self.is_cut = False
        self.flowing = asyncio.Event()
        self.flowing.set()
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

    def stall(self) -> None:
        self.loop.call_soon_threadsafe(self.flowing.clear)

    def resume(self) -> None:
        self.loop.call_soon_threadsafe(self.flowing.set)

    def stop(self) -> None:
        self.resume()
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
            await asyncio.gather(
                _forward(reader, up_writer, self.flowing), _forward(up_reader, writer, self.flowing)
            )
        except OSError:
            pass
        finally:
            writer.transport.abort()


async def _forward(reader, writer, flowing: asyncio.Event) -> None:
    try:
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()
