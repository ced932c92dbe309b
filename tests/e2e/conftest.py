"""Browser fixtures for end-to-end tests: Debian's Chromium driven by Playwright's sync API.

Playwright cannot download its own browser on these machines, so it launches the one
`make browser` installs from Debian. One browser serves the whole session; each test gets
a fresh context and page, and leaves a screenshot of where it ended in its ``tmp_path``.
"""

import asyncio
import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def _playwright_session():
    """Chromium under Playwright for the session, and the event loop Playwright runs on."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the e2e tests need Debian's Chromium. Run `make browser`.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        # Every sync call leaves Playwright's loop marked as running in this thread.
        loop = asyncio.get_running_loop()
        asyncio._set_running_loop(None)  # until an e2e test uses it, see _playwright_turn
        try:
            yield browser, loop
        finally:
            asyncio._set_running_loop(loop)
            browser.close()
    # Leaving sync_playwright() ran the loop to its end, which cleared the mark.


@pytest.fixture(scope="session")
def browser(_playwright_session):
    return _playwright_session[0]


@pytest.fixture(autouse=True)
def _playwright_turn(_playwright_session, monkeypatch):
    """Lends the thread to Playwright for one e2e test, and takes it back after.

    Playwright's sync API keeps its event loop marked as running in the main thread
    between calls. Left so after the e2e tests, pytest-asyncio could not run the later
    async tests' loops; so the mark is set only while an e2e test runs. Meanwhile Django
    takes the thread for an async one and refuses ORM calls from it, which are in fact
    plain sync calls here: DJANGO_ALLOW_ASYNC_UNSAFE lets them through for the test.
    """
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    asyncio._set_running_loop(_playwright_session[1])
    try:
        yield
    finally:
        asyncio._set_running_loop(None)


@pytest.fixture
def page(browser, tmp_path):
    """A page in a fresh browser context; its final state is saved to tmp_path/final.png."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    try:
        yield page
    finally:
        try:
            page.screenshot(path=tmp_path / "final.png", full_page=True)
        finally:
            context.close()


@pytest.fixture
def browser_errors(page):
    """What the page reported as errors: console errors and uncaught exceptions.

    Chromium's own request for /favicon.ico is left out: the admin declares no icon.
    """
    errors: list[str] = []

    def on_console(msg) -> None:
        if msg.type == "error" and not msg.location.get("url", "").endswith("/favicon.ico"):
            errors.append(f"console: {msg.text} at {msg.location.get('url')}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    return errors
