"""A stand-in for a node's instance agent, at the process boundary: its HTTP protocol only.

The real agent (``manage.py instance_agent``) is built apart; these tests need
only what ``ai.instances.client`` speaks to (see its docstring): ``POST
/reconcile``, ``GET /health``, ``GET /instances/{name}/logs?lines=N`` and ``POST
/instances/{name}/demand``, with the bearer key.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest


class StandInAgent:
    """Answers like an agent: 202 to a nudge, the last N lines of a log kept in ``logs``,
    and a demand with what ``on_demand(name, body)`` returns (status, JSON object).

    Every demand is kept in ``demands``; while ``release`` is clear, demands wait for it
    (a start that takes its time), and ``waiting`` counts them.
    """

    def __init__(self, key: str, node: str = "local") -> None:
        self.key = key
        self.node = node
        self.logs: dict[str, str] = {}
        self.nudges = 0
        self.log_requests: list[dict] = []
        self.refused = 0
        self.demands: list[dict] = []
        self.on_demand: Callable[[str, dict], tuple[int, dict]] = lambda name, body: (
            404,
            {"reason": f"No instance '{name}' on this node."},
        )
        self.release = threading.Event()
        self.release.set()
        self.waiting = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self):
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, text: str = "", kind: str = "text/plain") -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _answer_json(self, status: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _demand(self, name: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with agent._lock:
                    agent.demands.append({"name": name, "body": body})
                    agent.waiting += 1
                try:
                    agent.release.wait(timeout=60)
                finally:
                    with agent._lock:
                        agent.waiting -= 1
                self._answer_json(*agent.on_demand(name, body))

            def _is_authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {agent.key}":
                    return True
                agent.refused += 1
                self._answer(401)
                return False

            def do_POST(self):
                if not self._is_authorised():
                    return
                if self.path == "/reconcile":
                    agent.nudges += 1
                    return self._answer(202)
                parts = self.path.strip("/").split("/")
                if len(parts) == 3 and parts[0] == "instances" and parts[2] == "demand":
                    return self._demand(parts[1])
                self._answer(404)

            def do_GET(self):
                if not self._is_authorised():
                    return
                url = urlsplit(self.path)
                if url.path == "/health":
                    health = {"node": agent.node, "pid": 4242, "instances": {}}
                    return self._answer(200, json.dumps(health), "application/json")
                parts = url.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "instances" or parts[2] != "logs":
                    return self._answer(404)
                lines = parse_qs(url.query).get("lines")
                agent.log_requests.append({"name": parts[1], "lines": lines})
                if parts[1] not in agent.logs:
                    return self._answer(404)
                text = agent.logs[parts[1]].splitlines(keepends=True)
                self._answer(200, "".join(text[-int(lines[0]) :] if lines else text))

        return Handler

    def __enter__(self) -> StandInAgent:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()  # no demand left waiting on a test that is over
        self.server.shutdown()
        self.server.server_close()


def point_local_agent(settings, url: str, key: str | None = None) -> None:
    """This host's agent now answers at ``url`` (with ``key``): the settings say so, and
    so does the local node's row once it exists (it was made from the settings)."""
    from ai.models import Node

    settings.INSTANCE_AGENT_URL = url
    if key is not None:
        settings.INSTANCE_AGENT_KEY = key
    for node in Node.objects.filter(name=settings.INSTANCE_NODE):
        node.address, node.api_key = url, settings.INSTANCE_AGENT_KEY
        node.save()


@pytest.fixture(autouse=True)
def no_agent(settings):
    """By default nothing answers at the agent's address (a free port, not a real agent's)."""
    from tests.servers import free_port

    settings.INSTANCE_AGENT_URL = f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def agent(settings, no_agent):
    """The stand-in agent of this host's node, answering with the deployment's key."""
    with StandInAgent(key=settings.INSTANCE_AGENT_KEY) as stand_in:
        point_local_agent(settings, stand_in.url)
        yield stand_in
