"""factory_mas with its state in PostgreSQL (DATABASE_URL): the whole app end to end,
the SQL of every module, and the app-level tests of the orchestrator, notifier, backlog
and configurator run again, unchanged, against a real PostgreSQL database.

The server comes from tests/postgres.py; without PostgreSQL installed these are skipped.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from factory_mas import history
from factory_mas.auth import keys
from factory_mas.backlog import service as backlog
from factory_mas.bridges import mqtt
from factory_mas.history import HistoryWriter
from factory_mas.hub import Hub
from factory_mas.messages import ShiftFacts, ShiftSummary
from factory_mas.settings import Settings, load_settings
from factory_mas.store import Store, database_url

from . import test_backlog, test_configure, test_notify, test_orchestrator
from .conftest import REPO, TEST_ENV, running_app
from .postgres import Postgres
from .scenarios import attack_episode
from .test_history import (
    T0,
    check_rescored_records_are_stored_once,
    minutes,
    prediction,
    until,
)
from .test_notify import clock, fake  # noqa: F401 - fixtures of the notifier tests rerun below

replace = msgspec.structs.replace


# -- the same tests, on PostgreSQL ---------------------------------------------------------
# These two fixtures shadow conftest's `settings` and test_notify's `store` for every test
# collected in this module, so the tests copied in below run against PostgreSQL.


@pytest.fixture
def settings(settings: Settings, postgres_url: str) -> Settings:
    return replace(settings, data=replace(settings.data, database_url=postgres_url))


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[Store]:
    async with Store(postgres_url) as s:
        yield s


def _again_on_postgresql(module: ModuleType, fixtures: set[str]) -> None:
    """Collect here, as test_<module>__<name>, every test of `module` that gets its
    database from one of `fixtures`."""
    short = module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    for name, fn in list(vars(module).items()):
        wanted = inspect.isfunction(fn) and fixtures & set(inspect.signature(fn).parameters)
        if name.startswith("test_") and wanted:
            globals()[f"test_{short}__{name.removeprefix('test_')}"] = fn


_again_on_postgresql(test_orchestrator, {"settings"})
_again_on_postgresql(test_backlog, {"settings"})
_again_on_postgresql(test_configure, {"settings"})
_again_on_postgresql(test_notify, {"store"})


# -- the app end to end --------------------------------------------------------------------


def pg_settings(tmp_path: Path, url: str) -> Settings:
    """Settings as an operator gives them: DATABASE_URL in the form Heroku hands out."""
    heroku = "postgres://" + url.partition("://")[2]
    return load_settings(
        path=REPO / "settings.toml",
        env={**TEST_ENV, "FACTORY_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": heroku},
    )


async def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    async def poll() -> Any:
        while not (found := await check()):
            await asyncio.sleep(0.05)
        return found

    try:
        return await asyncio.wait_for(poll(), timeout_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_the_app_on_postgresql_keeps_its_alarms_across_a_restart(
    tmp_path: Path, postgres: Postgres, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = pg_settings(tmp_path, postgres_url)
    episode = attack_episode()
    machine = episode.records[0]["machine_id"]
    attack = episode.records[: episode.lead + episode.attack_rows]  # no calm at the end

    async def cyber_alarms(client: Any) -> list[dict]:
        answer = await client.get(
            "/api/orchestrator/alarms", params={"source": "cyber_agent", "machine_id": machine}
        )
        return answer.json()["alarms"]

    async with running_app(settings) as (_c, client):
        status = (await client.get("/status")).json()
        assert status["store"]["url"].startswith("postgresql+psycopg://factory:***@127.0.0.1")
        answer = await client.post("/api/ingest", json=attack)
        assert answer.status_code == 202, answer.text

        async def critical() -> list[dict]:
            found = await cyber_alarms(client)
            return found if any(a["highest_level"] == "CRITICAL" for a in found) else []

        before = await wait_for(critical, "a CRITICAL cyber alarm from the ingested records")
        assert all(a["state"] == "ACTIVE_UNACK" for a in before)

        async def decided() -> list[dict]:
            answer = await client.get("/api/orchestrator/decisions", params={"limit": 100})
            return answer.json()["decisions"]

        decisions = await wait_for(decided, "a decision about the alarm")
        history_rows = (await client.get(f"/api/cyber/history?machine_id={machine}")).json()
        assert len(history_rows["predictions"]) == len(attack)

    assert not (tmp_path / "data" / "factory.db").exists()  # nothing went to SQLite

    async with running_app(settings) as (c, client):
        after = await cyber_alarms(client)
        assert [(a["id"], a["state"], a["count"]) for a in after] == [
            (a["id"], a["state"], a["count"]) for a in before
        ]
        answer = await client.get("/api/orchestrator/decisions", params={"limit": 100})
        assert len(answer.json()["decisions"]) >= len(decisions)
        # The restored alarm is the one the orchestrator keeps: the same attack again
        # counts on it instead of raising a new one.
        assert (await client.post("/api/ingest", json=attack)).status_code == 202

        async def counted_again() -> list[dict]:
            found = await cyber_alarms(client)
            return found if sum(a["count"] for a in found) > sum(a["count"] for a in before) else []

        again = await wait_for(counted_again, "the alerts counted on the restored alarm")
        assert {a["id"] for a in again} == {a["id"] for a in before}
        assert c.store.version == (await c.store.read(_max_version))

    assert postgres.password not in caplog.text


def _max_version(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() or 0)


# -- each module's SQL ---------------------------------------------------------------------


async def test_history_writes_queries_and_prunes_on_postgresql(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub()
    async with HistoryWriter(hub, store, 7, 0.02) as writer:
        pm = [prediction(m, machine_id=1 + m % 2) for m in range(10)]
        ppe = [prediction(m, None, "ppe_agent", f"cam-{m % 2}") for m in range(4)]
        await hub.publish("predictions/pm_agent", pm)
        await hub.publish("predictions/ppe_agent", ppe)
        await until(lambda: writer.stats()["written"] == 14, "14 rows written")

        assert await history.query(store, "pm_agent", 100) == pm[::-1]
        assert minutes(await history.query(store, "pm_agent", 100, machine_id=2)) == [9, 7, 5, 3, 1]
        assert minutes(await history.query(store, "ppe_agent", 100, camera_id="cam-0")) == [2, 0]
        since, until_ = T0 + timedelta(minutes=3), T0 + timedelta(minutes=6)
        monkeypatch.setattr(history, "SCAN_WINDOW_SEQ", 3)  # walk back in windows
        window = await history.query(store, "pm_agent", 100, since=since, until=until_)
        assert minutes(window) == [6, 5, 4, 3]
    deleted, more = await store.write(history._delete_upto, 10**12, 5)
    assert (deleted, more) == (5, True)
    assert (
        len(await history.query(store, "pm_agent", 100))
        + len(await history.query(store, "ppe_agent", 100))
        == 9
    )


async def test_a_record_scored_again_after_a_crash_is_stored_once_on_postgresql(
    store: Store,
) -> None:
    await check_rescored_records_are_stored_once(store)


async def test_api_keys_and_their_audit_on_postgresql(store: Store) -> None:
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


async def test_mqtt_outbox_on_postgresql(store: Store) -> None:
    rows = [(f"predictions/pm_agent/{i}", b"\x00payload%d" % i, float(i)) for i in range(5)]
    await store.write(mqtt._outbox_add, rows)
    head = await store.read(mqtt._outbox_head, 3)
    assert [(t, p) for _, t, p in head] == [(t, p) for t, p, _ in rows[:3]]
    await store.write(mqtt._outbox_delete, [seq for seq, _, _ in head])
    assert await store.read(mqtt._outbox_size) == 2


async def test_one_final_summary_per_shift_on_postgresql(store: Store) -> None:
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


def test_the_database_url_setting_and_its_env_alias(tmp_path: Path) -> None:
    assert load_settings(path=REPO / "settings.toml", env={}).data.database_url == ""
    s = load_settings(path=REPO / "settings.toml", env={"DATABASE_URL": "postgres://u:p@h/db"})
    assert Store.from_settings(s).url == database_url("postgres://u:p@h/db")
    sqlite = load_settings(path=REPO / "settings.toml", env={"FACTORY_DATA_DIR": str(tmp_path)})
    assert Store.from_settings(sqlite).url == f"sqlite:///{tmp_path / 'factory.db'}"


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h/db", "u:s3cret@h/db", "sqlite:/relative.db"])
def test_a_database_url_of_another_kind_is_refused_without_echoing_it(url: str) -> None:
    from factory_mas.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        load_settings(path=REPO / "settings.toml", env={"DATABASE_URL": url})
    message = str(info.value)
    assert "database_url" in message and "DATABASE_URL" in message
    assert "s3cret" not in message
