"""The telemetry historian on a real Hub, Intake and store (SQLite and PostgreSQL): what
it stores, the journal cursor that makes a crash lose nothing, retention, failures."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from factory_mas.components import build_components
from factory_mas.history import TelemetryHistorian, historian
from factory_mas.history.historian import CURSOR_CHECKPOINT, _Batch, _store
from factory_mas.hub import Hub
from factory_mas.ingest.intake import Intake
from factory_mas.settings import Settings
from factory_mas.store import Store, sqlite_url
from factory_mas.topics import TELEMETRY
from tests.history.support import keys, reading, stored, validated
from tests.support.waiting import until

DAY_S = 86_400.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def running(
    hub: Hub, store: Store, retention_days: float = 30.0, max_rows: int = 1_000_000, **kw: Any
) -> TelemetryHistorian:
    return TelemetryHistorian(hub, store, retention_days, max_rows, flush_interval_s=0.02, **kw)


def sql(db: Path, statement: str) -> None:
    with closing(sqlite3.connect(db)) as con:
        con.execute(statement)
        con.commit()


async def saved_cursor(store: Store, name: str = CURSOR_CHECKPOINT) -> int:
    raw = await store.load_checkpoint(name)
    return msgspec.msgpack.decode(raw) if raw else 0


# -- what is stored -----------------------------------------------------------------------


async def test_journaled_and_replayed_records_are_stored_with_the_cursor(store: Store) -> None:
    hub = Hub()
    intake = Intake(hub, 1_000_000, store)
    async with running(hub, store) as h:
        await intake.accept([reading(1, m) for m in range(3)], "http", journal=True)
        # The built-in replay's records are not journaled: they come from the hub alone.
        await intake.accept([reading(2, m) for m in range(2)], "replay")
        await until(lambda: h.written == 5, "5 rows stored")
        assert h.stats()["journal"] == {"taken_up_to": 1, "stored_up_to": 1}
    rows = await stored(store)
    assert sorted(keys(rows)) == sorted(
        [(1, f"2025-01-01T00:0{m}:00Z") for m in range(3)]
        + [(2, f"2025-01-01T00:0{m}:00Z") for m in range(2)]
    )
    assert rows[0]["temperature_c"] == 40.0 and rows[0]["operation_mode"] == "Active"
    assert await saved_cursor(store) == 1


async def test_records_journaled_before_a_crash_are_stored_at_the_next_start(
    store: Store,
) -> None:
    hub = Hub()
    intake = Intake(hub, 1_000_000, store)
    # Journaled and acknowledged while no historian stored them: the process died first.
    await intake.accept([reading(1, m) for m in range(4)], "http", journal=True)
    await intake.accept([reading(2, m) for m in range(3)], "mqtt", journal=True)
    async with running(hub, store) as h:
        await until(lambda: h.written == 7, "the journal read back and stored")
        assert h.from_journal == 7 and h.durable_cursor == 2
        await intake.accept([reading(3, 0)], "http", journal=True)
        await until(lambda: h.written == 8, "a new record stored")
    async with running(hub, store) as again:
        await until(lambda: not again.stats()["catching_up"], "the journal looked at")
        await intake.accept([reading(3, 1)], "http", journal=True)
        await until(lambda: again.written == 1, "only the new record stored")
        assert again.from_journal == 0
    assert len(await stored(store)) == 9


async def test_a_slice_written_again_after_a_lost_commit_is_stored_once(store: Store) -> None:
    batch = [
        _Batch(7, 1.0, [validated(1, 0), validated(1, 1)]),
        _Batch(0, 1.0, [validated(2, 0)]),  # not journaled: nothing says it was stored
    ]
    assert await store.write(_store, CURSOR_CHECKPOINT, batch) == (3, 0, 7)
    assert await store.write(_store, CURSOR_CHECKPOINT, batch) == (1, 2, 7)
    assert sorted(keys(await stored(store))) == [
        (1, "2025-01-01T00:00:00Z"),
        (1, "2025-01-01T00:01:00Z"),
        (2, "2025-01-01T00:00:00Z"),
        (2, "2025-01-01T00:00:00Z"),
    ]


async def test_messages_its_full_queue_dropped_are_read_back_from_the_journal(
    store: Store,
) -> None:
    hub = Hub(queue_size=2)
    encode = msgspec.msgpack.Encoder().encode
    records = [validated(1 + m % 3, m) for m in range(10)]
    async with running(hub, store) as h:
        await until(lambda: not h.stats()["catching_up"], "the empty journal looked at")
        seqs = await store.inbox_append_many(TELEMETRY, "http", [encode([r]) for r in records])
        # Published in one burst: its queue of 2 keeps the last two, drops the others.
        for seq, r in zip(seqs, records, strict=True):
            await hub.publish(TELEMETRY, [r], origin="http", seq=seq)
        await until(lambda: h.written == 10, "every record stored")
        stats = h.stats()
        assert stats["dropped_messages"] == 8 and stats["from_journal"] == 10
    assert sorted(r["temperature_c"] for r in await stored(store)) == [
        40.0 + m / 10 for m in range(10)
    ]


async def test_other_payloads_on_the_telemetry_topic_are_skipped(store: Store) -> None:
    hub = Hub()
    async with running(hub, store) as h:
        await hub.publish(TELEMETRY, [{"not": "validated"}, validated(1, 0)])
        await hub.publish(f"{TELEMETRY}/4", validated(4, 0))  # one, per-machine topic
        await until(lambda: h.written == 2, "2 rows stored")
        assert h.skipped == 1


# -- retention ----------------------------------------------------------------------------


async def test_retention_goes_by_arrival_and_max_rows_deletes_the_oldest(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(historian, "PRUNE_CHUNK_ROWS", 2)  # several chunks each time
    hub, clock = Hub(), Clock()
    async with running(hub, store, retention_days=1.0, max_rows=5, clock=clock) as h:
        # Recorded in 2025, arriving now: a replayed CSV is not deleted on arrival.
        await hub.publish(TELEMETRY, [validated(1, m) for m in range(3)])
        await until(lambda: h.written == 3, "3 rows stored")
        clock.now += 0.5 * DAY_S
        assert await h.prune() == 0
        await hub.publish(TELEMETRY, [validated(2, m) for m in range(3)])
        await until(lambda: h.written == 6, "6 rows stored")
        clock.now += 0.6 * DAY_S  # the first three arrived 1.1 days ago
        assert await h.prune() == 3
        assert keys(await stored(store)) == [(2, f"2025-01-01T00:0{m}:00Z") for m in range(3)]

        await hub.publish(TELEMETRY, [validated(3, m) for m in range(5)])
        await until(lambda: h.written == 11, "11 rows stored")
        assert await h.prune() == 3  # 8 left, 5 allowed: the oldest three go
        assert keys(await stored(store)) == [(3, f"2025-01-01T00:0{m}:00Z") for m in range(5)]
        stats = h.stats()
        assert (stats["pruned_expired"], stats["pruned_over_max"]) == (3, 3)
    assert len(await stored(store)) == 5


def test_retention_and_max_rows_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention_days"):
        TelemetryHistorian(Hub(), Store("sqlite://"), 0, 10)
    with pytest.raises(ValueError, match="max_rows"):
        TelemetryHistorian(Hub(), Store("sqlite://"), 1, 0)


# -- failures -----------------------------------------------------------------------------


async def test_a_failing_store_holds_the_rows_retries_and_loses_no_journaled_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="factory_mas.history")
    db = tmp_path / "factory.db"
    hub = Hub()
    async with Store(sqlite_url(db)) as store:
        intake = Intake(hub, 1_000_000, store)
        async with running(hub, store) as h:
            await until(lambda: not h.stats()["catching_up"], "the empty journal looked at")
            sql(db, "ALTER TABLE telemetry RENAME TO telemetry_away")
            await intake.accept([reading(1, m) for m in range(3)], "http", journal=True)
            await intake.accept([reading(2, 0)], "replay")
            await until(lambda: h.flush_failures >= 3, "three failed flushes")
            stats = h.stats()
            # /status says what failed, not the SQL with the records' values (the log does).
            assert stats["failing"] and stats["running"] and stats["written"] == 0
            assert stats["last_error"] == "the store could not be used: unavailable"
            assert stats["journal"]["stored_up_to"] == 0

            sql(db, "ALTER TABLE telemetry_away RENAME TO telemetry")
            await until(lambda: h.written == 4, "the held rows stored")
            assert not h.stats()["failing"] and h.durable_cursor == 1
        assert len(await stored(store)) == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "factory_mas.history"]
    assert sum("not stored, retrying" in m for m in messages) == 1, messages
    assert sum("writable again" in m for m in messages) == 1, messages


async def test_a_closed_store_does_not_kill_the_historian(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    async with Store.in_data_dir(tmp_path) as store:
        h = running(hub, store)
        async with h:
            await until(lambda: not h.stats()["catching_up"], "the empty journal looked at")
            await store.__aexit__()
            await hub.publish(TELEMETRY, [validated(1, 0), validated(1, 1)])
            await until(lambda: h.flush_failures >= 2, "two failed flushes")
            assert h.stats()["running"] and h.stats()["pending"] == 2
    assert any("2 records not stored at exit" in r.getMessage() for r in caplog.records)


async def test_off_it_subscribes_to_nothing(store: Store) -> None:
    hub = Hub()
    async with running(hub, store, enabled=False) as h:
        assert hub.stats()["subscriptions"] == []
        assert h.stats() == {"enabled": False, "running": False}


# -- the journal it reads ------------------------------------------------------------------


async def test_the_journal_is_not_pruned_past_what_the_historian_stored(
    settings: Settings,
) -> None:
    c = build_components(settings)
    cyber = next(a for a in c.agents if a.agent_id == "cyber_agent")
    db = settings.data_dir / "factory.db"
    async with c.store, c.inference, cyber, c.telemetry:
        await until(lambda: not c.telemetry.stats()["catching_up"], "the journal looked at")
        sql(db, "ALTER TABLE telemetry RENAME TO telemetry_away")
        for m in range(5):
            await c.intake.accept([reading(1, m)], "http", journal=True)
        await until(lambda: cyber.inbox_cursor == 5, "cyber scored all five")
        await cyber.save_checkpoint()
        await until(lambda: c.telemetry.flush_failures > 0, "the historian failing")
        # cyber's checkpoint covers all five, the historian none: all are kept.
        assert await c.prune_journal() == 0
        sql(db, "ALTER TABLE telemetry_away RENAME TO telemetry")
        await until(lambda: c.telemetry.durable_cursor == 5, "the five stored")
        assert await c.prune_journal() == 5
