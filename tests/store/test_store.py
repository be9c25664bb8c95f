"""The persistent store on both backends: a real SQLite file in WAL mode and a real
PostgreSQL database (tests/support/postgres.py). Checkpoints, the journal, schema versions and
migrations behave the same on both; the few tests about one backend say so in their name."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from factory_mas.auth import keys
from factory_mas.bridges import mqtt
from factory_mas.errors import FactoryError, StoreError
from factory_mas.store import (
    MIGRATIONS,
    Store,
    alarms,
    audit_change,
    checkpoints,
    config_changes,
    database_url,
    inbox,
    mqtt_outbox,
    predictions,
    schema_version,
    sms_outbox,
    sqlite_url,
)
from tests.support.full_disk import PageLimit
from tests.support.net import free_port


@dataclass
class Database:
    """One empty database of either backend, and a way to look into it behind the
    store's back."""

    backend: str
    url: str
    name: str  # what an error message about it names: the file or the database

    def store(self) -> Store:
        return Store(self.url)

    def sql(self, query: str, **params: Any) -> list[tuple]:
        engine = sa.create_engine(database_url(self.url))
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(query), params)
                return [tuple(row) for row in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def run(self, fn: Any) -> None:
        """Run fn(conn) in a transaction of a connection of our own."""
        engine = sa.create_engine(database_url(self.url))
        try:
            with engine.begin() as conn:
                fn(conn)
        finally:
            engine.dispose()


@pytest.fixture
def db(database: str) -> Database:
    url = sa.make_url(database)
    return Database(url.get_backend_name(), database, Path(url.database or "").name)


# -- SQLite files ------------------------------------------------------------------------


async def test_sqlite_in_data_dir_creates_factory_db_in_wal_mode(tmp_path: Path) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        assert await store.ping() is True
    db = Database("sqlite", sqlite_url(tmp_path / "factory.db"), "factory.db")
    assert (tmp_path / "factory.db").is_file()
    assert db.sql("PRAGMA journal_mode") == [("wal",)]


async def test_sqlite_in_data_dir_creates_a_missing_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "nested"
    async with Store.in_data_dir(data_dir) as store:
        await store.save_checkpoint("pm_agent", b"x")
    assert (data_dir / "factory.db").is_file()


async def test_a_full_sqlite_file_fails_writes_and_says_so_until_one_succeeds(
    tmp_path: Path,
) -> None:
    async with Store.in_data_dir(tmp_path) as store:
        limit = PageLimit(store)
        await limit.allow(0)
        with pytest.raises(StoreError):
            await store.inbox_append("t", "http", bytes(100_000))
        problem = store.write_problem
        assert problem is not None and problem.startswith("writes failing since 20")
        assert "disk full" in problem
        assert "INSERT" not in problem  # the SQL and its values go to the log only
        assert await store.ping() is True  # reads still work: ping alone cannot tell
        # Still full: the time it started failing stays the first failure's.
        with pytest.raises(StoreError):
            await store.save_checkpoint("pm_agent", bytes(100_000))
        assert store.write_problem == problem

        limit.lift()
        await store.inbox_append("t", "http", bytes(100_000))
        assert store.write_problem is None


# -- checkpoints -------------------------------------------------------------------------


async def test_checkpoint_round_trip(db: Database) -> None:
    blob = bytes(range(256)) * 40  # binary, with NUL bytes, ~10 kB
    async with db.store() as store:
        await store.save_checkpoint("pm_agent", blob)
        loaded = await store.load_checkpoint("pm_agent")
    assert loaded == blob and type(loaded) is bytes


async def test_checkpoint_overwrite_keeps_one_row(db: Database) -> None:
    async with db.store() as store:
        await store.save_checkpoint("pm_agent", b"first")
        await store.save_checkpoint("energy_agent", b"other")
        await store.save_checkpoint("pm_agent", b"second")
        assert await store.load_checkpoint("pm_agent") == b"second"
        assert await store.load_checkpoint("energy_agent") == b"other"
    assert db.sql("SELECT count(*) FROM checkpoints WHERE name = :n", n="pm_agent") == [(1,)]


async def test_missing_checkpoint_is_none_and_empty_is_not_missing(db: Database) -> None:
    async with db.store() as store:
        assert await store.load_checkpoint("never_saved") is None
        await store.save_checkpoint("empty", b"")
        assert await store.load_checkpoint("empty") == b""


async def test_two_stores_saving_the_same_new_checkpoints_at_once(db: Database) -> None:
    # Two instances sharing a database: both may find no row and both insert it.
    names = [f"agent-{i}" for i in range(20)]
    async with db.store() as one, db.store() as two:
        await asyncio.gather(*(s.save_checkpoint(n, n.encode()) for n in names for s in (one, two)))
        for name in names:
            assert await one.load_checkpoint(name) == name.encode()
    assert db.sql("SELECT count(*) FROM checkpoints") == [(len(names),)]


async def test_data_survives_reopening(db: Database) -> None:
    async with db.store() as store:
        await store.save_checkpoint("pm_agent", b"state-1")
    async with db.store() as store:
        assert await store.load_checkpoint("pm_agent") == b"state-1"
        await store.save_checkpoint("pm_agent", b"state-2")
    async with db.store() as store:
        assert await store.load_checkpoint("pm_agent") == b"state-2"


# -- the journal -------------------------------------------------------------------------


async def test_journal_numbers_grow_and_are_never_reused_after_a_prune(db: Database) -> None:
    async with db.store() as store:
        seqs = [
            await store.inbox_append("sensors/factory/data", "http", b"%d" % i) for i in range(3)
        ]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        assert [(s, d) for s, _, d in await store.inbox_after(seqs[0])] == [
            (seqs[1], b"1"),
            (seqs[2], b"2"),
        ]
        assert await store.inbox_prune(seqs[-1]) == 3
        assert await store.inbox_size() == 0
    async with db.store() as store:
        after = await store.inbox_append("sensors/factory/data", "http", b"new")
        assert after > seqs[-1]
        assert await store.inbox_after(0) == [(after, "sensors/factory/data", b"new")]


async def test_messages_journaled_together_are_kept_all_or_none(db: Database) -> None:
    async with db.store() as store:
        first, second = await store.inbox_append_many("t", "http", [b"a", b"b"])
        assert second == first + 1
        # The second message refuses to go in (NULL data): the first goes with it.
        with pytest.raises(StoreError):
            await store.inbox_append_many("t", "http", [b"c", None])  # type: ignore[list-item]
        assert [d for _, _, d in await store.inbox_after(0)] == [b"a", b"b"]
        # A value the database refuses is the caller's problem, not a failing store.
        assert store.write_problem is None


async def test_row_ids_are_64_bit(db: Database) -> None:
    # The journal outgrows 2**31 rows in weeks at a few thousand records a second.
    big = 2**40
    async with db.store() as store:
        await store.inbox_append("t", "s", b"first")
    row = {"seq": big, "topic": "t", "source": "s", "received_at": 0.0, "data": b""}
    db.run(lambda conn: conn.execute(inbox.insert().values(**row)))
    if db.backend == "postgresql":  # an explicit id does not move the sequence along
        db.sql("SELECT setval(pg_get_serial_sequence('inbox', 'seq'), :v)", v=big)
    async with db.store() as store:
        assert await store.inbox_append("t", "s", b"next") == big + 1


async def test_long_text_is_kept_and_nul_dropped_alike_on_both(db: Database) -> None:
    # SQLite does not enforce VARCHAR lengths; PostgreSQL would, and fail the whole batch.
    topic = "sensors/factory/data/" + "x" * 600
    alarm_ids = "[" + ",".join(str(i) for i in range(1000, 2000)) + "]"  # ~5 kB
    async with db.store() as store:
        seq = await store.inbox_append(topic, "mqtt", b"{}")
        assert (await store.inbox_after(seq - 1))[0][1] == topic

        def write(conn: sa.Connection) -> None:
            who = {"target": "pm_agent", "origin": "mqtt", "by": "a\x00b"}
            audit_change(conn, at=1.0, accepted=True, data=b"{}", **who)
            texts = {"created_at": 0.0, "body": "b", "status": "queued", "next_attempt_at": 0.0}
            conn.execute(sms_outbox.insert().values(alarm_ids=alarm_ids, attempts=0, **texts))

        await store.write(write)
        by, ids = await store.read(
            lambda conn: (
                conn.execute(sa.select(config_changes.c.by)).scalar(),
                conn.execute(sa.select(sms_outbox.c.alarm_ids)).scalar(),
            )
        )
    assert by == "ab"  # PostgreSQL text cannot hold NUL: dropped on both
    assert ids == alarm_ids


# -- schema versions and migrations ------------------------------------------------------


async def test_schema_version_recorded_once_and_not_reapplied(db: Database) -> None:
    versions = [(n,) for n in range(1, len(MIGRATIONS) + 1)]
    async with db.store() as store:
        assert store.version == len(MIGRATIONS)
        await store.save_checkpoint("pm_agent", b"keep me")
    assert db.sql("SELECT version FROM schema_version ORDER BY version") == versions

    for _ in range(2):
        async with db.store() as store:
            assert store.version == len(MIGRATIONS)
            assert await store.load_checkpoint("pm_agent") == b"keep me"
    assert db.sql("SELECT version FROM schema_version ORDER BY version") == versions


async def test_stores_starting_at_once_migrate_once(db: Database) -> None:
    # Instances started together (ingest and control roles, a rolling deploy): each
    # store has its own thread and connection, so the migrations really overlap.
    stores = [db.store() for _ in range(4)]
    try:
        await asyncio.gather(*(s.__aenter__() for s in stores))
        assert {s.version for s in stores} == {len(MIGRATIONS)}
    finally:
        for s in stores:
            await s.__aexit__()
    assert db.sql("SELECT version, count(*) FROM schema_version GROUP BY version ORDER BY 1") == [
        (n, 1) for n in range(1, len(MIGRATIONS) + 1)
    ]


async def test_instances_starting_at_once_make_one_first_admin_key(db: Database) -> None:
    async with db.store():
        pass  # migrated, so the four below only race for the key
    stores = [db.store() for _ in range(4)]
    try:
        await asyncio.gather(*(s.__aenter__() for s in stores))
        made = await asyncio.gather(*(s.write(keys.add_first) for s in stores))
    finally:
        for s in stores:
            await s.__aexit__()
    assert sum(m is not None for m in made) == 1
    assert db.sql("SELECT count(*) FROM api_keys") == [(1,)]


async def test_newer_schema_version_is_refused(db: Database) -> None:
    async with db.store() as store:
        await store.save_checkpoint("pm_agent", b"from the future")
    newer = len(MIGRATIONS) + 1
    db.sql("INSERT INTO schema_version (version, applied_at) VALUES (:v, 0)", v=newer)

    with pytest.raises(StoreError) as info:
        async with db.store():
            pass
    assert isinstance(info.value, FactoryError)
    message = str(info.value)
    assert str(newer) in message
    assert db.name in message
    password = sa.make_url(db.url).password
    assert not password or password not in message
    # the refused database is left as it was
    assert db.sql("SELECT max(version), count(*) FROM schema_version") == [
        (newer, len(MIGRATIONS) + 1)
    ]
    assert db.sql("SELECT data FROM checkpoints WHERE name = 'pm_agent'") == [(b"from the future",)]


async def test_ping_after_close_reports_false(db: Database) -> None:
    store = db.store()
    async with store:
        assert await store.ping() is True
    assert await store.ping() is False


async def test_a_version_2_database_is_brought_forward_keeping_its_data(db: Database) -> None:
    def version_2(conn: sa.Connection) -> None:  # what factory_mas with two migrations left
        for number, migrate in enumerate(MIGRATIONS[:2], start=1):
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=0))
        conn.execute(checkpoints.insert().values(name="pm_agent", data=b"\x01", updated_at=0))
        conn.execute(inbox.insert().values(topic="t", source="s", received_at=0, data=b"\x02"))

    db.run(version_2)
    async with db.store() as store:
        assert store.version == len(MIGRATIONS) >= 3
        assert await store.load_checkpoint("pm_agent") == b"\x01"
        assert [seq for seq, _, _ in await store.inbox_after(0)] == [1]

    def alarm(is_open: bool) -> dict[str, Any]:
        return {
            "source": "plc", "type": "FIRE_RISK", "subject": "machine:7",
            "state": "ACTIVE_UNACK", "level": "CRITICAL", "highest_level": "CRITICAL",
            "first_seen": 0.0, "last_seen": 0.0, "open": is_open, "plan_pending": False,
            "data": b"",
        }  # fmt: skip

    def insert(*rows: dict[str, Any]) -> None:
        db.run(lambda conn: [conn.execute(alarms.insert().values(**row)) for row in rows])

    # Closed alarms of one key: as many as there were...
    insert(alarm(False), alarm(False), alarm(True))
    # ... but only one open alarm per key, whatever the code above it does.
    with pytest.raises(sa.exc.IntegrityError):
        insert(alarm(True))
    assert db.sql("SELECT count(*) FROM alarms") == [(3,)]


async def test_version_7_gives_the_journal_and_the_outbox_an_instance(db: Database) -> None:
    # What factory_mas with six migrations left, with a journal row and an outbox row.
    def version_6(conn: sa.Connection) -> None:
        for number, migrate in enumerate(MIGRATIONS[:6], start=1):
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=0))
        conn.execute(inbox.insert().values(topic="t", source="s", received_at=0, data=b"old"))
        row = {"topic": "alerts/pm_agent", "created_at": 0.0, "payload": b"queued"}
        conn.execute(mqtt_outbox.insert().values(**row))

    db.run(version_6)
    async with db.store() as store:
        assert store.version == len(MIGRATIONS)
        # Rows from before belong to the single process (instance ""): still its own.
        assert await store.inbox_after(0) == [(1, "t", b"old")]
        assert await store.read(mqtt._outbox_size) == 1
    async with Store(db.url, "ingest-1") as other:
        assert await other.inbox_after(0) == []
        assert await other.inbox_size() == 0
        assert await other.inbox_prune(10) == 0
        seq = await other.inbox_append("t", "mqtt", b"new")
    assert seq == 2
    assert db.sql("SELECT seq, instance FROM inbox ORDER BY seq") == [(1, ""), (2, "ingest-1")]
    assert db.sql("SELECT instance FROM mqtt_outbox") == [("",)]

    def indexes(conn: sa.Connection) -> None:
        inspector = sa.inspect(conn)
        for table in ("inbox", "mqtt_outbox"):
            name = f"{table}_instance_seq"
            (found,) = [i for i in inspector.get_indexes(table) if i["name"] == name]
            assert found["column_names"] == ["instance", "seq"]

    db.run(indexes)


async def test_version_8_links_each_text_to_its_alarms(db: Database) -> None:
    # Texts written before v8 keep counting for the cooldown: their alarm lists are linked.
    def version_7(conn: sa.Connection) -> None:
        for number, migrate in enumerate(MIGRATIONS[:7], start=1):
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=0))
        for alarm_ids in ("[3, 5]", "[]", "[5, 9]"):
            conn.execute(
                sms_outbox.insert().values(
                    alarm_ids=alarm_ids,
                    created_at=0.0,
                    body="b",
                    status="sent",
                    attempts=1,
                    next_attempt_at=0.0,
                )
            )

    db.run(version_7)
    async with db.store() as store:
        assert store.version == len(MIGRATIONS)
    links = db.sql("SELECT outbox_id, alarm_id FROM sms_outbox_alarms ORDER BY 1, 2")
    assert links == [(1, 3), (1, 5), (3, 5), (3, 9)]


async def test_version_10_keeps_one_stored_prediction_per_journaled_record(
    db: Database,
) -> None:
    row = {"agent_id": "pm_agent", "machine_id": 1, "record_ts": 0.0, "level": "NORMAL"}

    def version_9(conn: sa.Connection) -> None:
        for number, migrate in enumerate(MIGRATIONS[:9], start=1):
            migrate(conn)
            conn.execute(schema_version.insert().values(version=number, applied_at=0))
        old = sa.table("predictions", *(sa.column(k) for k in [*row, "data"]))
        conn.execute(old.insert(), [{**row, "data": b"old"}, {**row, "data": b"old"}])

    db.run(version_9)
    async with db.store() as store:
        assert store.version == len(MIGRATIONS)
    # Rows from before have no journal position: both are kept.
    assert db.sql("SELECT data, journal_seq FROM predictions ORDER BY seq") == [
        (b"old", None),
        (b"old", None),
    ]
    keyed = {**row, "data": b"new", "journal_seq": 7, "journal_index": 3}
    db.run(lambda conn: conn.execute(predictions.insert().values(**keyed)))
    db.run(lambda conn: conn.execute(predictions.insert().values(**{**keyed, "agent_id": "x"})))
    with pytest.raises(sa.exc.IntegrityError):
        db.run(lambda conn: conn.execute(predictions.insert().values(**keyed)))
    assert db.sql("SELECT count(*) FROM predictions") == [(4,)]


# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgres://u:p@db.example:5432/f", "postgresql+psycopg://u:p@db.example:5432/f"),
        ("postgresql://u:p@db.example/f?sslmode=require", "postgresql+psycopg://u:p@db.example/f?sslmode=require"),
        ("postgresql+psycopg://u@h/f", "postgresql+psycopg://u@h/f"),
        ("sqlite:////var/lib/factory/factory.db", "sqlite:////var/lib/factory/factory.db"),
    ],
)  # fmt: skip
def test_database_urls_get_the_psycopg_driver(given: str, used: str) -> None:
    assert database_url(given) == used
    assert Store(given).url == used


def test_safe_url_hides_the_password() -> None:
    store = Store("postgres://factory:s3cret-pw@db.example:5432/factory")
    assert store.safe_url == "postgresql+psycopg://factory:***@db.example:5432/factory"
    for garbled in ("postgres://factory:s3cret-pw@db.example:notaport/x", "factory:s3cret@db"):
        assert "s3cret" not in Store(garbled).safe_url


@pytest.mark.integration
async def test_postgres_url_as_heroku_gives_it(postgres_url: str) -> None:
    heroku = "postgres://" + postgres_url.partition("://")[2]
    async with Store(heroku) as store:
        await store.save_checkpoint("pm_agent", b"x")
        assert await store.ping() is True
        assert store.url.startswith("postgresql+psycopg://")


@pytest.mark.integration
async def test_unreachable_postgres_fails_clearly_without_the_password() -> None:
    port = free_port()  # nobody listens on it
    with pytest.raises(StoreError) as info:
        async with Store(f"postgres://factory:s3cret-pw@127.0.0.1:{port}/factory"):
            pass
    message = str(info.value)
    assert "s3cret" not in message
    assert f"127.0.0.1:{port}" in message and "***" in message


async def test_a_url_that_does_not_parse_fails_clearly_without_the_password() -> None:
    with pytest.raises(StoreError, match="expected postgresql://") as info:
        async with Store("postgres://factory:s3cret-pw@db.example:notaport/factory"):
            pass
    assert "s3cret" not in str(info.value)
