"""The xdist workers' own DATA_DIR and Redis database (tests/workers.py)."""

import os

import pytest
from django.conf import settings

from tests import workers
from tests.servers import LOCAL_REDIS


def test_a_redis_url_moves_up_by_the_workers_number_and_keeps_the_rest():
    shift = workers.shifted_redis_url
    assert shift("redis://127.0.0.1:6379/0", 1) == "redis://127.0.0.1:6379/1"
    assert shift("redis://:pw@cache:6380/3?ssl_cert_reqs=none", 2) == (
        "redis://:pw@cache:6380/5?ssl_cert_reqs=none"
    )
    assert shift("rediss://cache", 1) == "rediss://cache/1"
    assert shift("redis://cache/15", 1) == "redis://cache/0"  # sixteen databases


def test_the_worker_number_comes_from_xdist(monkeypatch):
    for value, number in (("gw0", 0), ("gw3", 3), ("", 0), ("master", 0)):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", value)
        assert workers.worker_number() == number


def test_an_xdist_worker_not_set_apart_is_refused(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    monkeypatch.setenv(workers.ISOLATED, "gw1")
    with pytest.raises(pytest.UsageError, match="-p tests.workers"):
        workers.check_isolated()
    monkeypatch.setenv(workers.ISOLATED, "gw7")
    workers.check_isolated()


def test_this_process_has_its_own_data_dir_and_redis_database_under_xdist():
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        assert LOCAL_REDIS == "redis://127.0.0.1:6379/0"
        return
    number = workers.worker_number()
    assert settings.DATA_DIR.parts[-2:] == ("test-workers", worker)
    assert f"redis://127.0.0.1:6379/{number}" == LOCAL_REDIS
    if settings.REDIS_URL:
        assert settings.REDIS_URL.endswith(f"/{number}") and settings.CELERY_BROKER_URL.endswith(
            f"/{number}"
        )


def test_each_workers_instance_ports_are_its_own(monkeypatch):
    # A worker's instance ports: its agents' ranges (from 21000 and 22000) and the runs of
    # free ports tests pick (from 23000), all within its 21000-23999 moved up.
    spans = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        span = range(workers.worker_port(21000), workers.worker_port(24000))
        for first in (21000, 22000):
            low, high = map(int, workers.port_range(first).split("-"))
            assert span.start <= low and high < span.stop
        spans.append(set(span))
    assert min(spans[0]) == 21000 and max(spans[2]) < 32768  # below the ephemeral ports
    assert not spans[0] & spans[1] and not spans[1] & spans[2] and not spans[0] & spans[2]
