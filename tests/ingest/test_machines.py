"""limits.max_machines: records of machines past the limit are refused, everywhere they
come in, and the per-machine state behind stays bounded, across a restart too."""

from __future__ import annotations

import asyncio
from pathlib import Path

from factory_mas.ingest.machines import Machines
from factory_mas.settings import Settings, load_settings
from tests.support.app import TEST_ENV, running_app
from tests.support.paths import REPO
from tests.support.records import record

LIMIT = 5


def limited_settings(tmp_path: Path) -> Settings:
    return load_settings(
        path=REPO / "settings.toml",
        env={
            "FACTORY_DATA_DIR": str(tmp_path / "data"),
            **TEST_ENV,
            "FACTORY_LIMITS_MAX_MACHINES": str(LIMIT),
        },
    )


def test_refusals_keep_their_place_among_invalid_records() -> None:
    machines = Machines(limit=2)
    items = [record(1), {"machine_id": 2}, record(2), record(3), record(1)]
    good, bad = machines.parse(items, "test")
    assert [r.machine_id for r in good] == [1, 2, 1]
    assert [(r.index, r.field) for r in bad] == [(1, "operation_mode"), (3, "machine_id")]
    assert bad[1].input["machine_id"] == 3
    assert machines.stats() == {"known": 2, "limit": 2, "refused": 1}


async def test_machines_past_the_limit_are_refused_and_state_stays_bounded(
    tmp_path: Path,
) -> None:
    settings = limited_settings(tmp_path)
    allowed = set(range(1, LIMIT + 1))
    async with running_app(settings) as (c, client):
        first = await client.post("/api/ingest", json=[record(m) for m in range(1, 8)])
        assert first.status_code == 202, first.text
        body = first.json()
        assert (body["accepted"], body["rejected"]) == (LIMIT, 2)
        assert [(e["index"], e["field"]) for e in body["errors"]] == [
            (5, "machine_id"),
            (6, "machine_id"),
        ]
        reason = body["errors"][0]["reason"]
        assert "machine 6" in reason and f"{LIMIT} machines" in reason
        assert "limits.max_machines" in reason

        # Known machines go on; only new ones are refused.
        mixed = await client.post("/api/ingest", json=[record(3), record(9)])
        assert mixed.status_code == 202 and mixed.json()["accepted"] == 1
        only_new = await client.post("/api/ingest", json=[record(10)])
        assert only_new.status_code == 422, only_new.text
        assert "limits.max_machines" in only_new.json()["detail"]
        # The agents' own predict routes count the same machines.
        assert (await client.post("/api/pm/predict", json=record(11))).status_code == 422
        assert (await client.post("/api/pm/predict", json=record(2))).status_code == 200

        telemetry = [a for a in c.agents if a.reads_journal]

        async def scored_all() -> None:
            while min(a.inbox_cursor for a in telemetry) < 2:  # the two journaled batches
                await asyncio.sleep(0.01)

        await asyncio.wait_for(scored_all(), 30)
        for agent in telemetry:
            assert set(agent.last_levels) <= allowed, agent.agent_id
            assert set(agent.gates) <= allowed and set(agent.conditioner.subjects) <= allowed
        status = (await client.get("/status")).json()["ingest"]
        assert status["machines"] == {"known": LIMIT, "limit": LIMIT, "refused": 5}
        assert status["rejected_by_field"]["machine_id"] == 4  # the predict route's is its own

    # The checkpoints keep what the agents knew, and that counts after a restart: a new
    # machine is still one too many.
    async with running_app(settings) as (c, client):
        saved = {a.agent_id: set(await a.saved_machines()) for a in c.agents}
        assert saved["pm_agent"] == allowed and all(s <= allowed for s in saved.values())
        again = await client.post("/api/ingest", json=[record(12), record(4)])
        assert again.status_code == 202 and again.json()["accepted"] == 1
        assert [e["index"] for e in again.json()["errors"]] == [0]
