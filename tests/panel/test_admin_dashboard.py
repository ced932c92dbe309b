"""The admin home's dashboard and the usage page: filters, periods, CSV, bad input."""

import csv
import io
from decimal import Decimal

import pytest
from django.urls import reverse

from accounts.services import apikey_create
from ai.admin_dashboard import csv_cell
from ai.models import HealthStatus, Instance, InstanceStatus
from ai.services import usage_rollup
from tests.factories import (
    AIModelFactory,
    OrganisationFactory,
    UpstreamFactory,
    UsageEventFactory,
    UserFactory,
)
from tests.panel.test_admin_console import shared_breakers  # noqa: F401, F811 (a fixture)

pytestmark = pytest.mark.django_db

USAGE = "/admin/usage/"


@pytest.fixture
def usage(alice, bob, acme):
    """Alice (acme, with a key) on "chat": 3 requests, 1 failed; bob on "embed": 1 request."""
    chat, embed = AIModelFactory(name="chat"), AIModelFactory(name="embed")
    key, _ = apikey_create(user=alice, name="k")
    alices = {"user": alice, "model": chat, "organisation": acme, "api_key": key}
    for latency, status in ((100, "ok"), (300, "ok"), (9000, "upstream_error")):
        UsageEventFactory(**alices, status=status, latency_ms=latency)
    UsageEventFactory(user=bob, model=embed, cost=Decimal("1.50"), latency_ms=50, ttft_ms=20)
    usage_rollup()
    return {"chat": chat, "embed": embed, "key": key}


@pytest.fixture
def staff_client(client, superuser):
    client.force_login(superuser)
    return client


# --- Home -------------------------------------------------------------------------------


def test_the_home_shows_the_last_24_hours(staff_client, usage):
    page = staff_client.get(reverse("admin:index")).content.decode()
    stats = page[page.index('id="dashboard-stats"') : page.index('id="top-models"')]
    assert "<strong>4</strong>" in stats  # requests
    assert "1 (25.0%)" in stats  # errors (rate)
    # Two rollup rows merged, weighted by successful requests: alice's p50 200 and p95 290
    # (of 100 and 300 ms) twice, bob's 50 once.
    assert "150.0 / 210.0 ms" in stats
    assert "20.0 / 20.0 ms" in stats  # TTFT: bob's only
    assert "1.8" in stats  # spend: 0.30 + 1.50
    assert reverse("usage-dashboard") in page
    top_models = page[page.index('id="top-models"') : page.index('id="top-users"')]
    assert top_models.index("embed") < top_models.index("chat")  # by spend


def test_the_home_links_unhealthy_upstreams_and_lists_running_instances(staff_client):
    sick = UpstreamFactory(name="sick", health_status=HealthStatus.UNHEALTHY)
    UpstreamFactory(name="well", health_status=HealthStatus.HEALTHY)
    UpstreamFactory(name="off", health_status=HealthStatus.UNHEALTHY, is_enabled=False)
    Instance.objects.create(name="llama-1", status=InstanceStatus.RUNNING)
    Instance.objects.create(name="llama-2", status=InstanceStatus.STOPPED)

    page = staff_client.get(reverse("admin:index")).content.decode()

    upstreams = page[page.index('id="unhealthy-upstreams"') : page.index('id="running-instances"')]
    assert reverse("admin:ai_upstream_change", args=[sick.pk]) in upstreams
    assert "well" not in upstreams and "off" not in upstreams
    instances = page[page.index('id="running-instances"') :]
    assert "llama-1" in instances and "llama-2" not in instances


def test_the_home_costs_a_bounded_number_of_queries(
    staff_client, usage, django_assert_max_num_queries
):
    staff_client.get(reverse("admin:index"))  # the session and the like, once
    for i in range(15):
        user, model = UserFactory(), AIModelFactory()
        UsageEventFactory(user=user, model=model, organisation=OrganisationFactory(), latency_ms=i)
        UpstreamFactory(model=model, health_status=HealthStatus.UNHEALTHY)
        Instance.objects.create(name=f"running-{i}", status=InstanceStatus.RUNNING)
    usage_rollup()
    with django_assert_max_num_queries(16):
        assert staff_client.get(reverse("admin:index")).status_code == 200


def test_the_admin_pages_are_for_staff_only(client, alice, usage):
    assert client.get(USAGE)["Location"].startswith("/admin/login/")
    client.force_login(alice)
    for url in (USAGE, f"{USAGE}?format=csv", reverse("admin:index")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


# --- The usage page ---------------------------------------------------------------------


def _data(client, **params):
    response = client.get(USAGE, params)
    assert response.status_code == 200, response.content[:500]
    return response.context["data"]


@pytest.mark.parametrize(
    ("filter_of", "requests", "cost"),
    [
        (lambda u, f: {"user": u["alice"].pk}, 3, 0.3),
        (lambda u, f: {"user": u["bob"].pk}, 1, 1.5),
        (lambda u, f: {"organisation": u["acme"].pk}, 3, 0.3),
        (lambda u, f: {"api_key": f["key"].pk}, 3, 0.3),
        (lambda u, f: {"model": f["embed"].pk}, 1, 1.5),
        (lambda u, f: {"model": f["embed"].pk, "user": u["alice"].pk}, 0, 0),
        (lambda u, f: {}, 4, 1.8),
    ],
)
def test_filters_restrict_the_usage_page_to_their_rows(
    staff_client, usage, alice, bob, acme, filter_of, requests, cost
):
    params = filter_of({"alice": alice, "bob": bob, "acme": acme}, usage)
    data = _data(staff_client, **params)
    assert data["totals"]["requests"] == requests and data["totals"]["cost"] == cost
    assert sum(data["requests"]) == requests


def test_the_page_shows_error_rate_and_percentiles(staff_client, usage, alice):
    data = _data(staff_client, user=alice.pk, period="24h", view="hour")
    assert data["totals"]["error_rate"] == pytest.approx(33.33)
    # One rollup row (alice, chat, acme, key): exact, over her two successful requests.
    assert data["totals"]["latency_p50_ms"] == 200.0
    assert data["totals"]["latency_p95_ms"] == 290.0
    assert data["totals"]["ttft_p50_ms"] is None
    assert [rate for rate in data["error_rate"] if rate is not None] == [pytest.approx(33.33)]


@pytest.mark.parametrize(
    ("params", "buckets"),
    [
        ({"period": "24h"}, 24),  # hourly by default for a day
        ({"period": "24h", "view": "day"}, 2),
        ({"period": "7d"}, 7),
        ({"period": "7d", "view": "hour"}, 168),
        ({"period": "30d"}, 30),
        ({"period": "90d"}, 90),
        ({}, 7),
    ],
)
def test_periods_and_views_give_hourly_or_daily_buckets(staff_client, usage, params, buckets):
    data = _data(staff_client, **params)
    assert len(data["labels"]) == buckets
    assert sum(data["requests"]) == 4


def test_the_csv_matches_the_table(staff_client, usage, alice):
    params = {"user": alice.pk, "period": "30d"}
    page = staff_client.get(USAGE, params)
    response = staff_client.get(USAGE, {**params, "format": "csv"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="usage-30d-day-')
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == page.context["header"]
    table = [["" if v is None else str(v) for v in row] for row in page.context["table"]]
    assert rows[1:] == table and len(table) == 1
    assert rows[1][2:5] == ["chat", "3", "1"]
    html = page.content.decode()
    assert all(f"<td>{value}</td>" in html for value in table[0] if value)


def test_the_csv_disarms_formulas(staff_client, alice):
    model = AIModelFactory(name="=HYPERLINK(1)")
    UsageEventFactory(user=alice, model=model)
    usage_rollup()
    response = staff_client.get(USAGE, {"format": "csv"})
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[1][2] == "'=HYPERLINK(1)"
    for value in ("+1", "-1", "@x", "\tx", "=x"):
        assert csv_cell(value) == "'" + value
    assert csv_cell("a=b") == "a=b" and csv_cell(None) == "" and csv_cell(3) == "3"


@pytest.mark.parametrize(
    "params",
    [
        {"user": "99999999999999999999999999"},
        {"user": str(2**63)},
        {"model": "1\x00"},
        {"organisation": "acme"},
        {"api_key": "-3"},
        {"api_key": "1.5"},
        {"period": "1y"},
        {"view": "minute"},
        {"format": "xlsx"},
        {"period": "\x00", "format": "csv"},
    ],
)
def test_bad_filters_give_the_page_with_an_error(staff_client, usage, params):
    response = staff_client.get(USAGE, params)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert 'id="filter-errors"' in html and "This filter was left out" in html
    # The valid filters still apply: here none, so everything is shown.
    assert response.context["data"]["totals"]["requests"] == 4


def test_a_filter_on_a_deleted_row_says_so(staff_client, usage, bob):
    bob_id = bob.pk
    bob.delete()
    response = staff_client.get(USAGE, {"user": bob_id})
    assert response.status_code == 200
    assert response.context["data"]["totals"]["requests"] == 1
    assert "Only user (deleted)" in response.content.decode()


def test_the_usage_page_costs_a_bounded_number_of_queries(
    staff_client, usage, alice, django_assert_max_num_queries
):
    staff_client.get(USAGE)  # the session and the like, once
    for i in range(15):
        UsageEventFactory(organisation=OrganisationFactory(), latency_ms=i)
    usage_rollup()
    filters = {"user": alice.pk, "model": usage["chat"].pk, "organisation": 1, "api_key": 1}
    for params in ({}, {"period": "90d", "view": "hour", **filters}):
        with django_assert_max_num_queries(20):
            assert staff_client.get(USAGE, params).status_code == 200


def test_the_home_lists_open_breakers_from_the_shared_state(staff_client, shared_breakers):  # noqa: F811
    import time

    from ai.gateway import router

    cooling = UpstreamFactory(name="cooling-upstream")
    UpstreamFactory(name="quiet-upstream")
    shared_breakers.hset(router.OPEN_KEY, cooling.pk, time.time() + 60)

    html = staff_client.get(reverse("admin:index")).content.decode()

    breakers = html.split('id="open-breakers"')[1].split("</table>")[0]
    assert "cooling-upstream" in breakers and "open" in breakers
    assert "quiet-upstream" not in breakers
    assert "(all replicas (Redis))" in breakers


def test_the_home_says_when_redis_is_unreachable_for_breakers(staff_client, shared_breakers):  # noqa: F811
    shared_breakers.down = True
    html = staff_client.get(reverse("admin:index")).content.decode()
    breakers = html.split('id="open-breakers"')[1].split("</table>")[0]
    assert "(unknown)" in breakers and "Redis is unreachable" in breakers


def test_the_home_lists_this_processs_open_breakers_without_redis(staff_client, settings):
    import time

    from ai.gateway import router

    settings.REDIS_URL = ""
    cooling = UpstreamFactory(name="cooling-upstream")
    UpstreamFactory(name="quiet-upstream")
    router.breaker.open_until[cooling.pk] = time.time() + 60

    html = staff_client.get(reverse("admin:index")).content.decode()

    breakers = html.split('id="open-breakers"')[1].split("</table>")[0]
    assert "(this process)" in breakers
    assert "cooling-upstream" in breakers and "open" in breakers
    assert "quiet-upstream" not in breakers
