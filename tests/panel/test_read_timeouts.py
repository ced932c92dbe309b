"""Slowloris (issue 11): the production server command closes requests that never finish."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from panel.http import uvicorn_args
from tests.servers import free_port, send_slowly_until_closed, wait_until_serving

ROOT = Path(__file__).resolve().parents[2]
TRICKLE = b"abcdefghijklmnopqrstuvwxyz" * 20


def _dockerfile_command() -> list[str]:
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    (command,) = [line.removeprefix("CMD ") for line in lines if line.startswith("CMD ")]
    return json.loads(command)


@pytest.fixture(scope="module")
def production_server(tmp_path_factory):
    """docker/Dockerfile's command on loopback, with one-second read timeouts."""
    command = _dockerfile_command()
    assert command == ["uvicorn", *uvicorn_args(host="0.0.0.0", port=8000)]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(
        DEBUG="false",
        SECRET_KEY="read-timeout-tests-secret-key",
        FIELD_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        DATA_DIR=str(tmp_path_factory.mktemp("server")),
        HTTP_HEADER_TIMEOUT="1",
        HTTP_BODY_TIMEOUT="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *uvicorn_args(host="127.0.0.1", port=port)],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_it_answers_408_and_closes_when_headers_trickle_in(production_server):
    answer = send_slowly_until_closed(
        production_server,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        trickle=TRICKLE,
    )
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_it_closes_a_connection_that_sends_nothing(production_server):
    assert send_slowly_until_closed(production_server, b"") == b""


def test_it_closes_a_request_whose_body_stalls(production_server):
    answer = send_slowly_until_closed(
        production_server,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    assert b" 200 " not in answer


def test_it_serves_whole_requests_and_times_the_next_one_on_a_kept_alive_connection(
    production_server,
):
    assert httpx.get(f"http://127.0.0.1:{production_server}/healthz").status_code == 200
    answer = send_slowly_until_closed(
        production_server,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /healthz HTTP/1.1\r\nHost: loc",
        trickle=TRICKLE,
    )
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ")
    assert b"HTTP/1.1 408 " in rest


def test_a_body_that_keeps_arriving_is_never_cut_whatever_its_total_time(production_server):
    # The body timeout bounds each wait between two reads, not the whole body: pieces
    # 0.3 s apart for 2.4 s (the timeout is 1 s) are read to the end. The deadline moves
    # with each read; the connection's one timer waits on when it fires early.
    body = b'{"model": "m", "messages": [], "pad": "' + b"x" * 7 + b'"}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", production_server), timeout=10) as sock:
        sock.sendall(head)
        for start in range(0, len(body), 6):
            time.sleep(0.3)
            sock.sendall(body[start : start + 6])
        answer = sock.recv(65536)
    # Whole, the request reaches the app (this server has no database: it answers 503
    # before it would check a key), not a closed connection.
    assert answer.startswith(b"HTTP/1.1 503 "), answer
