"""The soak's reduced form (issue 19): the production topology keeps its invariants under faults.

Two web processes, a Celery worker, beat and the instance agent on a scratch
PostgreSQL database and a redis-server of the test's own, under mixed traffic for
40 s while one web process is killed, Redis restarted and PostgreSQL cut. `make soak`
runs the same code for longer with four web processes.
"""

import shutil

import psycopg
import pytest

from tests.soak.run import postgres_admin_url, soak


@pytest.fixture
def soak_servers():
    if shutil.which("redis-server") is None:
        pytest.skip("issue 19: the soak needs the redis-server binary on PATH")
    try:
        psycopg.connect(postgres_admin_url(), connect_timeout=3).close()
    except psycopg.OperationalError:
        pytest.skip("issue 19: the soak needs a PostgreSQL server (CI always has one)")


# It starts five Django processes and runs 40 s of traffic: 60-90 s in all (measured),
# more on a busy one (the suite's 120 s bound is for ordinary tests).
@pytest.mark.timeout(300)
def test_the_topology_keeps_every_invariant_while_a_web_process_redis_and_postgres_fail(
    soak_servers,
):
    report = soak(seconds=40, web=2, workers=1, concurrency=10)

    failed = {check.name: check.detail for check in report.checks if not check.ok}
    assert not failed, failed
    names = {check.name for check in report.checks}
    assert "every admitted request (2xx, 502) has its UsageEvent" in names
    assert "hourly and daily rollups equal the raw events" in names
    assert "no web or worker process doubled its memory" in names
    assert report.faults == ["SIGKILL web-0", "Redis restart", "PostgreSQL cut"]
    # Both web processes and the worker were measured (web-0 before or after its restart).
    assert {name.split("/")[0] for name in report.rss} == {"web-0", "web-1", "worker-0"}
