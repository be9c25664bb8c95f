"""Prediction history in the store: the writer on a real Hub and a real SQLite file, the
query behind it, retention, failure handling, and the agents' /history route."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from factory_mas.errors import StoreError
from factory_mas.history import HistoryWriter, query, reader
from factory_mas.history.writer import _delete_upto
from factory_mas.hub import Hub
from factory_mas.messages import Prediction
from factory_mas.settings import Settings, load_settings
from factory_mas.store import Store
from factory_mas.times import parse_instant
from tests.support.app import TEST_ENV, running_app
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import until

T0 = datetime(2025, 1, 1, tzinfo=UTC)
DAY_S = 86_400.0


def prediction(
    minute: int,
    machine_id: int | None = 1,
    agent_id: str = "pm_agent",
    camera_id: str | None = None,
) -> Prediction:
    ts = T0 + timedelta(minutes=minute)
    return Prediction(
        agent_id=agent_id,
        machine_id=machine_id,
        record_ts=ts,
        produced_at=ts,
        model_version="test-1",
        level="NORMAL",
        result={"minute": minute},
        camera_id=camera_id,
    )


def minutes(items: list[Prediction]) -> list[int]:
    return [p.result["minute"] for p in items]


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def open_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.in_data_dir(tmp_path) as store:
        yield store


def sql(db: Path, statement: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute(statement).fetchall()
        con.commit()
        return rows


# -- writing and reading ------------------------------------------------------------------


async def test_predictions_land_and_come_back_newest_first_with_filters(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store, HistoryWriter(hub, store, 7, 0.02) as writer:
        pm = [prediction(m, machine_id=1 + m % 2) for m in range(10)]
        ppe = [prediction(m, None, "ppe_agent", f"cam-{m % 2}") for m in range(6)]
        await hub.publish("predictions/pm_agent", pm[:4])
        await hub.publish("predictions/ppe_agent", ppe)
        await hub.publish("predictions/pm_agent", pm[4:])
        await until(lambda: writer.stats()["written"] == 16, "16 rows written")

        assert await query(store, "pm_agent", 100) == pm[::-1]
        assert minutes(await query(store, "pm_agent", 3)) == [9, 8, 7]
        assert minutes(await query(store, "pm_agent", 100, machine_id=2)) == [9, 7, 5, 3, 1]
        assert minutes(await query(store, "ppe_agent", 100, camera_id="cam-0")) == [4, 2, 0]
        assert await query(store, "ppe_agent", 100, machine_id=1) == []
        assert await query(store, "energy_agent", 100) == []

        since, until_ = (T0 + timedelta(minutes=3)).timestamp(), T0 + timedelta(minutes=6)
        # Both ends inclusive; since as Unix seconds, until as a datetime.
        window = await query(store, "pm_agent", 100, since=since, until=until_)
        assert minutes(window) == [6, 5, 4, 3]
        assert minutes(await query(store, "pm_agent", 2, machine_id=1, since=since)) == [8, 6]
        assert await query(store, "pm_agent", 100, since=T0 + timedelta(days=1)) == []

        stats = writer.stats()
        assert stats["dropped"] == 0 and stats["pending"] == 0 and not stats["failing"]
        assert stats["last_flush_at"] is not None


async def test_filtered_queries_walk_back_in_seq_windows_and_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store, HistoryWriter(hub, store, 7, 0.02) as writer:
        for m in range(20):
            agent = "pm_agent" if m % 4 else "safety_agent"  # interleaved, so gaps in seq
            await hub.publish(f"predictions/{agent}", [prediction(m, agent_id=agent)])
        await until(lambda: writer.stats()["written"] == 20, "20 rows written")
        since = T0 + timedelta(minutes=5)
        whole = await query(store, "pm_agent", 100, since=since)
        monkeypatch.setattr(reader, "SCAN_WINDOW_SEQ", 3)
        assert await query(store, "pm_agent", 100, since=since) == whole
        assert minutes(whole) == [m for m in range(19, 4, -1) if m % 4]
        assert minutes(await query(store, "pm_agent", 4, since=since)) == [19, 18, 17, 15]


async def test_a_flush_writes_what_arrived_in_one_transaction(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store:
        commits: list[int] = []
        sa.event.listen(store.engine, "commit", lambda _conn: commits.append(1))
        async with HistoryWriter(hub, store, 7, 0.05) as writer:
            for m in range(5):
                await hub.publish(
                    "predictions/pm_agent", [prediction(2 * m), prediction(2 * m + 1)]
                )
            await until(lambda: writer.stats()["written"] == 10, "10 rows written")
            assert len(commits) == 1
        assert minutes(await query(store, "pm_agent", 100)) == list(range(9, -1, -1))


async def test_exit_writes_what_is_pending(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store:
        async with HistoryWriter(hub, store, 7, flush_interval_s=3600) as writer:
            await hub.publish("predictions/cyber_agent", [prediction(1, agent_id="cyber_agent")])
            await until(lambda: writer.stats()["pending"] == 1, "the prediction taken")
            assert await query(store, "cyber_agent", 10) == []
        assert minutes(await query(store, "cyber_agent", 10)) == [1]
        assert writer.stats()["written"] == 1


async def test_a_full_queue_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store:
        async with HistoryWriter(hub, store, 7, 0.02, queue_size=4) as writer:
            # Publishing to a drop-oldest queue never waits: the writer gets no turn
            # between these, exactly like a writer stuck behind a slow disk.
            for m in range(10):
                await hub.publish("predictions/pm_agent", [prediction(m)])
            await until(lambda: writer.stats()["written"] == 4, "the 4 queued rows written")
            stats = writer.stats()
            assert stats["dropped"] == stats["dropped_queue"] == 6
            assert stats["queue"]["overflow"] == "drop_oldest"
            assert any(s["name"] == "history" for s in hub.stats()["subscriptions"])
        assert minutes(await query(store, "pm_agent", 100)) == [9, 8, 7, 6]


def journaled(minute: int, seq: int, index: int, agent_id: str = "pm_agent") -> Prediction:
    """A prediction of the record at `index` of journal row `seq`."""
    p = prediction(minute, agent_id=agent_id)
    return msgspec.structs.replace(p, journal_seq=seq, journal_index=index)


async def test_history_writes_queries_and_prunes(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub()
    async with HistoryWriter(hub, store, 7, 0.02) as writer:
        pm = [prediction(m, machine_id=1 + m % 2) for m in range(10)]
        ppe = [prediction(m, None, "ppe_agent", f"cam-{m % 2}") for m in range(4)]
        await hub.publish("predictions/pm_agent", pm)
        await hub.publish("predictions/ppe_agent", ppe)
        await until(lambda: writer.stats()["written"] == 14, "14 rows written")

        assert await query(store, "pm_agent", 100) == pm[::-1]
        assert minutes(await query(store, "pm_agent", 100, machine_id=2)) == [9, 7, 5, 3, 1]
        assert minutes(await query(store, "ppe_agent", 100, camera_id="cam-0")) == [2, 0]
        since, until_ = T0 + timedelta(minutes=3), T0 + timedelta(minutes=6)
        monkeypatch.setattr(reader, "SCAN_WINDOW_SEQ", 3)  # walk back in windows
        window = await query(store, "pm_agent", 100, since=since, until=until_)
        assert minutes(window) == [6, 5, 4, 3]
    deleted, more = await store.write(_delete_upto, 10**12, 5)
    assert (deleted, more) == (5, True)
    assert len(await query(store, "pm_agent", 100)) + len(await query(store, "ppe_agent", 100)) == 9


async def test_a_record_scored_again_after_a_crash_is_stored_once(store: Store) -> None:
    """What a kill -9 leads to: the restarted agent scores the journal rows its last
    checkpoint had not covered once more, and the history writer gets those predictions
    a second time."""
    live = prediction(100)  # POST /predict: not journaled, each scoring is news
    before = [journaled(m, seq=1 + m // 2, index=m % 2) for m in range(6)]
    # Another agent's predictions of the same records are its own.
    cyber = [journaled(m, 1 + m // 2, m % 2, "cyber_agent") for m in range(2)]
    hub = Hub()
    async with HistoryWriter(hub, store, 7, 0.02) as writer:
        await hub.publish("predictions/pm_agent", [*before, live])
        await hub.publish("predictions/cyber_agent", cyber)
        await until(lambda: writer.stats()["written"] == 9, "9 rows written")
    # After the restart: rows 2 and 3 again (minutes 2..5), then a new row 4.
    again = [journaled(m, 1 + m // 2, m % 2) for m in range(2, 8)]
    hub = Hub()
    async with HistoryWriter(hub, store, 7, 0.02) as writer:
        await hub.publish("predictions/pm_agent", [*again, live])

        def settled() -> bool:
            stats = writer.stats()
            return stats["written"] + stats["duplicates"] == 7

        await until(settled, "the 7 predictions written or found stored")
        assert writer.stats()["duplicates"] == 4 and writer.stats()["written"] == 3
    assert minutes(await query(store, "pm_agent", 100)) == [100, 7, 6, 100, 5, 4, 3, 2, 1, 0]
    assert minutes(await query(store, "cyber_agent", 100)) == [1, 0]
    stored = await query(store, "pm_agent", 1)
    assert (stored[0].journal_seq, stored[0].journal_index) == (None, None)


# -- failures -----------------------------------------------------------------------------


async def test_a_failing_store_is_retried_with_bounded_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="factory_mas.history")
    hub, db = Hub(), tmp_path / "factory.db"
    async with open_store(tmp_path) as store:
        async with HistoryWriter(hub, store, 7, 0.02, max_pending_rows=10) as writer:
            sql(db, "ALTER TABLE predictions RENAME TO predictions_away")
            for m in range(0, 20, 5):
                await hub.publish("predictions/pm_agent", [prediction(m + i) for i in range(5)])
            await until(lambda: writer.stats()["flush_failures"] >= 3, "three failed flushes")
            stats = writer.stats()
            # /status says what failed, not the SQL with the records' values (the log does).
            assert stats["failing"]
            assert stats["last_error"] == "the store could not be used: unavailable"
            assert stats["running"] and stats["written"] == 0
            # Only the newest 10 are held; the 10 older ones are dropped and counted.
            assert stats["pending"] == 10 and stats["dropped"] == stats["dropped_pending"] == 10

            sql(db, "ALTER TABLE predictions_away RENAME TO predictions")
            await until(lambda: writer.stats()["written"] == 10, "the held rows written")
            assert not writer.stats()["failing"] and writer.stats()["pending"] == 0
            await hub.publish("predictions/pm_agent", [prediction(20)])
            await until(lambda: writer.stats()["written"] == 11, "a new row written")
        assert minutes(await query(store, "pm_agent", 100)) == list(range(20, 9, -1))
    messages = [r.getMessage() for r in caplog.records if r.name == "factory_mas.history"]
    assert sum("not written, retrying" in m for m in messages) == 1, messages
    assert any("no such table: predictions" in m and "INSERT" in m for m in messages), messages
    assert sum("writable again" in m for m in messages) == 1, messages


async def test_a_closed_store_does_not_kill_the_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store:
        writer = HistoryWriter(hub, store, 7, 0.02)
        async with writer:
            await store.__aexit__()
            await hub.publish("predictions/pm_agent", [prediction(1), prediction(2)])
            await until(lambda: writer.stats()["flush_failures"] >= 2, "two failed flushes")
            assert writer.stats()["running"] and writer.stats()["pending"] == 2
            # The route's reader sees the same closed store as a StoreError, not a crash.
            with pytest.raises(StoreError, match="closed"):
                await query(store, "pm_agent", 10)
    assert writer.stats()["pending"] == 2
    assert any("2 predictions not written at exit" in r.getMessage() for r in caplog.records)


async def test_other_payloads_on_prediction_topics_are_skipped(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store, HistoryWriter(hub, store, 7, 0.02) as writer:
        await hub.publish("predictions/pm_agent", [{"not": "a prediction"}, prediction(1)])
        await hub.publish("predictions/pm_agent", prediction(2))  # one, not in a list
        await until(lambda: writer.stats()["written"] == 2, "2 rows written")
        assert writer.stats()["skipped"] == 1
        assert minutes(await query(store, "pm_agent", 10)) == [2, 1]


# -- retention ----------------------------------------------------------------------------


async def test_retention_goes_by_write_time_and_survives_a_restart(tmp_path: Path) -> None:
    hub, clock = Hub(), Clock()
    old = [prediction(m) for m in range(3)]  # record_ts in 2025: long before the clock
    new = [prediction(m) for m in range(3, 6)]

    async def written(writer: HistoryWriter, n: int) -> None:
        await until(lambda: writer.stats()["written"] == n, f"{n} rows written")

    async with open_store(tmp_path) as store:
        keep = {"prune_interval_s": 3600.0, "clock": clock}  # prune() is called by hand
        async with HistoryWriter(hub, store, 1.0, 0.02, **keep) as writer:
            await hub.publish("predictions/pm_agent", old)
            await written(writer, 3)
            # Old record times are not old rows: nothing goes before a day has passed.
            assert await writer.prune() == 0
            clock.now += 0.9 * DAY_S
            assert await writer.prune() == 0

            clock.now += 0.2 * DAY_S
            await hub.publish("predictions/pm_agent", new)
            await written(writer, 6)
            assert await writer.prune() == 3
            assert minutes(await query(store, "pm_agent", 100)) == [5, 4, 3]
            assert writer.stats()["pruned"] == 3

        # A new writer (a restart) knows from the stored marks when the rest was written.
        clock.now += 0.5 * DAY_S
        async with HistoryWriter(hub, store, 1.0, 0.02, **keep) as writer:
            assert await writer.prune() == 0
            clock.now += 0.6 * DAY_S
            assert await writer.prune() == 3
        assert await query(store, "pm_agent", 100) == []


async def test_the_prune_loop_runs_by_itself(tmp_path: Path) -> None:
    hub = Hub()
    async with open_store(tmp_path) as store:
        # A retention of 86 ms on the real clock.
        tiny = {"prune_interval_s": 0.02}
        async with HistoryWriter(hub, store, 1e-6, 0.02, **tiny) as writer:
            await hub.publish("predictions/pm_agent", [prediction(1), prediction(2)])
            await until(lambda: writer.stats()["pruned"] == 2, "the rows pruned")
            assert writer.stats()["written"] == 2
        assert await query(store, "pm_agent", 10) == []


def test_retention_must_be_positive() -> None:
    with pytest.raises(ValueError, match="retention_days"):
        HistoryWriter(Hub(), Store("sqlite://"), 0)


# -- time parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2025-01-01T00:00:00Z", T0),
        ("2025-01-01T00:00:00", T0),  # no zone = UTC
        ("2025-01-01", T0),
        ("2025-01-01 00:00:00.000+00:00", T0),
        ("2025-01-01T02:00:00+02:00", T0),
        ("2025-01-01T02:00:00 02:00", T0),  # the '+' of an unencoded URL became a space
        ("2024-12-31T19:00:00-05:00", T0),
        ("20250101T000000Z", T0),
        (str(int(T0.timestamp())), T0),
        (f"{T0.timestamp() + 0.25}", T0 + timedelta(seconds=0.25)),
    ],
)
def test_parse_instant_accepts_iso_8601_and_unix_seconds(raw: str, expected: datetime) -> None:
    assert parse_instant(raw) == expected.timestamp()


@pytest.mark.parametrize("raw", ["yesterday", "2025-13-01", "nan", "inf", "1e999", "", "12:00"])
def test_parse_instant_refuses_the_rest(raw: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant(raw)


# -- the agents' /history route -----------------------------------------------------------


@pytest.fixture
def small_ring(tmp_path: Path) -> Settings:
    """The test settings, with pm_agent's in-memory history at its minimum of 10."""
    return load_settings(
        path=REPO / "settings.toml",
        env={
            "FACTORY_DATA_DIR": str(tmp_path / "data"),
            **TEST_ENV,
            "FACTORY_AGENTS_PM_HISTORY_SIZE": "10",
        },
    )


async def test_history_route_answers_time_windows_from_the_store(small_ring: Settings) -> None:
    async with running_app(small_ring) as (components, client):  # noqa: SIM117 - needs components
        async with HistoryWriter(components.hub, components.store, 7, 0.02) as writer:
            raw = [
                record(1 + m % 2, timestamp=(T0 + timedelta(minutes=m)).isoformat())
                for m in range(15)
            ]
            posted = await client.post("/api/pm/predict", json=raw)
            assert posted.status_code == 200
            sent = msgspec.convert(posted.json()["predictions"], list[Prediction])
            await until(lambda: writer.stats()["written"] == 15, "15 predictions stored")

            async def get(**params: Any) -> dict:
                response = await client.get("/api/pm/history", params=params)
                assert response.status_code == 200, response.text
                return response.json()

            def preds(body: dict) -> list[Prediction]:
                return msgspec.convert(body["predictions"], list[Prediction])

            newest_first = sent[::-1]
            memory = await get()
            assert memory["source"] == "memory" and preds(memory) == newest_first[:10]

            stored = await get(source="store")
            assert stored["source"] == "store" and stored["count"] == 15
            assert preds(stored) == newest_first

            window = await get(since="2025-01-01T00:03:00Z", until=T0.timestamp() + 600)
            assert window["source"] == "store" and window["agent_id"] == "pm_agent"
            assert preds(window) == [p for p in newest_first if 3 <= p.record_ts.minute <= 10]

            one = await get(since="2025-01-01T00:02:00", machine_id=2, limit=3)
            assert [(p.machine_id, p.record_ts.minute) for p in preds(one)] == [
                (2, 13),
                (2, 11),
                (2, 9),
            ]

            # The ring, asked for a window, answers from what it holds (minutes 5..14).
            ring = await get(since="2025-01-01T00:00:00Z", source="memory")
            assert ring["source"] == "memory" and preds(ring) == newest_first[:10]

            # A '+' typed into the URL unencoded arrives as a space and still works.
            plus = await client.get("/api/pm/history?since=2025-01-01T01:12:00+01:00")
            assert [p["record_ts"] for p in plus.json()["predictions"]] == [
                "2025-01-01T00:14:00Z",
                "2025-01-01T00:13:00Z",
                "2025-01-01T00:12:00Z",
            ]


@pytest.mark.parametrize(
    ("params", "name", "value"),
    [
        ({"since": "yesterday"}, "since", "yesterday"),
        ({"until": "2025-02-30T00:00:00Z"}, "until", "2025-02-30T00:00:00Z"),
        ({"since": "nan"}, "since", "nan"),
        ({"since": "2025-01-02", "until": "2025-01-01"}, "since", "2025-01-02"),
        ({"source": "disk"}, "source", "disk"),
    ],
)
async def test_history_route_rejects_bad_times(
    settings: Settings, params: dict, name: str, value: str
) -> None:
    async with running_app(settings) as (_components, client):
        response = await client.get("/api/pm/history", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "bad_query"
    assert body["detail"].startswith(f"{name}:") and repr(value) in body["detail"]


async def test_history_route_without_a_writer_answers_empty(settings: Settings) -> None:
    async with running_app(settings) as (_components, client):
        posted = await client.post("/api/pm/predict", json=record(1))
        assert posted.status_code == 200
        response = await client.get("/api/pm/history", params={"since": "2025-01-01"})
        assert response.status_code == 200
        assert response.json() == {
            "agent_id": "pm_agent",
            "source": "store",
            "count": 0,
            "predictions": [],
        }


async def test_sampling_keeps_level_changes_and_one_per_machine_per_interval(
    tmp_path: Path,
) -> None:
    clock = Clock()
    hub = Hub()
    async with (
        open_store(tmp_path) as store,
        HistoryWriter(hub, store, 7, flush_interval_s=0.01, sample_s=60, clock=clock) as writer,
    ):
        sent = []
        for minute in range(10):
            p = prediction(minute)
            if minute in (4, 5):
                p.level = "WARNING"  # a change each way: both kept
            sent.append(p)
            await hub.publish("predictions/pm_agent", [p, prediction(minute, machine_id=2)])
            # The writer's clock is read when it takes the message: let it take this one.
            await until(lambda: writer.stats()["queue"]["depth"] == 0, "the message taken")
            clock.now += 5
        clock.now += 60
        await hub.publish("predictions/pm_agent", [prediction(10)])
        await until(lambda: writer.written == 5, "the kept predictions written")
        stored = await query(store, "pm_agent", 100)
    assert sorted(minutes(stored)) == [0, 0, 4, 6, 10]
    assert {p.machine_id for p in stored if p.result["minute"] == 0} == {1, 2}
    assert writer.stats()["sampled_out"] == 21 - 5
