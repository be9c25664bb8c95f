"""A chattering signal through the whole app (ingest, the real agents, the orchestrator):
one alarm, not dozens; and without the off-delay, the dozens it stops."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.support.app import running_app, without_off_delay
from tests.support.records import record
from tests.support.waiting import until

FLAPS = 30


def flapping(machine_id: int) -> list[dict]:
    """An over-temperature that comes and goes every other second for a minute, then a
    quiet half minute: a loose thermocouple, or a fire that keeps flaring up."""
    start = datetime.now(UTC) - timedelta(minutes=5)
    rows = []
    for i in range(2 * FLAPS + 30):
        hot = i < 2 * FLAPS and i % 2 == 0
        row = record(machine_id, temperature_c=150.0 if hot else 55.0)
        row["timestamp"] = (start + timedelta(seconds=i)).isoformat()
        rows.append(row)
    return rows


async def run(settings) -> list[dict]:
    async with running_app(settings) as (c, client):
        rows = flapping(machine_id=41)
        response = await client.post("/api/ingest", json=rows)
        assert response.status_code in (200, 202), response.text

        def settled() -> bool:
            sent = sum(a.counters["alerts"] + a.counters["returns_to_normal"] for a in c.agents)
            scored = all(
                a.counters["predictions"] >= len(rows) for a in c.agents if a.slug != "ppe"
            )
            return scored and c.orchestrator.counters["alerts"] == sent

        await until(settled, "every record scored and every alert handled")
        body = (await client.get("/api/orchestrator/alarms?source=safety_agent")).json()
        return body["alarms"]


async def test_a_flapping_hazard_is_one_alarm_that_clears_once(settings):
    (alarm,) = await run(settings)
    assert alarm["machine_id"] == 41
    assert alarm["activations"] == 1
    assert alarm["state"] == "CLEARED_UNACK"  # the quiet half minute outlasted the off-delay


async def test_without_the_off_delay_the_same_signal_chatters(settings):
    found = await run(without_off_delay(settings, "pm", "energy", "cyber", "safety"))
    # Every flare-up after the first came back as a reactivation: what the issue measured,
    # caught by the chatter rule.
    assert sum(a["activations"] for a in found) >= FLAPS
    assert any(a["chattering"] for a in found)
