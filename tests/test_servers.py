"""tests.servers: the suite's own servers stop when asked, whatever a test left open."""

import asyncio
import threading
import time

import httpx

from tests.servers import UvicornThread


async def endless_stream(scope, receive, send):
    """An app whose every answer is a stream that never ends."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        await send({"type": "http.response.body", "body": b"data: .\n\n", "more_body": True})
        await asyncio.sleep(0.05)


def test_the_asgi_server_stops_with_a_stream_still_open():
    server = UvicornThread("tests.test_servers:endless_stream").start()
    reading = threading.Event()

    def read_forever():
        try:
            with httpx.stream("GET", server.url, timeout=30) as response:
                for _ in response.iter_bytes():
                    reading.set()
        except httpx.HTTPError:
            pass  # the server went away: what stopping it does

    client = threading.Thread(target=read_forever, daemon=True)
    client.start()
    assert reading.wait(5)
    started = time.monotonic()
    server.stop()
    assert not server.thread.is_alive()
    assert time.monotonic() - started < 5  # uvicorn alone would wait for the stream
