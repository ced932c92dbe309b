"""The chat page in a real browser while the model's instance starts on demand."""

import pytest

from tests.e2e.test_chat_page import _log_in, _reply, _send
from tests.instances import local_world, stand_in_agent
from tests.instances.test_on_demand import stopped  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)

local, local_server = local_world.local, local_world.local_server
agent, no_agent = stand_in_agent.agent, stand_in_agent.no_agent


def test_it_says_the_model_is_starting_until_the_reply_comes(
    asgi_server,
    stopped,  # noqa: F811
    page,
    browser_errors,
    tmp_path,
):
    stopped.agent.release.clear()  # the start takes its time
    _log_in(page, asgi_server.url)

    _send(page, stopped.model, "Hello")
    reply = _reply(page)
    reply.locator(".body", has_text="Starting the model…").wait_for()
    page.screenshot(path=tmp_path / "starting.png")
    stopped.agent.release.set()
    page.wait_for_function(
        "document.querySelector('.msg.assistant') && !document.querySelector('[data-streaming]')"
    )

    assert reply.inner_text().startswith("tok0 ")
    assert "Starting" not in reply.inner_text()
    assert browser_errors == []
