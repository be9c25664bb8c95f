"""The dashboard in a real browser (Debian's Chromium through Playwright's sync API) against
a real server in a child process: live data, acknowledging an alarm, reconnecting after a
restart, API keys, 1,000 alarms, and every page on a desktop and a phone screen.

Plain (non-async) tests on purpose: Playwright's sync API runs its own event loop and must
not be called from inside a running one (see tests/support/browser.py)."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.app import Server
from tests.support.browser import DESKTOP, PHONE, Console, chromium
from tests.support.paths import REPO
from tests.support.waiting import wait_until

# A real server process and a real Chromium.
pytestmark = pytest.mark.integration

SHOTS = REPO / "docs" / "screenshots"
LIVE = {
    "FACTORY_REPLAY_ENABLED": "true",
    "FACTORY_REPLAY_RATE": "200",
    "FACTORY_REPLAY_CAMERAS": "1",
}
WAIT_MS = 30_000
# Chromium logs every failed request as a console error; these patterns (regexes) are the
# expected ones. /health answers 503 with its components when degraded, which the page shows.
HEALTH_503 = r"status of 503 .*/health"
# While the server is down (test 3).
OUTAGE_NOISE = (r"ERR_CONNECTION_REFUSED", r"WebSocket connection to", r"Failed to load resource")
PAGES = ["overview", "alarms", "machines", "ppe", "shifts", "points"]


def shot(page: Page, name: str, full_page: bool = True) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def assert_no_errors(console: Console, allowed: tuple[str, ...] = ()) -> None:
    patterns = (HEALTH_503, *allowed)
    errors = [e for e in console.errors if not any(re.search(p, e) for p in patterns)]
    assert not errors, "browser console errors:\n" + "\n".join(errors)


def open_dashboard(page: Page, server: Server, route: str) -> None:
    """Load the dashboard at `#/route`; fail at once (not after a wait) if / is no page."""
    response = page.goto(f"{server.url}/#/{route}")
    assert response is not None and response.status == 200, (
        f"GET / answered {response and response.status}: {response and response.text()[:200]}"
    )
    assert "text/html" in response.headers.get("content-type", "")


def number_in(text: str) -> float | None:
    found = re.search(r"[-+]?\d[\d,]*(?:\.\d+)?", text)
    return None if found is None else float(found.group().replace(",", ""))


def alert(i: int, level: str = "WARNING", machine_id: int | None = None) -> dict:
    return {
        "level": level,
        "type": f"DASHBOARD_TEST_{i % 10}",
        "source": "e2e-dashboard",
        "details": f"test alert {i}",
        "machine_id": machine_id if machine_id is not None else i + 1,
    }


def answer_dialogs(page: Page) -> None:
    """Should the page ask (window.prompt / confirm) for a name or a note, answer it."""
    page.on("dialog", lambda dialog: dialog.accept("e2e"))


def alarm_state(server: Server, alarm_id: int | str) -> str:
    answer = server.get(f"/api/orchestrator/alarms/{alarm_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()["alarm"]["state"]


# -- 1. overview with live data -------------------------------------------------------------


def test_overview_shows_live_data(server_factory):
    server = server_factory(LIVE)
    with chromium() as (page, console):
        open_dashboard(page, server, "overview")
        expect(page.locator("#page-overview")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator('#conn-status[data-state="live"]')).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#conn-status")).to_have_text(re.compile("live"))

        rate = page.locator('#page-overview [data-testid="records-per-s"]')
        wait_until(
            lambda: (number_in(rate.inner_text()) or 0) > 0,
            timeout_s=WAIT_MS / 1000,
            what=f"records-per-s > 0 (shows {rate.inner_text()!r})",
        )
        for testid in ("alarms-open", "alarms-unacked", "rejected-per-s", "last-update"):
            expect(page.locator(f'#page-overview [data-testid="{testid}"]')).to_be_visible()

        components = page.locator('#page-overview [data-testid="component"][data-name][data-ok]')
        expect(components.first).to_be_visible(timeout=WAIT_MS)
        for i in range(components.count()):
            item = components.nth(i)
            assert item.get_attribute("data-name"), "a component without a name"
            assert item.get_attribute("data-ok") in ("true", "false")
        shot(page, "overview-live")
        assert_no_errors(console)


# -- 2. acknowledge an alarm in the page ----------------------------------------------------


def test_acknowledge_alarm_in_page(server_factory):
    server = server_factory()
    answer = server.post("/api/orchestrator/alert", alert(0, "CRITICAL", machine_id=7))
    assert answer.status_code == 202, answer.text
    alarm_id = answer.json()["alarms"][0]["id"]
    assert alarm_state(server, alarm_id) == "ACTIVE_UNACK"

    with chromium() as (page, console):
        answer_dialogs(page)
        open_dashboard(page, server, "alarms")
        expect(page.locator("#page-alarms")).to_be_visible(timeout=WAIT_MS)
        row = page.locator(f'#alarms-table tbody tr[data-alarm-id="{alarm_id}"]')
        expect(row).to_be_visible(timeout=WAIT_MS)
        expect(row).to_have_attribute("data-state", "ACTIVE_UNACK")
        expect(row).to_have_attribute("data-level", "CRITICAL")

        row.locator('button[data-action="ack"]').click()
        wait_until(
            lambda: alarm_state(server, alarm_id) == "ACTIVE_ACK",
            timeout_s=WAIT_MS / 1000,
            interval_s=0.2,
            what="the API to report the alarm acknowledged",
        )
        expect(row).to_have_attribute("data-state", "ACTIVE_ACK", timeout=WAIT_MS)
        shot(page, "alarms-acked")
        assert_no_errors(console)


# -- 3. reconnect after a restart -----------------------------------------------------------


def test_reconnects_after_server_restart(server_factory):
    first = server_factory()
    with chromium() as (page, console):
        open_dashboard(page, first, "overview")
        status = page.locator("#conn-status")
        expect(status).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        assert_no_errors(console)

        first.stop(signal.SIGTERM)
        expect(status).to_have_attribute("data-state", "reconnecting", timeout=WAIT_MS)
        expect(status).to_have_text(re.compile("reconnecting"))

        # The same port and data dir: the page's URL stays right.
        second = Server(first.data_dir)
        second.port, second.url = first.port, first.url
        second.env["PORT"] = str(first.port)
        try:
            second.start()
            expect(status).to_have_attribute("data-state", "live", timeout=60_000)
            expect(status).to_have_text(re.compile("live"))
        finally:
            if second.proc is not None and second.proc.poll() is None:
                second.stop(signal.SIGKILL)
        assert_no_errors(console, allowed=OUTAGE_NOISE)


# -- 4. API keys ----------------------------------------------------------------------------


def test_api_key_dialog(server_factory):
    server = server_factory({"FACTORY_AUTH_ENABLED": "true"})
    found = wait_until(
        lambda: re.search(r"fmk_[A-Za-z0-9_-]{20,}", server.output()),
        what="the first admin key in the server's log",
    )
    key = found.group()

    with chromium() as (page, console):
        open_dashboard(page, server, "overview")
        dialog = page.locator("dialog#key-dialog")
        expect(dialog).to_have_attribute("open", re.compile(".*"), timeout=WAIT_MS)
        expect(dialog).to_be_visible()

        page.locator("#key-input").fill(key)
        page.locator("#key-save").click()
        expect(dialog).to_be_hidden(timeout=WAIT_MS)
        expect(page.locator('#conn-status[data-state="live"]')).to_be_visible(timeout=WAIT_MS)
        opened = page.locator('#page-overview [data-testid="alarms-open"]')
        wait_until(
            lambda: number_in(opened.inner_text()) is not None,
            timeout_s=WAIT_MS / 1000,
            what="the overview's open alarm count",
        )
        expect(page.locator("#key-button")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('factory_mas.key')") == key
        assert page.evaluate("localStorage.getItem('factory_mas.key')") is None

        urls = console.requests
        assert urls, "the page made no requests"
        leaked = [u for u in urls if key in u or key[4:] in u]
        assert not leaked, f"the key is in a URL: {leaked}"
        assert key not in page.url
        # The 401s before the key was given are expected, nothing else.
        assert_no_errors(console, allowed=("status of 401",))


# -- 5. 1,000 alarms ------------------------------------------------------------------------


def test_renders_1000_alarms(server_factory):
    server = server_factory()
    levels = ("CAUTION", "WARNING", "CRITICAL")
    alerts = [alert(i, levels[i % 3]) for i in range(1000)]
    answer = server.post("/api/orchestrator/alert", alerts)
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 1000

    with chromium() as (page, console):
        open_dashboard(page, server, "alarms")
        expect(page.locator("#page-alarms")).to_be_visible(timeout=WAIT_MS)
        page.wait_for_function(
            "document.querySelectorAll('#alarms-table tbody tr[data-alarm-id]').length >= 1000",
            timeout=60_000,
        )
        page.wait_for_function(
            "typeof (window.__renderTimes || {}).alarms === 'number'", timeout=WAIT_MS
        )
        ms = page.evaluate("window.__renderTimes.alarms")
        rows = page.locator("#alarms-table tbody tr[data-alarm-id]").count()
        print(f"\ndashboard: {rows} alarm rows rendered in {ms:.1f} ms")
        assert rows == 1000
        shot(page, "alarms-1000", full_page=False)
        assert_no_errors(console)


# -- 6. every page on a desktop and a phone; keyboard ---------------------------------------


def page_shown(page: Page, route: str) -> None:
    section = "#page-machine" if route.startswith("machine/") else f"#page-{route}"
    expect(page.locator(section)).to_be_visible(timeout=WAIT_MS)


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_pages_fit_the_screen(server_factory, viewport):
    server = server_factory(LIVE)
    with chromium(viewport) as (page, console):
        open_dashboard(page, server, "overview")
        expect(page.locator("#conn-status")).to_have_attribute(
            "data-state", "live", timeout=WAIT_MS
        )
        machine = page.locator("#machine-grid .machine[data-machine-id][data-level]")
        page.goto(server.url + "/#/machines")
        expect(machine.first).to_be_visible(timeout=WAIT_MS)
        machine_id = machine.first.get_attribute("data-machine-id")

        for route in [*PAGES, f"machine/{machine_id}"]:
            page.goto(f"{server.url}/#/{route}")
            page_shown(page, route)
            page.wait_for_timeout(300)  # let the page's data arrive and lay out
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1] + 1, f"#/{route} scrolls sideways: {width}"
            name = "machine" if route.startswith("machine/") else route
            shot(page, f"{name}-{viewport['width']}")

        nav = page.locator("a[data-page]")
        assert {nav.nth(i).get_attribute("data-page") for i in range(nav.count())} >= set(PAGES)
        assert_no_errors(console)
        if viewport is PHONE:
            return  # a phone layout may fold the navigation into a menu

        # Keyboard: from the top of a fresh load, Tab reaches the navigation.
        page.goto(server.url + "/#/overview")
        page.reload()
        page_shown(page, "overview")
        on_nav = False
        for _ in range(8):
            page.keyboard.press("Tab")
            if page.evaluate("!!document.activeElement?.matches('a[data-page]')"):
                on_nav = True
                break
        assert on_nav, "Tab from the top does not reach the navigation links"
        assert_no_errors(console)


# -- 7. alarm performance (ISA-18.2 KPIs) ---------------------------------------------------


def kpi_alert(source: str, kind: str, at: str, level: str = "WARNING", **where) -> dict:
    return {
        "source": source,
        "type": kind,
        "level": level,
        "details": "kpi",
        "timestamp": at,
        **where,
    }


def kpi_rows(page: Page) -> list[list[str]]:
    rows = page.locator('#alarm-kpis [data-testid="kpi-top"] tr')
    return [
        [cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts()]
        for i in range(rows.count())
    ]


def test_alarm_performance_panel(server_factory):
    server = server_factory()
    # Every activation at one instant, so they fall in one 10-minute period whatever the
    # window's edges; the old alarm is active for more than 24 h (stale) and outside the
    # 24-hour window.
    now = datetime.now(UTC)
    at = (now - timedelta(minutes=2)).isoformat()
    old = (now - timedelta(hours=26)).isoformat()
    html = {"source": "<i>ext</i>", "type": "<b>KPI_HTML</b>", "camera_id": "cam-<u>1</u>"}
    answer = server.post(
        "/api/orchestrator/alert",
        [
            kpi_alert("test_source", "TEST_TYPE", at, machine_id=7),
            kpi_alert("test_source", "TEST_TYPE_2", at, machine_id=8),
            kpi_alert(html["source"], html["type"], at, "CAUTION", camera_id=html["camera_id"]),
            kpi_alert("test_source", "OLD_TYPE", old, machine_id=9),
        ],
    )
    assert answer.status_code == 202, answer.text
    ids = [a["id"] for a in answer.json()["alarms"]]
    assert len(ids) == 4, answer.text
    acked = server.post(f"/api/orchestrator/alarms/{ids[0]}/ack", {"by": "e2e"})
    assert acked.status_code == 200, acked.text
    shelved = server.post(
        f"/api/orchestrator/alarms/{ids[1]}/shelve", {"by": "e2e", "duration_s": 3600}
    )
    assert shelved.status_code == 200, shelved.text

    with chromium() as (page, console):
        open_dashboard(page, server, "overview")
        panel = page.locator("#alarm-kpis")
        expect(panel.locator("h2")).to_have_text("Alarm performance (ISA-18.2)")
        expect(page.locator("#kpi-window")).to_have_value("86400")
        expect(panel).to_have_attribute("data-window", "86400", timeout=WAIT_MS)

        def kpi(name: str):
            return panel.locator(f'[data-testid="{name}"]')

        expect(kpi("kpi-activations")).to_have_text("3")
        # 3 activations over 144 periods, as the server rounds it.
        assert number_in(kpi("kpi-avg").inner_text()) == pytest.approx(0.02)
        expect(kpi("kpi-peak")).to_have_text("3")
        expect(kpi("kpi-target")).to_contain_text("10 per 10 min")
        for name in ("kpi-avg", "kpi-peak"):
            expect(kpi(name)).not_to_have_class(re.compile(r"\bbad\b"))
        expect(kpi("kpi-flood-pct")).to_have_text("0 %")
        expect(kpi("kpi-flood-periods")).to_have_text("0 of 144 periods with > 10")
        expect(kpi("kpi-chattering")).to_have_text("0")
        expect(kpi("kpi-standing")).to_have_text("4")
        expect(kpi("kpi-stale")).to_have_text("1")
        expect(kpi("kpi-shelved")).to_have_text("1")
        duration = re.compile(r"^\d+(\.\d)? (s|min|h)$")
        expect(kpi("kpi-ack-p50")).to_have_text(duration)
        expect(kpi("kpi-ack-p90")).to_have_text(duration)
        expect(kpi("kpi-ack-count")).to_have_text("1 acknowledged")

        rows = kpi_rows(page)
        assert sorted(rows) == sorted(
            [
                ["test_source", "TEST_TYPE", "machine 7", "1", "33.3 %"],
                ["test_source", "TEST_TYPE_2", "machine 8", "1", "33.3 %"],
                [html["source"], html["type"], html["camera_id"], "1", "33.3 %"],
            ]
        ), rows
        # Text from alerts is shown as text, never as markup.
        assert kpi("kpi-top").locator("b, i, u").count() == 0

        # The window selector refetches at once: 3 activations in 6 periods.
        page.select_option("#kpi-window", "3600")
        expect(panel).to_have_attribute("data-window", "3600", timeout=WAIT_MS)
        expect(kpi("kpi-activations")).to_have_text("3")
        assert number_in(kpi("kpi-avg").inner_text()) == pytest.approx(0.5)
        expect(kpi("kpi-flood-periods")).to_have_text("0 of 6 periods with > 10")

        # More than 10 in one period is a flood (ISA-18.2): the peak is marked.
        burst = [
            kpi_alert(f"burst-{i}", f"BURST_{i}", at, "CRITICAL", machine_id=100 + i)
            for i in range(11)
        ]
        answer = server.post("/api/orchestrator/alert", burst)
        assert answer.status_code == 202, answer.text
        page.select_option("#kpi-window", "28800")
        expect(panel).to_have_attribute("data-window", "28800", timeout=WAIT_MS)
        expect(kpi("kpi-activations")).to_have_text("14")
        expect(kpi("kpi-peak")).to_have_text("14")
        expect(kpi("kpi-peak")).to_have_class(re.compile(r"\bbad\b"))
        expect(kpi("kpi-avg")).not_to_have_class(re.compile(r"\bbad\b"))
        expect(kpi("kpi-flood-pct")).to_have_text("2.1 %")
        expect(kpi("kpi-flood-periods")).to_have_text("1 of 48 periods with > 10")
        expect(kpi("kpi-top").locator("tr")).to_have_count(10)

        # The week includes the old alarm's activation.
        page.select_option("#kpi-window", "604800")
        expect(panel).to_have_attribute("data-window", "604800", timeout=WAIT_MS)
        expect(kpi("kpi-activations")).to_have_text("15")
        shot(page, "overview-alarm-kpis")
        assert_no_errors(console)
