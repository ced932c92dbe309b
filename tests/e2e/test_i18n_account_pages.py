"""Issue 18: the account pages in a real browser: the usage charts' series named from the
JavaScript catalog."""

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def _sign_in(page, base: str, then: str) -> None:
    page.goto(f"{base}/accounts/login/?next={then}")
    page.fill("#id_login", "alice")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{then}")


def test_the_usage_charts_name_their_series_in_vietnamese(asgi_server, alice, page, browser_errors):
    page.set_extra_http_headers({"Accept-Language": "vi"})
    _sign_in(page, asgi_server.url, "/accounts/usage/")
    page.wait_for_selector("body[data-charts-ready=yes]")
    series = "id => Chart.getChart(document.getElementById(id)).data.datasets[0].label"
    assert page.evaluate(f"({series})('chart-requests')") == "yêu cầu"
    assert page.evaluate(f"({series})('chart-cost')") == "chi phí"
    assert browser_errors == []
