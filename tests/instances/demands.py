"""What the gateway does to an agent, done by a test: demands, and activity writes.

``demand`` calls the agent's ``POST /instances/{name}/demand`` as the gateway
does; ``Activity`` writes ``Instance.last_request_at`` in a thread as a web
process does while it has requests in flight on an instance.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from django.db import connection
from django.utils import timezone

from ai.models import Instance
from tests.instances.conftest import AGENT_KEY
from tests.workers import worker_port

# The agent's settings for these tests: busy for 2 * 0.5 + 1.5 = 2.5 s after a request.
SCHEDULING_ENV = {
    "INSTANCE_ACTIVITY_INTERVAL": "0.5",
    "INSTANCE_TIMEOUT_CHECK_INTERVAL": "0.2",
    "INSTANCE_MIN_RESIDENCY": "0",
}


def demand(agent, name: str, timeout: float = 60, *, key: str = AGENT_KEY, **body):
    """POST /instances/{name}/demand with ``timeout`` (and any more ``body``)."""
    return httpx.post(
        f"{agent.url}/instances/{name}/demand",
        json={"timeout": timeout, **body},
        headers={"Authorization": f"Bearer {key}"},
        timeout=timeout + 30,
    )


def demands_at_once(agent, name: str, count: int, timeout: float = 60) -> list[httpx.Response]:
    """``count`` concurrent demands for ``name``."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: demand(agent, name, timeout), range(count)))


def ago(**delta) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**delta)


def last_used(instance: Instance, when: datetime.datetime, **fields) -> None:
    """Record that ``instance`` was last used (and became ready) at ``when``."""
    Instance.objects.filter(pk=instance.pk).update(ready_at=when, last_request_at=when, **fields)


def touch(instance: Instance) -> None:
    """A request used ``instance`` just now."""
    Instance.objects.filter(pk=instance.pk).update(last_request_at=timezone.now())


class Activity:
    """A web process with requests in flight on ``instances``: writes their
    last_request_at every ``interval`` seconds until stopped."""

    def __init__(self, *instances: Instance, interval: float = 0.2) -> None:
        self.ids = [instance.pk for instance in instances]
        self.interval = interval
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                Instance.objects.filter(pk__in=self.ids).update(last_request_at=timezone.now())
                self.done.wait(self.interval)
        finally:
            connection.close()

    def __enter__(self) -> Activity:
        Instance.objects.filter(pk__in=self.ids).update(last_request_at=timezone.now())
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(10)


def consecutive_free_ports(count: int) -> range:
    """``count`` consecutive ports on 127.0.0.1 that nothing listens on now, from this
    worker's own 23000-23999 (``tests.workers.worker_port``)."""
    start = worker_port(23000)
    for first in range(start, start + 1000, count):
        ports = range(first, first + count)
        if all(_is_free(port) for port in ports):
            return ports
    raise AssertionError("no free run of ports")


def _is_free(port: int) -> bool:
    with socket.socket() as sock, contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return True
    return False
