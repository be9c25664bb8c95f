"""The dashboard's verdicts on alarms and its plant event log, in a real browser (Debian's
Chromium through Playwright's sync API) against a real server in a child process: a click
stores the verdict (read back through GET /api/labels) and shows it on the alarm; the event
form logs a failure that the list then shows.

Plain (non-async) tests on purpose: see tests/support/browser.py."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.http.test_dashboard import WAIT_MS, alert, assert_no_errors, open_dashboard, shot
from tests.support.app import Server
from tests.support.browser import chromium
from tests.support.waiting import wait_until

# A real server process and a real Chromium.
pytestmark = pytest.mark.integration


def stored(server: Server, kind: str) -> list[dict]:
    answer = server.get(f"/api/labels?kind={kind}")
    assert answer.status_code == 200, answer.text
    return answer.json()["labels"]


def test_verdicts_on_alarms_are_stored_and_shown(server_factory):
    server = server_factory()
    raised = []
    for machine_id in (7, 8):
        answer = server.post("/api/orchestrator/alert", alert(0, "CRITICAL", machine_id=machine_id))
        assert answer.status_code == 202, answer.text
        raised.append(answer.json()["alarms"][0]["id"])
    first, second = raised

    with chromium() as (page, console):
        open_dashboard(page, server, "alarms")
        row = page.locator(f'#alarms-table tbody tr[data-alarm-id="{first}"]')
        expect(row).to_be_visible(timeout=WAIT_MS)

        # A row's own button: the verdict alone.
        row.locator('button[data-verdict="false_alarm"]').click()
        wait_until(
            lambda: len(stored(server, "alarm_feedback")) == 1,
            timeout_s=WAIT_MS / 1000,
            interval_s=0.2,
            what="the verdict to be stored as a label",
        )
        (label,) = stored(server, "alarm_feedback")
        assert (label["alarm_id"], label["detail"], label["machine_id"]) == (
            first,
            "false_alarm",
            7,
        )
        expect(row.locator('[data-testid="verdict"]')).to_have_attribute(
            "data-verdict", "false_alarm", timeout=WAIT_MS
        )
        expect(row.locator('[data-testid="verdict"]')).to_have_text("false alarm")

        # The detail pane's: the selected alarm, with a comment.
        other = page.locator(f'#alarms-table tbody tr[data-alarm-id="{second}"]')
        other.locator("td").first.click()
        expect(page.locator("#alarm-detail h2")).to_contain_text(f"Alarm {second}")
        page.fill("#feedback-text", "smoke from the oven, real")
        page.locator('#feedback-form button[data-verdict="confirmed"]').click()
        wait_until(
            lambda: len(stored(server, "alarm_feedback")) == 2,
            timeout_s=WAIT_MS / 1000,
            interval_s=0.2,
            what="the second verdict to be stored",
        )
        latest = stored(server, "alarm_feedback")[-1]
        assert (latest["alarm_id"], latest["detail"], latest["comment"]) == (
            second,
            "confirmed",
            "smoke from the oven, real",
        )
        expect(other.locator('[data-testid="verdict"]')).to_have_text("confirmed", timeout=WAIT_MS)
        expect(page.locator("#feedback-text")).to_have_value("")
        # ... and the event log lists both verdicts.
        expect(page.locator('#labels-list [data-kind="alarm_feedback"]')).to_have_count(
            2, timeout=WAIT_MS
        )
        shot(page, "alarms-feedback")
        assert_no_errors(console)


def test_the_event_form_logs_a_failure(server_factory):
    server = server_factory()
    with chromium() as (page, console):
        open_dashboard(page, server, "alarms")
        expect(page.locator("#label-form")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#labels-list")).to_contain_text("Nothing logged yet", timeout=WAIT_MS)
        page.select_option("#label-kind", "failure")
        page.fill("#label-machine", "12")
        page.fill("#label-start", "2026-03-01T08:30")
        page.fill("#label-detail", "gearbox seized")
        page.fill("#label-comment", "replaced the gearbox")
        page.click("#label-send")
        wait_until(
            lambda: len(stored(server, "failure")) == 1,
            timeout_s=WAIT_MS / 1000,
            interval_s=0.2,
            what="the failure to be stored",
        )
        (label,) = stored(server, "failure")
        assert (label["machine_id"], label["detail"], label["comment"]) == (
            12,
            "gearbox seized",
            "replaced the gearbox",
        )
        # The browser's local time, sent with its zone: the same instant.
        local = page.evaluate("new Date('2026-03-01T08:30').toISOString()")
        assert label["start"].replace("Z", "") == local.replace(".000Z", "")
        expect(page.locator('#labels-list [data-kind="failure"]')).to_contain_text("gearbox seized")

        # An incident takes one of the incident types instead of free text.
        page.select_option("#label-kind", "incident")
        expect(page.locator("#label-detail-field")).to_be_hidden()
        page.select_option("#label-incident", "CYBER_ATTACK")
        page.fill("#label-machine", "")
        page.click("#label-send")
        wait_until(
            lambda: [lb["detail"] for lb in stored(server, "incident")] == ["CYBER_ATTACK"],
            timeout_s=WAIT_MS / 1000,
            interval_s=0.2,
            what="the incident to be stored for the whole plant",
        )
        assert stored(server, "incident")[0]["machine_id"] is None
        shot(page, "alarms-event-log")
        assert_no_errors(console)
