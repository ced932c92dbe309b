"""Issue 18: the chat page in Vietnamese in a real browser, chat.js's words included."""

import pytest

from tests.ai.conftest import make_model, world  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_chat_page_and_its_script_speak_vietnamese(
    asgi_server,
    world,  # noqa: F811
    acme,
    fake_upstream,
    page,
    browser_errors,
):
    make_model("echo", owner=acme, base_urls=[fake_upstream.base_url(echo=1)])
    page.set_extra_http_headers({"Accept-Language": "vi"})
    page.goto(f"{asgi_server.url}/chat/")
    page.wait_for_url("**/accounts/login/**")
    assert page.inner_text("h1") == "Đăng nhập"
    page.fill("#id_login", "alice")
    page.fill("#id_password", "pw-for-tests")
    page.click("button[type=submit]")
    page.wait_for_url(f"{asgi_server.url}/chat/")
    assert page.inner_text("#new-chat") == "+ Trò chuyện mới"
    assert page.evaluate("gettext('Copy')") == "Sao chép"
    page.fill("#input", "xin chào")
    page.press("#input", "Enter")
    page.wait_for_selector(".msg.user .actions button.edit")
    assert page.inner_text(".msg.user .actions button.edit") == "Sửa"
    assert browser_errors == []
