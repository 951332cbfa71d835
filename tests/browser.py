"""Headless Chromium for the tests, driven by Playwright for Python.

Playwright runs Debian's `chromium` (or `KZOO_CHROMIUM`) as its executable: it never downloads
a browser of its own. Without Chromium or Playwright the browser tests skip, unless `CI` is
set: then they fail (CI must install both; `.ci/run` installs chromium, `.[dev]` Playwright).

Example (in a test module; `tests/conftest.py` makes `browser` one session fixture):
```python
def test_title(browser):
    page = browser.new_page()
    page.goto("http://127.0.0.1:8000/")
```
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

import pytest

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--no-default-browser-check", "--disable-extensions"]


def _chromium() -> str | None:
    for name in (os.environ.get("KZOO_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _missing(what: str, environ) -> None:
    if environ.get("CI"):
        pytest.fail(f"CI is set but {what}")
    pytest.skip(f"{what}; CI runs this")


def require_chromium(environ=os.environ) -> str:
    """Chromium's path; skip without it, but fail when `CI` is set (CI must install it)."""
    chromium = _chromium()
    if chromium is None:
        _missing("Chromium is not installed: .ci/run must `apt-get install -y chromium` (or set "
                 "KZOO_CHROMIUM)", environ)
    return chromium


def require_playwright(environ=os.environ):
    """`playwright.sync_api.sync_playwright`; skip without it, but fail when `CI` is set."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (pip install -e '.[dev]')", environ)
    return sync_playwright


@pytest.fixture(scope="session")
def browser():
    """A Playwright `Browser` on Debian's Chromium, headless, shared by the session."""
    chromium = require_chromium()
    sync_playwright = require_playwright()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True,
                                              args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Visit:
    url: str
    value: object = None  # what the expression returned
    errors: list = field(default_factory=list)  # uncaught exceptions and console errors
    failed_requests: list = field(default_factory=list)  # "url -> status or error"


def visit(page, url: str, expression: str, timeout_ms: float = 60_000) -> Visit:
    """Open `url` in `page`, wait for its `load` event (images included), evaluate
    `expression`; collect script errors, console errors and failed requests meanwhile."""
    result = Visit(url)
    handlers = {
        "pageerror": lambda error: result.errors.append(f"{error} ({url})"),
        "console": lambda message: message.type == "error" and result.errors.append(
            f"{message.text} ({message.location.get('url', '')})"),
        "response": lambda response: response.status >= 400 and result.failed_requests.append(
            f"{response.url} -> {response.status}"),
        # ERR_ABORTED: a request the page itself cancelled (what DevTools calls `canceled`)
        "requestfailed": lambda request: request.failure != "net::ERR_ABORTED"
        and result.failed_requests.append(f"{request.url} -> {request.failure}"),
    }
    for event, handler in handlers.items():
        page.on(event, handler)
    try:
        page.goto(url, wait_until="load", timeout=timeout_ms)
        result.value = page.evaluate(expression)
    finally:
        for event, handler in handlers.items():
            page.remove_listener(event, handler)
    return result
