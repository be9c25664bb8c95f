"""Debian's Chromium driven by Playwright's sync API, for the dashboard's tests.

Playwright's own browser download cannot be reached here, so it launches the system
binary (`apt-get install -y chromium`; .ci/run installs it). The flags keep Chromium off
the network it would otherwise call at every start (this machine's closed network refuses
those connections); Playwright gives every launch a new, empty user data dir.

The sync API runs its own event loop and refuses to start inside a running one: use it
from plain (non-async) test functions only, and leave the `with` block before the test ends
(between its calls Playwright marks its loop as the running one).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

INSTALL_HINT = (
    "the dashboard's browser tests need Debian's Chromium and Playwright: "
    "`apt-get install -y chromium` and `pip install -e '.[dev]'` "
    "(not `playwright install`: its download cannot be reached)"
)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 375, "height": 812}


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and Path("/usr/bin/chromium").exists():
        path = "/usr/bin/chromium"
    if path is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return path


@dataclass
class Console:
    """What the page said: console errors and uncaught exceptions (CSP violations are
    console errors), and every URL it requested (WebSockets included)."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def attach(self, page) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("websocket", lambda ws: self.requests.append(ws.url))

    def _on_console(self, message) -> None:
        if message.type == "error":
            where = message.location or {}
            self.errors.append(f"console: {message.text} ({where.get('url', '')})")


@contextmanager
def chromium(viewport: dict[str, int] | None = None) -> Iterator[tuple[object, Console]]:
    """A headless Chromium with one page (and its Console); closed at the end of the block."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    executable = chromium_path()
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise AssertionError("Playwright's sync API cannot run inside an asyncio loop")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=viewport or DESKTOP)
            context.set_default_timeout(20_000)
            page = context.new_page()
            console = Console()
            console.attach(page)
            yield page, console
            context.close()
        finally:
            browser.close()
