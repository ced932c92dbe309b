"""Every log line is one JSON object: timestamp, level, logger, message, request id."""

import json
import logging
from datetime import datetime

import httpx
import pytest

from panel import logs
from panel.logs import JsonFormatter, RequestIdFilter, TextFormatter, logging_config
from tests.ai.conftest import world  # noqa: F401 (a fixture)
from tests.logcapture import log_lines  # noqa: F401 (a fixture)

HI = [{"role": "user", "content": "a prompt that is nobody's business"}]


def _record(message="hello %s", args=("world",), **extra) -> logging.LogRecord:
    record = logging.LogRecord(
        "switchboard.test", logging.WARNING, __file__, 1, message, args, None
    )
    record.__dict__.update(extra)
    RequestIdFilter().filter(record)
    return record


def test_it_writes_a_line_as_json_with_timestamp_level_logger_and_message():
    line = json.loads(JsonFormatter().format(_record()))
    assert line["level"] == "WARNING"
    assert line["logger"] == "switchboard.test"
    assert line["message"] == "hello world"
    assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0
    assert "request_id" not in line  # written outside a request


def test_it_adds_the_current_request_id_and_the_extra_fields():
    token = logs.request_id.set("req_abc")
    try:
        line = json.loads(JsonFormatter().format(_record(event="e", status=402)))
    finally:
        logs.request_id.reset(token)
    assert line["request_id"] == "req_abc"
    assert line["event"] == "e" and line["status"] == 402


def test_it_keeps_a_traceback_inside_the_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = _record(message="failed", args=())
        record.exc_info = sys.exc_info()
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in json.loads(text)["exc_info"]


def test_the_text_format_reads_as_one_line_with_the_fields():
    token = logs.request_id.set("req_abc")
    try:
        text = TextFormatter().format(_record(event="e"))
    finally:
        logs.request_id.reset(token)
    assert text.endswith("WARNING switchboard.test hello world request_id=req_abc event=e")


def test_the_setting_is_json_by_default_and_text_when_asked(settings):
    assert settings.LOG_FORMAT == "json"
    assert settings.LOGGING["formatters"]["line"]["()"] is JsonFormatter
    text = logging_config(log_format="text", level="INFO")
    assert text["formatters"]["line"]["()"] is TextFormatter
    # Django's and uvicorn's loggers write through the same handler, not their own.
    assert text["loggers"]["django.server"] == {"handlers": [], "propagate": True}


def test_an_unknown_log_format_is_refused_at_start_up():
    import os
    import subprocess
    import sys

    env = {**os.environ, "LOG_FORMAT": "xml", "DJANGO_SETTINGS_MODULE": "panel.settings"}
    done = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "LOG_FORMAT must be one of json, text" in done.stderr


def test_uvicorns_no_access_log_stays_off_under_the_logging_setting(monkeypatch):
    access = logging.getLogger("uvicorn.access")
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "propagate", False)  # what --no-access-log leaves
    config = logging_config(log_format="json", level="INFO")
    assert config["loggers"]["uvicorn.access"] == {"handlers": [], "propagate": False}
    monkeypatch.setattr(access, "propagate", True)  # no switch: lines go to the root's
    config = logging_config(log_format="json", level="INFO")
    assert config["loggers"]["uvicorn.access"] == {"handlers": [], "propagate": True}


def test_a_gateway_started_with_no_access_log_writes_no_access_line(tmp_path):
    """As docker/Dockerfile starts it: --no-access-log, no --log-level, LOG_LEVEL=INFO."""
    import os
    import subprocess
    import sys

    from tests.servers import free_port, wait_until_serving

    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "INFO", "DATA_DIR": str(tmp_path), "REDIS_URL": ""}
    env.pop("DATABASE_URL", None)
    out = (tmp_path / "out.log").open("w+")
    args = ["panel.asgi:application", "--port", str(port), "--no-access-log", "--lifespan", "off"]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", *args], env=env, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        wait_until_serving(f"http://127.0.0.1:{port}/healthz")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code in (200, 503)
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = [json.loads(line) for line in (tmp_path / "out.log").read_text().splitlines()]
    loggers = {line["logger"] for line in lines}
    assert "uvicorn.error" in loggers  # "Started server process": INFO lines are written
    assert "uvicorn.access" not in loggers


@pytest.mark.django_db(transaction=True)
def test_every_line_of_a_gateway_request_is_json_with_its_request_id(world, log_lines):  # noqa: F811
    reply = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": HI},
    )
    assert reply.status_code == 200
    lines = log_lines.events("gateway_request")  # every line parsed as JSON on the way
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == reply.headers["x-request-id"]
    assert line["level"] == "INFO" and line["logger"] == "switchboard.gateway"
    assert datetime.fromisoformat(line["timestamp"])
    # The access line's fields as they were (issue 3), beside the new ones.
    assert line["model"] == "acme-chat" and line["status"] == "ok"
    assert line["prompt_tokens"] > 0 and line["http_status"] == 200
    assert {"user_id", "upstream_id", "latency_ms", "ttft_ms", "attempts"} <= set(line)
    assert world.alice_key not in log_lines.text


@pytest.mark.django_db(transaction=True)
def test_a_line_logged_inside_a_request_carries_its_id(world, log_lines, monkeypatch):  # noqa: F811
    from ai.gateway import pipeline

    original = pipeline.prepare

    async def prepare(**kwargs):
        logging.getLogger("switchboard.test").warning("inside the request")
        return await original(**kwargs)

    monkeypatch.setattr(pipeline, "prepare", prepare)
    reply = httpx.post(
        f"{world.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {world.alice_key}"},
        json={"model": "acme-chat", "messages": HI},
    )
    inside = [line for line in log_lines.lines() if line["message"] == "inside the request"]
    assert [line["request_id"] for line in inside] == [reply.headers["x-request-id"]]


def test_a_process_long_task_started_inside_a_request_logs_without_its_id():
    import asyncio

    async def request():
        logs.request_id.set("req_first")
        loop = asyncio.get_running_loop()
        writer = loop.create_task(_current_id(), context=logs.outside_requests())
        helper = loop.create_task(_current_id())  # one of the request's own
        return await writer, await helper

    assert asyncio.run(request()) == (None, "req_first")


async def _current_id():
    return logs.request_id.get()
