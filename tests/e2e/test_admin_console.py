"""The admin's health columns in a real browser: the badge stylesheet loads and colours them."""

import pytest

from ai.models import HealthStatus
from tests.factories import AIModelFactory, UpstreamFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_badges_are_coloured_and_worded_in_a_browser(
    asgi_server, superuser, page, browser_errors, settings
):
    settings.REDIS_URL = ""  # breakers per process, as on the embedded default
    down = AIModelFactory(name="e2e-down")
    UpstreamFactory(model=down, name="e2e-down-1", health_status=HealthStatus.UNHEALTHY)
    up = AIModelFactory(name="e2e-up")
    UpstreamFactory(model=up, name="e2e-up-1", health_status=HealthStatus.HEALTHY)
    base = asgi_server.url
    page.goto(f"{base}/admin/login/?next=/admin/")
    page.wait_for_url("**/accounts/login/?next=%2Fadmin%2F")
    page.fill("#id_login", "root")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin/")

    page.goto(f"{base}/admin/ai/aimodel/")
    down_badge = page.locator("tr", has_text="e2e-down").locator(".sb-status")
    up_badge = page.locator("tr", has_text="e2e-up").locator(".sb-status")
    assert down_badge.inner_text() == "✗ Unhealthy"
    assert up_badge.inner_text() == "✓ Healthy"
    background = "el => getComputedStyle(el).backgroundColor"
    assert down_badge.evaluate(background) == "rgb(207, 34, 46)"
    assert up_badge.evaluate(background) == "rgb(26, 127, 55)"

    page.goto(f"{base}/admin/ai/upstream/")
    row = page.locator("tr", has_text="e2e-down-1")
    assert row.locator(".field-breaker").inner_text() == "✓ closed"
    assert page.locator("#breaker-scope strong").inner_text() == "this process"
    assert not browser_errors
