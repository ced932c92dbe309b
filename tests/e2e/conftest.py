"""Browser fixtures for end-to-end tests: Debian's Chromium driven by Playwright's sync API.

Playwright cannot download its own browser on these machines, so it launches the one
`make browser` installs from Debian. One browser serves the whole session; each test gets
a fresh context and page, and leaves a screenshot of where it ended in its ``tmp_path``.

Playwright's sync API runs its own event loop in the thread that starts it and keeps
that loop marked as running there between calls. In the test thread that would stop
pytest-asyncio from running the async tests' loops and make Django refuse plain ORM
calls, so Playwright gets a thread of its own: the tests hold `Remote` stand-ins that
run every call in that thread and wait for the answer. Event handlers (`page.on`) and
predicates (`expect_response`) run in Playwright's thread, on Playwright's objects.
"""

import os
from concurrent.futures import ThreadPoolExecutor
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


class PlaywrightThread:
    """The one thread that may touch Playwright's sync objects."""

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")

    def call(self, function, *args, **kwargs):
        """Runs function in Playwright's thread and returns (or raises) what it did."""
        return self.executor.submit(function, *args, **kwargs).result()

    def close(self):
        self.executor.shutdown(wait=True)


class Remote:
    """A Playwright object seen from the test thread: each use runs in Playwright's thread.

    Attributes and call results that are Playwright objects come back as Remotes too;
    Remotes passed as arguments are handed back to Playwright as the objects they stand for.
    Its own names start with an underscore so that they hide none of Playwright's.
    """

    def __init__(self, thread: PlaywrightThread, target):
        self._thread = thread
        self._target = target

    def __getattr__(self, name):
        value = self._thread.call(getattr, self._target, name)
        if not callable(value):
            return self._wrap(value)

        def method(*args, **kwargs):
            args = [unwrap(arg) for arg in args]
            kwargs = {key: unwrap(arg) for key, arg in kwargs.items()}
            return self._wrap(self._thread.call(value, *args, **kwargs))

        return method

    def __enter__(self):
        return self._wrap(self._thread.call(self._target.__enter__))

    def __exit__(self, *exc_info):
        return self._thread.call(self._target.__exit__, *exc_info)

    def __repr__(self):
        return f"Remote({self._target!r})"

    def _wrap(self, value):
        if isinstance(value, list):
            return [self._wrap(item) for item in value]
        if type(value).__module__.startswith("playwright."):
            return Remote(self._thread, value)
        return value


def unwrap(value):
    return value._target if isinstance(value, Remote) else value


def _launch():
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    return playwright, browser


def _stop(playwright, browser):
    try:
        browser.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="session")
def browser():
    """Chromium under Playwright for the session, run in Playwright's own thread."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the e2e tests need Debian's Chromium. Run `make browser`.",
            pytrace=False,
        )
    thread = PlaywrightThread()
    try:
        playwright, browser = thread.call(_launch)
        try:
            yield Remote(thread, browser)
        finally:
            thread.call(_stop, playwright, browser)
    finally:
        thread.close()


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
