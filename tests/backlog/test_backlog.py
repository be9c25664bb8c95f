"""The backlog agent: shift boundaries, facts from the store, catch-up after downtime
(time injected, not slept), no shift summarised twice across a restart, and the API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from factory_mas.backlog.facts import shift_of, shifts_ended
from factory_mas.settings import Settings
from tests.support.app import running_app
from tests.support.fake_gemini import FakeGemini
from tests.support.records import record


@pytest.fixture
def settings(on_each_database: Settings) -> Settings:
    """Each test here runs on SQLite and again on PostgreSQL."""
    return on_each_database


STARTS = ["06:00", "14:00", "22:00"]


def at(text: str, tz: str = "UTC") -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz))


@pytest.mark.parametrize(
    ("moment", "start", "end"),
    [
        ("2026-03-10 06:00", "2026-03-10 06:00", "2026-03-10 14:00"),
        ("2026-03-10 13:59", "2026-03-10 06:00", "2026-03-10 14:00"),
        ("2026-03-10 23:30", "2026-03-10 22:00", "2026-03-11 06:00"),
        ("2026-03-11 02:00", "2026-03-10 22:00", "2026-03-11 06:00"),
    ],
)
def test_shift_of(moment, start, end):
    assert shift_of(at(moment), STARTS, "UTC") == (at(start), at(end))


def test_shifts_keep_local_time_across_a_dst_change():
    # Europe/Berlin goes to summer time on 2026-03-29 at 02:00: the night shift is 7 h.
    start, end = shift_of(at("2026-03-29 03:00", "Europe/Berlin"), STARTS, "Europe/Berlin")
    assert (start.hour, end.hour) == (22, 6)
    assert end.timestamp() - start.timestamp() == timedelta(hours=7).total_seconds()


def test_shifts_ended_lists_each_once_in_order():
    ended = shifts_ended(at("2026-03-10 10:00"), at("2026-03-11 14:00"), STARTS, "UTC")
    assert [(s.hour, e.hour) for s, e in ended] == [(6, 14), (14, 22), (22, 6), (6, 14)]
    assert shifts_ended(at("2026-03-10 14:00"), at("2026-03-10 14:00"), STARTS, "UTC") == []


def offline(settings: Settings) -> Settings:
    backlog = msgspec.structs.replace(
        settings.backlog, gemini_api_key="", generate_min_interval_s=3600
    )
    return msgspec.structs.replace(settings, backlog=backlog)


async def test_catch_up_after_downtime_summarises_each_missed_shift_once(settings):
    settings = offline(settings)
    async with running_app(settings) as (c, client):
        assert (await client.get("/api/backlog/latest")).status_code == 404
        for machine in (3, 3, 7):
            await client.post(
                "/api/orchestrator/alert",
                json={"level": "CRITICAL", "type": f"FIRE_RISK_{machine}", "source": "plc",
                      "details": "smoke", "machine_id": machine},
            )  # fmt: skip
        await c.orchestrator.idle()
        now = datetime.now(UTC)
        later = now + timedelta(hours=20)  # as if we had been down for 20 h
        first = await c.backlog.summarise_due(later)
        expected = shifts_ended(now, later, STARTS, "UTC")
        assert [(s.shift_start, s.shift_end) for s in first] == expected
        assert len(first) in (2, 3)
        assert await c.backlog.summarise_due(later) == [], "nothing twice"
        the_first = first[0].facts
        assert the_first.alarms_raised == 2
        assert the_first.alarms_by_source == {"plc": 2}
        assert [(m.machine_id, m.alarms) for m in the_first.top_machines] == [(3, 1), (7, 1)]
        assert the_first.decisions == 2 and the_first.sms_by_status == {"not_configured": 2}
        assert the_first.alarms_unacknowledged == 2 and the_first.alarms_open == 2
        assert all(s.facts.alarms_raised == 0 for s in first[1:])
        assert first[0].generator == "offline" and "GEMINI_API_KEY" in first[0].note
        listed = (await client.get("/api/backlog/summaries")).json()
        assert listed["count"] == len(first)
    # A restart: the scheduler's own catch-up finds nothing new, and neither does a run at
    # the same moment; a later one only summarises the shifts since.
    async with running_app(settings) as (c, client):
        assert await c.backlog.summarise_due(later) == []
        even_later = later + timedelta(hours=8)
        more = await c.backlog.summarise_due(even_later)
        assert [(s.shift_start, s.shift_end) for s in more] == shifts_ended(
            later, even_later, STARTS, "UTC"
        )
        latest = (await client.get("/api/backlog/latest")).json()
        assert latest["shift_end"] == more[-1].shift_end.isoformat().replace("+00:00", "Z")
        count = (await client.get("/api/backlog/summaries?limit=100")).json()["count"]
    assert count == len(first) + len(more)


async def test_the_current_shift_on_demand_with_its_predictions(settings):
    settings = offline(settings)
    async with running_app(settings) as (c, client):
        records = [record(m) for m in (1, 2, 3)] * 2
        assert (await client.post("/api/ingest", json=records)).status_code == 202
        for _ in range(200):
            tally = c.backlog.tallies.shifts
            if tally and sum(next(iter(tally.values())).predictions_by_agent.values()) >= 24:
                break
            await asyncio.sleep(0.02)
        made = await client.post("/api/backlog/generate")
        assert made.status_code == 201, made.text
        summary = made.json()
        assert summary["partial"] is True
        facts = summary["facts"]
        assert facts["predictions_by_agent"] == {
            "pm_agent": 6,
            "energy_agent": 6,
            "cyber_agent": 6,
            "safety_agent": 6,
        }
        assert facts["energy_kwh"] >= 0
        again = await client.post("/api/backlog/generate")
        assert again.status_code == 429 and "try again" in again.json()["detail"]
        md = await client.get(f"/api/backlog/summaries/{summary['id']}.md")
        assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
        assert "partial" in md.text.lower()
        as_json = (await client.get(f"/api/backlog/summaries/{summary['id']}")).json()
        assert as_json["narrative"] == summary["narrative"]
        # Partial summaries are not the shift's summary: /latest still has none.
        assert (await client.get("/api/backlog/latest")).status_code == 404
        partials = (await client.get("/api/backlog/summaries?partial=true")).json()
        assert partials["count"] == 1
        assert (await client.get("/api/backlog/summaries?partial=maybe")).status_code == 400
        assert (await client.get("/api/backlog/summaries/abc")).status_code == 404
        assert (await client.get("/api/backlog/summaries/999")).status_code == 404
        status = (await client.get("/api/backlog/status")).json()
        assert status["generator"] == "offline" and status["next_run"]


@pytest.mark.integration
async def test_gemini_words_the_computed_facts_and_the_summary_is_stored(settings):
    key = "AIza-test-key-0123456789"
    answer = json.dumps(
        {
            "narrative": "Machine 4 raised a fire risk; it is still unacknowledged.",
            "recommendations": ["Inspect machine 4 at the start of the shift."],
        }
    )
    with FakeGemini(key, answer) as fake:
        backlog = msgspec.structs.replace(
            settings.backlog, gemini_api_key=key, gemini_base_url=fake.base_url
        )
        settings = msgspec.structs.replace(settings, backlog=backlog)
        async with running_app(settings) as (c, client):
            await client.post(
                "/api/orchestrator/alert",
                json={"level": "EMERGENCY", "type": "FIRE_RISK", "source": "safety_agent",
                      "details": "smoke", "machine_id": 4},
            )  # fmt: skip
            await c.orchestrator.idle()
            now = datetime.now(UTC)
            (summary, *_rest) = await c.backlog.summarise_due(now + timedelta(hours=9))
            stored = (await client.get(f"/api/backlog/summaries/{summary.id}")).json()
    assert summary.generator == f"gemini:{settings.backlog.gemini_model}"
    assert stored["narrative"] == "Machine 4 raised a fire risk; it is still unacknowledged."
    assert stored["recommendations"] == ["Inspect machine 4 at the start of the shift."]
    # The model was handed the computed facts, not asked to find them.
    request = fake.received[0]
    assert request.headers.get("x-goog-api-key") == key
    assert '"alarms_raised":1' in request.prompt.replace(" ", "")
    assert "safety_agent FIRE_RISK on machine 4 (EMERGENCY, once)" in request.prompt
    assert stored["facts"]["alarms_by_level"] == {"EMERGENCY": 1}
