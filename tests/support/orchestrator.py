"""Alerts posted to the orchestrator and the alarms it answers with, over its HTTP routes."""

from __future__ import annotations

import msgspec

from factory_mas.settings import Settings


def alert(machine_id: int | None = 7, **overrides: object) -> dict:
    body = {
        "level": "CRITICAL",
        "type": "FIRE_RISK",
        "source": "plc-3",
        "details": "smoke detector 2 tripped",
        "machine_id": machine_id,
    }
    return {**body, **overrides}


def tuned(settings: Settings, **orchestrator: object) -> Settings:
    return msgspec.structs.replace(
        settings,
        orchestrator=msgspec.structs.replace(settings.orchestrator, **orchestrator),
    )


async def post_alert(client, body) -> dict:
    response = await client.post("/api/orchestrator/alert", json=body)
    assert response.status_code == 202, response.text
    return response.json()


async def alarms(client, query: str = "") -> list[dict]:
    response = await client.get(f"/api/orchestrator/alarms{query}")
    assert response.status_code == 200, response.text
    return response.json()["alarms"]


async def act(client, alarm_id: int, action: str, **body: object):
    return await client.post(f"/api/orchestrator/alarms/{alarm_id}/{action}", json=body)
