"""The chat page in a real browser: log in, stream, stop, reload, and no model-made script runs."""

import pytest

from tests.ai.conftest import make_model, world  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

XSS = "<script>window.__xss = 1</script><img src=x onerror=window.__xss=2> and **bold**"


@pytest.fixture
def models(world, acme, fake_upstream):  # noqa: F811
    return {
        "slow": make_model(
            "slow", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=60, tokens=12)]
        ),
        "slower": make_model(
            "slower", owner=acme, base_urls=[fake_upstream.base_url(chunk_delay_ms=150, tokens=60)]
        ),
        "echo": make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)]),
    }


def _log_in(page, base_url):
    page.goto(f"{base_url}/chat/")
    page.wait_for_url("**/accounts/login/**")
    page.fill("#id_login", "alice")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/chat/")


def _send(page, model, text):
    page.select_option("#model", str(model.id))
    page.fill("#input", text)
    page.press("#input", "Enter")


def _reply(page):
    return page.locator(".msg.assistant").last


def test_a_user_chats_stops_a_reply_and_finds_the_history_after_a_reload(
    asgi_server, models, page, browser_errors, tmp_path
):
    _log_in(page, asgi_server.url)

    _send(page, models["slow"], "Hello there")
    reply = _reply(page)
    reply.wait_for()
    lengths = []
    while reply.get_attribute("data-streaming") == "yes" or not lengths:
        lengths.append(len(reply.inner_text()))
        page.wait_for_timeout(40)
    steps = sorted(set(lengths))
    assert len(steps) >= 3, f"the reply did not grow in steps: {lengths}"
    assert reply.inner_text().startswith("tok0 tok1")

    page.click("#new-chat")
    _send(page, models["slower"], "A long story please")
    reply = _reply(page)
    page.wait_for_function(
        "(() => { const body = document.querySelector('.msg.assistant:last-child .body');"
        " return body !== null && body.innerText.length > 10; })()"
    )
    page.click("#stop")
    reply.locator(".badge", has_text="stopped").wait_for()
    assert 10 < len(reply.inner_text()) < 60 * 5

    page.reload()
    page.locator("#conversations li").nth(1).wait_for()
    titles = page.locator("#conversations li .title").all_inner_texts()
    assert titles == ["A long story please", "Hello there"]
    page.locator("#conversations li .title", has_text="Hello there").click()
    page.locator(".msg.assistant").first.wait_for()
    assert page.locator(".msg.user").first.inner_text() == "Hello there"
    page.locator("#conversations li .title", has_text="A long story").click()
    page.locator(".msg .badge", has_text="stopped").wait_for()
    page.screenshot(path=tmp_path / "chat.png", full_page=True)
    assert browser_errors == []


def test_model_output_cannot_run_script(asgi_server, models, page, browser_errors):
    _log_in(page, asgi_server.url)
    _send(page, models["echo"], XSS)
    reply = _reply(page)
    page.wait_for_function(
        "!document.querySelector('[data-streaming]') && document.querySelector('.msg.assistant')"
    )
    assert (
        "window.__xss" in reply.inner_text()
        or "onerror" in reply.inner_text()
        or reply.inner_text()
    )
    assert page.evaluate("window.__xss") is None
    assert page.locator(".msg.assistant script").count() == 0
    assert page.locator(".msg.assistant [onerror]").count() == 0
    assert page.locator(".msg.assistant strong").count() >= 1  # markdown still renders


def test_the_chat_page_fits_a_phone(asgi_server, models, page):
    page.set_viewport_size({"width": 390, "height": 844})
    _log_in(page, asgi_server.url)
    _send(page, models["slow"], "Hi from a phone")
    page.wait_for_function(
        "document.querySelector('.msg.assistant') && !document.querySelector('[data-streaming]')"
    )
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391
    assert page.locator("#send").is_visible() and page.locator("#input").is_visible()
    page.click("#toggle-sidebar")
    page.locator("#conversations li .title", has_text="Hi from a phone").wait_for()


def test_the_chat_page_needs_a_login(asgi_server, page):
    page.goto(f"{asgi_server.url}/chat/")
    assert "/accounts/login/" in page.url
