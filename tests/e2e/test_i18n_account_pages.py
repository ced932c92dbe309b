"""Issue 18: the account and organisation pages in a real browser: the usage charts' series
named from the JavaScript catalog, and the organisation page's banners in the dark scheme."""

import re

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def _sign_in(page, base: str, then: str) -> None:
    page.goto(f"{base}/accounts/login/?next={then}")
    page.fill("#id_login", "alice")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{then}")


def _luminance(css_colour: str) -> float:
    """Relative luminance (WCAG) of an rgb()/rgba() colour as getComputedStyle gives it."""
    red, green, blue = (int(c) / 255 for c in re.findall(r"\d+", css_colour)[:3])

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * linear(red) + 0.7152 * linear(green) + 0.0722 * linear(blue)


def test_the_usage_charts_name_their_series_in_vietnamese(asgi_server, alice, page, browser_errors):
    page.set_extra_http_headers({"Accept-Language": "vi"})
    _sign_in(page, asgi_server.url, "/accounts/usage/")
    page.wait_for_selector("body[data-charts-ready=yes]")
    series = "id => Chart.getChart(document.getElementById(id)).data.datasets[0].label"
    assert page.evaluate(f"({series})('chart-requests')") == "yêu cầu"
    assert page.evaluate(f"({series})('chart-cost')") == "chi phí"
    assert browser_errors == []


@pytest.mark.parametrize("scheme", ["dark", "light"])
def test_the_organisation_pages_banner_follows_the_colour_scheme(
    asgi_server, acme, alice, page, browser_errors, scheme
):
    page.emulate_media(color_scheme=scheme)
    _sign_in(page, asgi_server.url, "/accounts/orgs/acme/")
    page.fill("#invite-email", "dave@example.com")
    page.locator(".invite-form button[type=submit]").click()
    banner = page.locator(".messages li").first
    banner.wait_for()
    colours = banner.evaluate(
        "el => ({back: getComputedStyle(el).backgroundColor, text: getComputedStyle(el).color})"
    )
    back, text = _luminance(colours["back"]), _luminance(colours["text"])
    if scheme == "dark":
        assert back < 0.05 and text > 0.5, colours
    else:
        assert back > 0.8 and text < 0.1, colours
    assert (max(back, text) + 0.05) / (min(back, text) + 0.05) >= 4.5, colours  # WCAG AA
    assert browser_errors == []
