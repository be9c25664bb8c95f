"""POST /api/ingest against a store that fills up: a real SQLite file whose growth is
capped (tests/support/full_disk.py), so writes fail with the error a full disk gives."""

from __future__ import annotations

import math

import msgspec

from factory_mas.ingest.intake import CHUNK
from factory_mas.ingest.schema import parse_many
from factory_mas.settings import Settings
from tests.support.app import running_app
from tests.support.full_disk import PageLimit, page_size
from tests.support.records import record
from tests.support.waiting import until


async def test_a_batch_that_cannot_be_journaled_whole_leaves_nothing_behind(
    settings: Settings,
) -> None:
    batch = [record(m % 50 + 1, temperature_c=40 + m / 100) for m in range(3 * CHUNK)]
    batch[-1]["packet_loss_pct"] = 140  # one bad record, which must not be counted either
    async with running_app(settings) as (c, client):
        pm = next(a for a in c.agents if a.agent_id == "pm_agent")
        # Room for the first chunk's journal row, not for the first two.
        blob = msgspec.msgpack.encode(parse_many(batch[:CHUNK], "http")[0])
        chunk_pages = math.ceil(len(blob) / (await c.store.read(page_size) - 4)) + 1
        limit = PageLimit(c.store)
        await limit.allow(chunk_pages * 3 // 2)

        answer = await client.post("/api/ingest", json=batch)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "store_unavailable"
        assert "nothing was changed" in answer.json()["detail"]
        assert await c.store.inbox_size() == 0
        assert c.intake.stats()["accepted"] == {} and c.intake.stats()["rejected"] == {}

        limit.lift()
        marker = [record(7), record(8), record(9)]
        assert (await client.post("/api/ingest", json=marker)).status_code == 202
        # Scored in hub order: had any of the failed batch been published, it would be
        # counted before the marker's three.
        await until(lambda: pm.counters["predictions"] >= 3, "the marker batch scored")
        assert pm.counters["predictions"] == 3
        assert await c.store.inbox_size() == 1


async def test_health_says_writes_fail_while_the_store_is_full_and_recovers(
    settings: Settings,
) -> None:
    async with running_app(settings) as (c, client):
        healthy = await client.get("/health")
        assert healthy.status_code == 200
        assert healthy.json()["components"]["store"] is True
        assert healthy.json()["components"]["store_error"] is None

        limit = PageLimit(c.store)
        await limit.allow(0)
        refused = await client.post("/api/ingest", json=[record(3)] * CHUNK)
        assert refused.status_code == 503
        failing = await client.get("/health")
        assert failing.status_code == 503
        body = failing.json()
        assert body["status"] == "degraded" and body["components"]["store"] is False
        assert body["components"]["store_error"].startswith("writes failing since ")
        assert "disk full" in body["components"]["store_error"]

        limit.lift()
        assert (await client.post("/api/ingest", json=[record(3)] * CHUNK)).status_code == 202
        again = await client.get("/health")
        assert again.status_code == 200, again.text
        assert again.json()["components"]["store"] is True
        assert again.json()["components"]["store_error"] is None
