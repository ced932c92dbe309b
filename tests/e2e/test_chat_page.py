"""The chat page in a real browser: log in, stream, stop, reload, and no model-made script runs."""

import asyncio
import threading

import pytest

from ai.consumers import ChatConsumer
from ai.models import Message
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
    assert page.locator(".msg.user .body").first.inner_text() == "Hello there"
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


def test_the_chat_page_fits_a_phone(asgi_server, models, page, tmp_path):
    """At 390 px the sidebar opens and closes, and never hides its own menu button.

    Check list (screenshots phone-*.png in tmp_path):
    - phone-1-chat.png: a reply fits the width; the menu button is at the top left.
    - phone-2-sidebar.png: the sidebar slides in below the menu button, the page is dimmed.
    - "New chat" closes the sidebar (phone-3-new-chat.png: an empty chat, no sidebar).
    - the menu button, a tap on the dimmed page and Esc each close the sidebar.
    """
    page.set_viewport_size({"width": 390, "height": 844})
    _log_in(page, asgi_server.url)
    _send(page, models["slow"], "Hi from a phone")
    page.wait_for_function(
        "document.querySelector('.msg.assistant') && !document.querySelector('[data-streaming]')"
    )
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 391
    assert page.locator("#send").is_visible() and page.locator("#input").is_visible()
    assert not page.locator("#sidebar").is_visible()
    page.screenshot(path=tmp_path / "phone-1-chat.png")

    page.click("#toggle-sidebar")
    page.locator("#conversations li .title", has_text="Hi from a phone").wait_for()
    page.wait_for_timeout(300)  # the slide
    page.screenshot(path=tmp_path / "phone-2-sidebar.png")
    assert _on_top(page, "#toggle-sidebar"), "the sidebar covers its own menu button"
    assert _on_top(page, "#new-chat")
    assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "true"

    page.click("#new-chat")
    page.locator("#sidebar").wait_for(state="hidden")
    assert page.locator(".msg").count() == 0
    page.screenshot(path=tmp_path / "phone-3-new-chat.png")

    for close in (
        lambda: page.click("#toggle-sidebar"),
        lambda: page.mouse.click(370, 500),  # the dimmed page beside the sidebar
        lambda: page.keyboard.press("Escape"),
    ):
        page.click("#toggle-sidebar")
        page.locator("#sidebar").wait_for(state="visible")
        page.wait_for_timeout(300)
        close()
        page.locator("#sidebar").wait_for(state="hidden")
        assert page.get_attribute("#toggle-sidebar", "aria-expanded") == "false"


def _on_top(page, selector: str) -> bool:
    """Whether a tap at the middle of the element reaches it (nothing covers it)."""
    return page.evaluate(
        """(selector) => {
            const el = document.querySelector(selector);
            const r = el.getBoundingClientRect();
            const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
            return hit !== null && (hit === el || el.contains(hit));
        }""",
        selector,
    )


def test_the_chat_page_needs_a_login(asgi_server, page):
    page.goto(f"{asgi_server.url}/chat/")
    assert "/accounts/login/" in page.url


MARKDOWN = """Here is the code:

```python
def add(a, b):
    return a + b
```

![tracker](https://tracker.example/pixel.png) ![ours](/static/chat/logo.png)
<img src="//cdn.example/x.png" alt="cdn"> <img src="data:image/png;base64,iVBORw0KGgo=" alt="inline">
<p style="background:url(https://tracker.example/bg.png)">styled</p>
"""


@pytest.fixture
def stored(world, alice):  # noqa: F811
    """A conversation of alice's whose reply holds a code block and images from everywhere."""
    from ai.models import Conversation, Message

    conversation = Conversation.objects.create(user=alice, title="Code and images")
    Message.objects.create(conversation=conversation, role="user", content="Show me code")
    Message.objects.create(conversation=conversation, role="assistant", content=MARKDOWN)
    return conversation


def test_code_is_highlighted_with_a_copy_button_and_foreign_images_are_blocked(
    asgi_server, stored, page, browser_errors, tmp_path
):
    """A stored reply with a code block and images from this site and others.

    Check list (code.png in tmp_path):
    - the Python block is coloured (highlight.js spans) and has a "Copy" button at its top right;
    - "Copy" puts exactly the code on the clipboard and says "Copied";
    - the tracker, protocol-relative and data: images lose their address and read
      "[image blocked: …]"; the image from this site keeps it; no inline style survives.
    """
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    _log_in(page, asgi_server.url)
    page.locator("#conversations li .title", has_text="Code and images").click()
    code = page.locator(".msg.assistant pre code")
    code.wait_for()
    assert "hljs" in code.get_attribute("class")
    assert page.locator(".msg.assistant pre code .hljs-keyword").first.inner_text() == "def"
    page.click(".msg.assistant pre .copy")
    page.locator(".msg.assistant pre .copy", has_text="Copied").wait_for()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "def add(a, b):\n    return a + b\n"

    images = page.eval_on_selector_all(
        ".msg.assistant img", "els => els.map(e => [e.getAttribute('src'), e.alt])"
    )
    assert images == [
        [None, "[image blocked: tracker]"],
        ["/static/chat/logo.png", "ours"],
        [None, "[image blocked: cdn]"],
        [None, "[image blocked: inline]"],
    ]
    assert page.locator(".msg.assistant [style]").count() == 0
    page.screenshot(path=tmp_path / "code.png")
    assert [e for e in browser_errors if "logo.png" not in e] == []


def test_regenerate_and_edit_and_resend(asgi_server, models, page, browser_errors, tmp_path):
    """The echo model answers with the conversation it was sent, so each reply shows what
    the model saw.

    Check list (edit.png in tmp_path):
    - "Regenerate" under the last reply replaces it: still one reply, the page and the
      stored conversation agree after a reload;
    - "Edit" on the first message opens a box; "Save and send" drops everything after
      it and the new reply shows the model saw only the edited text.
    """
    _log_in(page, asgi_server.url)
    _send(page, models["echo"], "one")
    _wait_for_reply(page)
    page.fill("#input", "two")
    page.press("#input", "Enter")
    page.locator(".msg.assistant").nth(1).wait_for()
    _wait_for_reply(page)
    assert page.locator(".msg.assistant .regenerate").count() == 1

    page.click(".msg.assistant .regenerate")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2")
    _wait_for_reply(page)
    assert page.locator(".msg").count() == 4

    page.locator(".msg.user .edit").first.click()
    page.fill(".msg.user form.edit textarea", "uno")
    page.click(".msg.user form.edit button[type=submit]")
    page.wait_for_function("document.querySelectorAll('.msg').length === 2")
    _wait_for_reply(page)
    page.screenshot(path=tmp_path / "edit.png")
    reply = _reply(page).locator(".body").inner_text()
    assert '"uno"' in reply and '"two"' not in reply and '"one"' not in reply

    page.reload()
    page.locator("#conversations li .title").first.click()
    page.locator(".msg.assistant").first.wait_for()
    assert page.locator(".msg.user .body").all_inner_texts() == ["uno"]
    assert page.locator(".msg.assistant").count() == 1
    assert browser_errors == []


def _wait_for_reply(page):
    page.wait_for_function(
        "document.querySelector('.msg.assistant') && !document.querySelector('[data-streaming]')"
        " && document.body && !document.body.classList.contains('busy')"
    )


def test_titles_search_picker_and_plain_errors(
    asgi_server,
    models,
    world,  # noqa: F811
    acme,
    fake_upstream,
    page,
    tmp_path,  # noqa: F811
):
    """Check list (search.png in tmp_path):
    - a conversation is titled by the first line of its first message, not its first word;
    - typing in the search box leaves only the matching conversations;
    - the model picker offers chat models only (no embedding or image model);
    - a model whose provider rate-limits us says the model is unavailable, not "your limit".
    """
    busy = make_model("busy", owner=acme, base_urls=[fake_upstream.base_url(status=429)])
    _log_in(page, asgi_server.url)
    offered = page.locator("#model option").all_inner_texts()
    assert world.chat.display_name in offered
    assert world.embed.display_name not in offered and world.image.display_name not in offered

    _send(page, models["echo"], "Plan a trip to Hanoi\nwith three days in Ha Long Bay")
    _wait_for_reply(page)
    page.click("#new-chat")
    _send(page, busy, "hi")
    _wait_for_reply(page)
    error = _reply(page).locator(".badge").inner_text()
    assert "unavailable" in error and "usage limit" not in error

    page.locator("#conversations li").nth(1).wait_for()
    titles = page.locator("#conversations li .title").all_inner_texts()
    assert titles == ["hi", "Plan a trip to Hanoi"]
    page.fill("#search", "hanoi")
    page.wait_for_function(
        "document.querySelectorAll('#conversations li:not([hidden])').length === 1"
    )
    assert page.locator("#conversations li:not([hidden]) .title").inner_text() == titles[1]
    page.fill("#search", "nothing like this")
    page.locator("#no-match").wait_for()
    page.screenshot(path=tmp_path / "search.png")


def test_dark_mode_and_keyboard_shortcuts(asgi_server, models, page, tmp_path):
    """Check list (dark.png and shortcuts.png in tmp_path):
    - with the system in dark mode the page is dark (and light when it is light);
    - "?" opens the list of shortcuts, Esc closes it;
    - Ctrl+Shift+O starts a new chat; Esc stops a reply that is streaming.
    """
    page.emulate_media(color_scheme="dark")
    _log_in(page, asgi_server.url)
    background = "getComputedStyle(document.body).backgroundColor"
    assert page.evaluate(background) == "rgb(13, 17, 23)"
    page.screenshot(path=tmp_path / "dark.png")

    page.locator("#messages").click()
    page.keyboard.press("?")
    page.locator("#shortcuts").wait_for()
    assert "New chat" in page.locator("#shortcuts").inner_text()
    page.screenshot(path=tmp_path / "shortcuts.png")
    page.keyboard.press("Escape")
    page.locator("#shortcuts").wait_for(state="hidden")

    _send(page, models["slower"], "A long story please")
    page.wait_for_function(
        "(() => { const b = document.querySelector('.msg.assistant .body');"
        " return b !== null && b.innerText.length > 10; })()"
    )
    page.keyboard.press("Escape")
    _reply(page).locator(".badge", has_text="stopped").wait_for()
    page.keyboard.press("Control+Shift+O")
    page.wait_for_function("document.querySelectorAll('.msg').length === 0")

    page.emulate_media(color_scheme="light")
    assert page.evaluate(background) == "rgb(246, 247, 249)"


def test_a_question_asked_while_the_socket_opens_is_sent_when_it_opens(
    asgi_server, models, page, browser_errors, monkeypatch
):
    # A slow network, or a server busy at the time: the page is up before its socket.
    # The question used to be dropped, and the page stayed busy with no reply.
    accept = ChatConsumer.connect

    async def slow_connect(self):
        await asyncio.sleep(1.5)
        await accept(self)

    monkeypatch.setattr(ChatConsumer, "connect", slow_connect)
    _log_in(page, asgi_server.url)
    _send(page, models["echo"], "Are you there?")
    _wait_for_reply(page)
    assert "Are you there?" in _reply(page).inner_text()
    assert page.locator(".msg.user .body").all_inner_texts() == ["Are you there?"]
    assert browser_errors == []


def test_stop_before_the_socket_opens_takes_the_question_back(
    asgi_server, models, page, browser_errors, monkeypatch
):
    opened = threading.Event()
    accept = ChatConsumer.connect

    async def slow_connect(self):
        await asyncio.sleep(1.5)
        await accept(self)
        opened.set()

    monkeypatch.setattr(ChatConsumer, "connect", slow_connect)
    _log_in(page, asgi_server.url)
    _send(page, models["echo"], "Never mind")
    page.click("#stop")
    assert page.locator("#input").input_value() == "Never mind"
    assert page.locator(".msg").count() == 0
    assert not page.locator("#stop").is_visible()
    assert opened.wait(10)
    page.wait_for_timeout(500)  # what the socket would carry once open
    assert page.locator(".msg").count() == 0
    assert Message.objects.count() == 0
    assert browser_errors == []


def test_a_dropped_socket_stops_the_reply_and_the_page_takes_questions_again(
    asgi_server, models, page, browser_errors
):
    routes = []

    def through_to_the_server(route):  # runs in Playwright's thread
        route.connect_to_server()
        routes.append(route)

    page.route_web_socket("**/ws/chat/", through_to_the_server)
    _log_in(page, asgi_server.url)
    _send(page, models["slower"], "A long story please")
    page.wait_for_function(
        "(() => { const body = document.querySelector('.msg.assistant:last-child .body');"
        " return body !== null && body.innerText.length > 10; })()"
    )
    page._thread.call(routes[-1].close)  # the network drops the socket mid-reply

    _reply(page).locator(".badge", has_text="stopped").wait_for()
    page.wait_for_function("document.body && !document.body.classList.contains('busy')")
    assert page.locator("#send").is_visible() and not page.locator("#stop").is_visible()
    _send(page, models["echo"], "Still there?")
    page.wait_for_function(
        "(() => { const last = document.querySelector('.msg.assistant:last-child');"
        " return last && !last.dataset.streaming && last.innerText.includes('Still there?'); })()"
    )
    assert len(routes) == 2  # the page opened a new socket
    # The server kept the cut reply, stopped, in the same conversation.
    page.reload()
    page.locator("#conversations li .title", has_text="A long story").click()
    page.locator(".msg.assistant .badge", has_text="stopped").wait_for()
    assert page.locator(".msg.user .body").all_inner_texts() == [
        "A long story please",
        "Still there?",
    ]
    assert browser_errors == []
