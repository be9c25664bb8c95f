"""The persistent store: a real SQLite file in WAL mode, checkpoints, schema versions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from factory_mas.errors import FactoryError, StoreError
from factory_mas.store import MIGRATIONS, Store


def sql(db: Path, query: str, *args) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


async def test_in_data_dir_creates_factory_db_in_wal_mode(tmp_path: Path) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        assert await store.ping() is True
    db = tmp_path / "factory.db"
    assert db.is_file()
    assert sql(db, "PRAGMA journal_mode") == [("wal",)]


async def test_in_data_dir_creates_a_missing_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "nested"
    async with Store.in_data_dir(data_dir) as store:
        await store.save_checkpoint("pm_agent", b"x")
    assert (data_dir / "factory.db").is_file()


async def test_checkpoint_round_trip(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 40  # binary, with NUL bytes, ~10 kB
    async with Store.in_data_dir(tmp_path) as store:
        await store.save_checkpoint("pm_agent", blob)
        assert await store.load_checkpoint("pm_agent") == blob


async def test_checkpoint_overwrite_keeps_one_row(tmp_path: Path) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        await store.save_checkpoint("pm_agent", b"first")
        await store.save_checkpoint("energy_agent", b"other")
        await store.save_checkpoint("pm_agent", b"second")
        assert await store.load_checkpoint("pm_agent") == b"second"
        assert await store.load_checkpoint("energy_agent") == b"other"
    assert sql(
        tmp_path / "factory.db", "SELECT count(*) FROM checkpoints WHERE name = ?", "pm_agent"
    ) == [(1,)]


async def test_missing_checkpoint_is_none_and_empty_is_not_missing(tmp_path: Path) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        assert await store.load_checkpoint("never_saved") is None
        await store.save_checkpoint("empty", b"")
        assert await store.load_checkpoint("empty") == b""


async def test_data_survives_reopening(tmp_path: Path) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        await store.save_checkpoint("pm_agent", b"state-1")
    async with Store.in_data_dir(tmp_path) as store:
        assert await store.load_checkpoint("pm_agent") == b"state-1"
        await store.save_checkpoint("pm_agent", b"state-2")
    async with Store.in_data_dir(tmp_path) as store:
        assert await store.load_checkpoint("pm_agent") == b"state-2"


async def test_schema_version_recorded_once_and_not_reapplied(tmp_path: Path) -> None:
    db = tmp_path / "factory.db"
    async with Store.in_data_dir(tmp_path) as store:
        assert store.version == len(MIGRATIONS)
        await store.save_checkpoint("pm_agent", b"keep me")
    assert sql(db, "SELECT version FROM schema_version ORDER BY version") == [
        (n,) for n in range(1, len(MIGRATIONS) + 1)
    ]

    for _ in range(2):
        async with Store.in_data_dir(tmp_path) as store:
            assert store.version == len(MIGRATIONS)
            assert await store.load_checkpoint("pm_agent") == b"keep me"
    assert sql(db, "SELECT version FROM schema_version ORDER BY version") == [
        (n,) for n in range(1, len(MIGRATIONS) + 1)
    ]


async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "factory.db"
    async with Store.in_data_dir(tmp_path) as store:
        await store.save_checkpoint("pm_agent", b"from the future")
    newer = len(MIGRATIONS) + 1
    con = sqlite3.connect(db)
    con.execute("INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (newer,))
    con.commit()
    con.close()

    with pytest.raises(StoreError) as info:
        async with Store.in_data_dir(tmp_path):
            pass
    assert isinstance(info.value, FactoryError)
    message = str(info.value)
    assert str(newer) in message
    assert "factory.db" in message
    # the refused database is left as it was
    assert sql(db, "SELECT max(version), count(*) FROM schema_version") == [
        (newer, len(MIGRATIONS) + 1)
    ]
    assert sql(db, "SELECT data FROM checkpoints WHERE name = 'pm_agent'") == [
        (b"from the future",)
    ]


async def test_ping_after_close_reports_false(tmp_path: Path) -> None:
    store = Store.in_data_dir(tmp_path)
    async with store:
        assert await store.ping() is True
    assert await store.ping() is False


async def test_a_version_2_database_is_brought_forward_keeping_its_data(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from factory_mas.store import schema_version, sqlite_url

    db = tmp_path / "factory.db"
    engine = sa.create_engine(sqlite_url(db))
    with engine.begin() as conn:  # what factory_mas with two migrations left behind
        for number, migrate in enumerate(MIGRATIONS[:2], start=1):
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=0))
        conn.execute(sa.text("INSERT INTO checkpoints VALUES ('pm_agent', x'01', 0)"))
        conn.execute(
            sa.text(
                "INSERT INTO inbox (topic, source, received_at, data) VALUES ('t', 's', 0, x'02')"
            )
        )
    engine.dispose()

    async with Store.in_data_dir(tmp_path) as store:
        assert store.version == len(MIGRATIONS) >= 3
        assert await store.load_checkpoint("pm_agent") == b"\x01"
        assert [seq for seq, _, _ in await store.inbox_after(0)] == [1]

    def alarm(open_: int) -> tuple:
        return ("plc", "FIRE_RISK", "machine:7", "ACTIVE_UNACK", "CRITICAL", "CRITICAL", open_)

    insert = (
        "INSERT INTO alarms (source, type, subject, state, level, highest_level, first_seen,"
        " last_seen, open, plan_pending, data) VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, 0, x'')"
    )
    con = sqlite3.connect(db)
    try:
        con.execute(insert, alarm(0))
        con.execute(insert, alarm(0))  # closed alarms of one key: as many as there were
        con.execute(insert, alarm(1))
        # ... but only one open alarm per key, whatever the code above it does.
        with pytest.raises(sqlite3.IntegrityError):
            con.execute(insert, alarm(1))
    finally:
        con.close()
