"""The admin's home and usage dashboards in a real browser: Chart.js draws the rollups."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from ai.models import UsageEvent
from ai.services import usage_rollup
from tests.factories import AIModelFactory

pytestmark = pytest.mark.django_db(transaction=True)

CHART_JS = "/static/vendor/chartjs/chart-4.6.1.umd.min.js"
CANVASES = (
    "#chart-requests",
    "#chart-errors",
    "#chart-latency",
    "#chart-ttft",
    "#chart-tokens",
    "#chart-cost",
)
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def rolled_up(alice, bob):
    """Three requests by alice this hour, 45 tokens and 0.75 credits; a failed one by bob."""
    model = AIModelFactory(name="e2e-chat")
    # All in the current hour's first seconds: one rollup row per user and period, so the
    # percentiles below are exact whatever the time of day.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for user, n in ((alice, 5), (alice, 20), (alice, 40), (bob, 10)):
        UsageEvent.objects.create(
            created_at=hour + timedelta(milliseconds=n),
            request_id=f"req_e2e_{user.pk}_{n}",
            user=user,
            model=model,
            route="chat.completions",
            status="ok" if user == alice else "upstream_error",
            prompt_tokens=10,
            completion_tokens=5,
            cost=Decimal("0.25") if user == alice else Decimal(0),
            latency_ms=100 * n,
            ttft_ms=n,
        )
    assert usage_rollup() > 0


def _log_in_as_root(page, base_url: str) -> None:
    # The admin's login sends the visitor to the sign-in page (django-allauth's).
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.wait_for_url("**/accounts/login/?next=%2Fadmin%2F")
    page.fill("#id_login", "root")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/admin/")


def _open_dashboard(page, base_url: str) -> None:
    with page.expect_response(lambda r: r.url.endswith(CHART_JS)) as chart_js:
        page.get_by_role("link", name="Usage dashboard").click()
    assert chart_js.value.status == 200
    page.wait_for_url(f"{base_url}/admin/usage/")
    page.wait_for_function('document.body?.dataset.chartsReady === "yes"', timeout=10_000)


def test_the_usage_dashboard_draws_charts_from_real_rollups_in_a_browser(
    asgi_server, superuser, rolled_up, page, browser_errors, tmp_path
):
    _log_in_as_root(page, asgi_server.url)
    _open_dashboard(page, asgi_server.url)

    for canvas in CANVASES:
        box = page.locator(canvas).bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0, canvas
    totals = page.locator("#totals").inner_text()
    assert "Requests: 4" in totals and "Errors: 1 (25.0%)" in totals and "Cost: 0.75" in totals
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)

    # A filter: alice among the top users narrows every chart and total to her requests.
    page.locator(".sb-card", has_text="Top users").get_by_role("link", name="alice").click()
    page.wait_for_url("**/admin/usage/?user=*")
    page.wait_for_function('document.body?.dataset.chartsReady === "yes"', timeout=10_000)
    totals = page.locator("#totals").inner_text()
    assert "Requests: 3" in totals and "Tokens: 45" in totals and "Errors: 0" in totals
    assert "Latency p50/p95: 2000.0 / 3800.0 ms" in totals  # of 500, 2000, 4000 ms
    assert "Only user alice." in page.locator("#scope").inner_text()
    # The period and view: the last 24 hours, hourly.
    page.select_option("#id_period", "24h")
    page.select_option("#id_view", "hour")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**period=24h**")
    page.wait_for_function('document.body?.dataset.chartsReady === "yes"', timeout=10_000)
    labels = page.evaluate('JSON.parse(document.getElementById("usage-data").textContent).labels')
    assert len(labels) == 24
    assert "Requests: 3" in page.locator("#totals").inner_text()
    assert browser_errors == []


def test_the_admin_home_shows_the_last_24_hours_in_a_browser(
    asgi_server, superuser, rolled_up, page, browser_errors, tmp_path
):
    page.set_viewport_size(PHONE)
    _log_in_as_root(page, asgi_server.url)
    page.screenshot(path=tmp_path / "home-phone.png", full_page=True)

    stats = page.locator("#dashboard-stats").inner_text()
    assert "4" in stats and "1 (25.0%)" in stats
    assert page.locator("#top-users").get_by_role("link", name="alice").is_visible()
    widths = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["inner"] + 1, widths
    assert browser_errors == []


def test_the_usage_dashboard_fits_a_phone_screen(
    asgi_server, superuser, rolled_up, page, browser_errors
):
    page.set_viewport_size(PHONE)
    _log_in_as_root(page, asgi_server.url)
    _open_dashboard(page, asgi_server.url)

    widths = page.evaluate(
        "({scroll: document.documentElement.scrollWidth, inner: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["inner"] + 1, widths
    for canvas in CANVASES:
        box = page.locator(canvas).bounding_box()
        assert box is not None and box["width"] > 0, canvas
        assert box["x"] + box["width"] <= PHONE["width"] + 1, (canvas, box)
    assert browser_errors == []
