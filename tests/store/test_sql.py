"""The SQL of the modules that keep state besides the store's own tables and the history
(tests/store/test_store.py, tests/store/test_history.py), on SQLite and on PostgreSQL:
the `store` fixture opens each backend in turn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from factory_mas.auth import keys
from factory_mas.backlog import service as backlog
from factory_mas.bridges import mqtt
from factory_mas.messages import ShiftFacts, ShiftSummary
from factory_mas.store import Store


async def test_api_keys_and_their_audit(store: Store) -> None:
    key_id, key = await store.write(keys.add, "gateway", "operator", "cli:root", "cli")
    assert await store.read(keys.count_active) == 1
    found = await store.write(keys.find, key)
    assert found is not None and found.role == "operator" and found.key_id == key_id
    revoked = await store.write(keys.revoke, str(key_id), "cli:root")
    assert revoked["revoked_at"] is not None
    assert await store.write(keys.find, key) is None
    assert [k["name"] for k in await store.read(keys.list_keys, True)] == ["gateway"]
    assert await store.read(keys.list_keys, False) == []
    assert await store.read(keys.count_active) == 0


async def test_mqtt_outbox(store: Store) -> None:
    rows = [(f"predictions/pm_agent/{i}", b"\x00payload%d" % i, float(i)) for i in range(5)]
    await store.write(mqtt._outbox_add, rows)
    head = await store.read(mqtt._outbox_head, 3)
    assert [(t, p) for _, t, p in head] == [(t, p) for t, p, _ in rows[:3]]
    await store.write(mqtt._outbox_delete, [seq for seq, _, _ in head])
    assert await store.read(mqtt._outbox_size) == 2


async def test_one_final_summary_per_shift(store: Store) -> None:
    start = datetime(2025, 1, 1, 6, tzinfo=UTC)

    def summary(partial: bool) -> ShiftSummary:
        return ShiftSummary(
            shift_start=start,
            shift_end=start + timedelta(hours=8),
            facts=ShiftFacts(shift_start=start, shift_end=start + timedelta(hours=8)),
            narrative="n",
            recommendations=[],
            generator="offline",
            partial=partial,
        )

    assert await store.write(backlog._insert, summary(True)) is not None
    assert await store.write(backlog._insert, summary(True)) is not None  # partials: many
    first = await store.write(backlog._insert, summary(False))
    assert first is not None
    assert await store.write(backlog._insert, summary(False)) is None
    assert await store.read(backlog._last_final_end) == (start + timedelta(hours=8)).timestamp()
    assert [s.id for s in await store.read(backlog._list, 10, False)] == [first]
    assert (await store.read(backlog._get, first)).partial is False
