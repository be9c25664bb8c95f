"""Persistence behind one small interface: SQLite in WAL mode by default.

SQLAlchemy Core keeps the SQL portable, and a PostgreSQL URL (DATABASE_URL) backs the same
interface where instances share state. All database work runs on one dedicated thread:
SQLite has a single writer anyway, and the event loop and the inference pool never wait on
disk.

Schema changes are numbered migrations applied in order at start-up; the applied version is
kept in `schema_version`, so an old database is brought forward and a newer one is refused.
They run in one transaction under a lock, so processes starting together migrate once.
The Table objects below are the current shape; a migration that creates a table which
later changes must then spell out the old shape itself.

The inbox is the ingest journal: telemetry accepted over HTTP (or MQTT) is written here
before it is acknowledged, and agents record in their checkpoints how far they have
scored it. After a crash each agent scores what its last checkpoint had not covered, so
nothing acknowledged is lost; rows every agent has covered are pruned.

Instances sharing a database (`serve --role ingest`, several at once) each keep their own
journal and MQTT outbox: rows carry the `instance` they belong to (`Store.instance`), and
an instance reads, counts and prunes only its own. Otherwise one instance's agents would
score another's records, and one's bridge would send (and delete) another's messages.
The single-process and control roles use "", which is what rows from before had.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .errors import StoreError
from .times import iso

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

metadata = sa.MetaData()


def _id() -> sa.types.TypeEngine[int]:
    """Row ids: BIGSERIAL on PostgreSQL, INTEGER on SQLite.

    The journal and the history take thousands of rows a second, and a 32-bit sequence
    would run out within weeks. SQLite's INTEGER is 64-bit already, and must stay spelled
    INTEGER to be the rowid that AUTOINCREMENT needs."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(length: int) -> sa.types.TypeEngine[str]:
    """VARCHAR(length) on SQLite, unbounded TEXT on PostgreSQL.

    SQLite never enforced these lengths and the code relies on that: PostgreSQL would turn
    one over-long MQTT topic or alarm list into a failed transaction, losing the batch it
    was in. The length stays as a statement of what is expected."""
    return sa.String(length).with_variant(sa.Text(), "postgresql")


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("name", _text(200), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _instance() -> sa.Column[str]:
    """v7: which instance a journal or outbox row belongs to (Store.instance).

    A server default only: rows written before v7, and inserts that do not name it, are
    "", the single-process instance's."""
    return sa.Column("instance", _text(200), nullable=False, server_default="")


def _inbox_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("topic", _text(500), nullable=False),
        sa.Column("source", _text(200), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    ]


inbox = sa.Table(
    "inbox",
    metadata,
    *_inbox_columns(),
    _instance(),
    # Without AUTOINCREMENT SQLite reuses the numbers of deleted rows, and an agent whose
    # cursor is past a reused number would skip new records after a restart.
    sqlite_autoincrement=True,
)
inbox_by_instance = sa.Index("inbox_instance_seq", inbox.c.instance, inbox.c.seq)


# -- v3: the orchestrator's durable state -----------------------------------------------
# Times are Unix seconds (floats): sortable, portable between SQLite and PostgreSQL.
# Whole messages are kept as JSON next to the columns that queries filter on.

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("source", _text(200), nullable=False),
    sa.Column("type", _text(200), nullable=False),
    # "machine:12", "camera:cam-1" or "": the third part of the alarm key, never NULL so
    # the unique index below also holds for alarms about neither.
    sa.Column("subject", _text(300), nullable=False),
    sa.Column("machine_id", sa.Integer),
    sa.Column("state", _text(20), nullable=False),
    sa.Column("level", _text(20), nullable=False),
    sa.Column("highest_level", _text(20), nullable=False),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    # True until the alarm is cleared and acknowledged: at most one open alarm per key.
    sa.Column("open", sa.Boolean, nullable=False),
    # A plan is owed for this alarm (set with the alarm change, reset with the decision),
    # so a crash between the two is made good at the next start.
    sa.Column("plan_pending", sa.Boolean, nullable=False, default=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index(
    "alarms_open_key",
    alarms.c.source,
    alarms.c.type,
    alarms.c.subject,
    unique=True,
    sqlite_where=alarms.c.open,
    postgresql_where=alarms.c.open,
)
sa.Index("alarms_last_seen", alarms.c.last_seen)

alarm_events = sa.Table(
    "alarm_events",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("alarm_id", _id(), sa.ForeignKey("alarms.id"), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", _text(40), nullable=False),
    sa.Column("by", _text(200), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("seq", _id(), primary_key=True),
    sa.Column("id", _text(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("seq", _id(), primary_key=True),
    sa.Column("id", _text(64), nullable=False, unique=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("machine_id", sa.Integer),
    sa.Column("level", _text(20), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

sms_outbox = sa.Table(
    "sms_outbox",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("decision_id", _text(64)),  # NULL for a digest
    sa.Column("alarm_ids", _text(2000), nullable=False),  # JSON list
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # queued -> sent | held (rate limit) -> digested | cooldown | not_configured | failed
    sa.Column("status", _text(20), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, index=True),
    sa.Column("provider_id", _text(100)),
    sa.Column("error", sa.Text),
    sa.Column("digest_id", _id()),
    sqlite_autoincrement=True,
)


def _predictions_table(meta: sa.MetaData, *more: sa.Column[Any]) -> sa.Table:
    table = sa.Table(
        "predictions",
        meta,
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("agent_id", _text(100), nullable=False),
        sa.Column("machine_id", sa.Integer),
        sa.Column("camera_id", _text(200)),
        sa.Column("record_ts", sa.Float, nullable=False),
        sa.Column("level", _text(20), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        *more,
        sqlite_autoincrement=True,
    )
    sa.Index("predictions_agent_machine", table.c.agent_id, table.c.machine_id, table.c.seq)
    sa.Index("predictions_agent_seq", table.c.agent_id, table.c.seq)
    return table


predictions = _predictions_table(
    metadata,
    # v10: the journal row, and the position in it, of the record a prediction scored
    # (NULL for records that were not journaled). A record rescored after a crash is
    # then written once: the unique index below turns the second insert into nothing.
    sa.Column("journal_seq", _id()),
    sa.Column("journal_index", sa.Integer),
)
predictions_by_record = sa.Index(
    "predictions_record",
    predictions.c.agent_id,
    predictions.c.journal_seq,
    predictions.c.journal_index,
    unique=True,
)


# -- v4: messages for the MQTT broker that must not be lost, and audited setting changes --


def _mqtt_outbox_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("topic", _text(500), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    ]


mqtt_outbox = sa.Table(
    "mqtt_outbox",
    metadata,
    *_mqtt_outbox_columns(),
    _instance(),
    sqlite_autoincrement=True,
)
mqtt_outbox_by_instance = sa.Index(
    "mqtt_outbox_instance_seq", mqtt_outbox.c.instance, mqtt_outbox.c.seq
)

config_changes = sa.Table(
    "config_changes",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("target", _text(100), nullable=False),  # an agent id
    sa.Column("origin", _text(200), nullable=False),  # mqtt, http, scada:modbus, ...
    sa.Column("by", _text(200), nullable=False),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # the request and the result, JSON
    sqlite_autoincrement=True,
)


# -- v5: shift summaries --------------------------------------------------------------

shift_summaries = sa.Table(
    "shift_summaries",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("shift_start", sa.Float, nullable=False),
    sa.Column("shift_end", sa.Float, nullable=False),
    # An on-demand summary of a shift in progress is kept too, but only one final one.
    sa.Column("partial", sa.Boolean, nullable=False),
    sa.Column("generated_at", sa.Float, nullable=False),
    sa.Column("generator", _text(200), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index(
    "shift_summaries_final",
    shift_summaries.c.shift_start,
    unique=True,
    sqlite_where=~shift_summaries.c.partial,
    postgresql_where=~shift_summaries.c.partial,
)


# -- v6: API keys ------------------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("name", _text(200), nullable=False),
    sa.Column("role", _text(20), nullable=False),
    # SHA-256 of the key: keys are long random tokens, so a plain hash is enough, and the
    # key itself is never stored. `prefix` (the first characters) identifies it in lists.
    sa.Column("key_hash", _text(64), nullable=False, unique=True),
    sa.Column("prefix", _text(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", _text(200), nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
    sqlite_autoincrement=True,
)


# -- v8: which alarms each text is about ------------------------------------------------

# One row per (text, alarm): the SMS cooldown asks "was every alarm of this decision texted
# lately?", which the JSON list in sms_outbox.alarm_ids can only answer by reading every
# recent text; in an alarm flood that grew with each decision (10 ms each after 400).
sms_outbox_alarms = sa.Table(
    "sms_outbox_alarms",
    metadata,
    sa.Column("outbox_id", _id(), nullable=False),
    sa.Column("alarm_id", _id(), nullable=False),
    sa.Index("sms_outbox_alarms_alarm", "alarm_id", "outbox_id"),
)


def _v1(conn: Connection) -> None:
    schema_version.create(conn)
    checkpoints.create(conn)


def _v2(conn: Connection) -> None:
    # The journal as v2 made it; v7 adds `instance`.
    sa.Table("inbox", sa.MetaData(), *_inbox_columns(), sqlite_autoincrement=True).create(conn)


def _v3(conn: Connection) -> None:
    for table in (alarms, alarm_events, alerts, decisions, sms_outbox):
        table.create(conn)
    # The history as v3 made it; v10 adds the journal position.
    _predictions_table(sa.MetaData()).create(conn)


def _v4(conn: Connection) -> None:
    # The outbox as v4 made it; v7 adds `instance`.
    outbox = sa.Table(
        "mqtt_outbox", sa.MetaData(), *_mqtt_outbox_columns(), sqlite_autoincrement=True
    )
    outbox.create(conn)
    config_changes.create(conn)


def _v5(conn: Connection) -> None:
    shift_summaries.create(conn)


def _v6(conn: Connection) -> None:
    api_keys.create(conn)


def _v7(conn: Connection) -> None:
    # Per-instance journal and outbox, for instances sharing a database. Both backends
    # add a NOT NULL column with a constant default in place: existing rows become "".
    for table in (inbox, mqtt_outbox):
        column = sa.schema.CreateColumn(table.c.instance).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column}"))
    inbox_by_instance.create(conn)
    mqtt_outbox_by_instance.create(conn)


def _v8(conn: Connection) -> None:
    sms_outbox_alarms.create(conn)
    rows = conn.execute(sa.select(sms_outbox.c.id, sms_outbox.c.alarm_ids)).all()
    links = [
        {"outbox_id": row.id, "alarm_id": int(alarm_id)}
        for row in rows
        for alarm_id in set(json.loads(row.alarm_ids))
    ]
    if links:
        conn.execute(sms_outbox_alarms.insert(), links)


alarm_events_by_time = sa.Index("alarm_events_at", alarm_events.c.at, alarm_events.c.kind)


def _v9(conn: Connection) -> None:
    # The alarm KPIs and the flood window read the audit trail by time.
    alarm_events_by_time.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    # Rows from before stay NULL, which the unique index never compares (NULLs are
    # distinct on both backends): old history is kept as it is.
    for column in (predictions.c.journal_seq, predictions.c.journal_index):
        spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE predictions ADD COLUMN {spec}"))
    predictions_by_record.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10
]  # fmt: skip


# Statements on the hot paths are built once: building one per call (`.values(...)`,
# `.where(...)`) and deriving its cache key costs more than executing it (measured: an
# inbox append takes 380 us built per call, 150 us prebuilt).
_INBOX_INSERT = inbox.insert()
_CHECKPOINT_UPDATE = checkpoints.update().where(checkpoints.c.name == sa.bindparam("b_name"))
_CHECKPOINT_INSERT = checkpoints.insert()
_pg_checkpoint = postgresql.insert(checkpoints)
_CHECKPOINT_UPSERT_PG = _pg_checkpoint.on_conflict_do_update(
    index_elements=[checkpoints.c.name],
    set_={"data": _pg_checkpoint.excluded.data, "updated_at": _pg_checkpoint.excluded.updated_at},
)


def put_checkpoint(conn: Connection, name: str, data: bytes) -> None:
    """Save a checkpoint inside the caller's transaction (an upsert)."""
    now = time.time()
    if conn.dialect.name == "postgresql":
        # Instances sharing the database could both miss the update below and collide on
        # the insert; ON CONFLICT settles it in one statement.
        conn.execute(_CHECKPOINT_UPSERT_PG, {"name": name, "data": data, "updated_at": now})
        return
    # SQLite: the update takes the database's one write lock, so nobody can insert the
    # row between the two statements.
    updated = conn.execute(
        _CHECKPOINT_UPDATE, {"b_name": name, "data": data, "updated_at": now}
    ).rowcount
    if not updated:
        conn.execute(_CHECKPOINT_INSERT, {"name": name, "data": data, "updated_at": now})


def audit_change(
    conn: Connection, *, at: float, target: str, origin: str, by: str, accepted: bool, data: bytes
) -> None:
    """One row of the audit trail of changes: settings from any protocol, SCADA writes,
    API keys. Every writer of the trail goes through here."""
    conn.execute(
        config_changes.insert().values(
            at=at,
            target=_storable(target)[:100],
            origin=_storable(origin)[:200],
            by=_storable(by)[:200],
            accepted=accepted,
            data=data,
        )
    )


def _storable(text: str) -> str:
    # PostgreSQL refuses NUL in text, SQLite keeps it: a "by" sent over MQTT as "a\u0000b"
    # must not fail the audit row on one backend only.
    return text.replace("\x00", "")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


POSTGRES_DRIVER = "postgresql+psycopg"


def database_url(url: str) -> str:
    """The SQLAlchemy URL of a configured database URL.

    postgres:// (Heroku, Railway) and postgresql:// get the psycopg 3 driver, which
    SQLAlchemy would otherwise not pick (it defaults to psycopg2); anything else is kept.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgres", "postgresql"):
        return f"{POSTGRES_DRIVER}://{rest}"
    return url


# Keys of the advisory locks (see serialize): constants no other application on the
# database is likely to use ("factorym" and "factoryk" in ASCII).
MIGRATION_LOCK_KEY = 0x666163746F72796D
FIRST_KEY_LOCK_KEY = 0x666163746F72796B
# Short enough that a wrong host fails the start, long enough for a managed database
# waking up.
PG_CONNECT_TIMEOUT_S = 10


def _create_engine(url: sa.URL) -> Engine:
    if url.get_backend_name() == "postgresql":
        return sa.create_engine(
            url,
            # Only the store's one thread uses this engine, one connection at a time; the
            # overflow is there so that a nested use costs a connection, not a 30 s wait.
            pool_size=1,
            max_overflow=2,
            # Managed databases and their proxies close idle connections, and a restarted
            # server closes them all: a stale one is replaced instead of failing a call.
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": PG_CONNECT_TIMEOUT_S,
                "application_name": "factory_mas",
            },
        )
    engine = sa.create_engine(url)
    if url.get_backend_name() == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def serialize(conn: Connection, key: int) -> None:
    """Make this transaction wait for any other process's transaction that serializes on
    `key`: for check-then-write steps that instances starting at once must not both take
    (migrations, the first admin key). Call it first thing in the transaction."""
    if conn.dialect.name == "postgresql":
        # Released with the transaction, even if the process dies in it.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    elif conn.dialect.name == "sqlite":
        # Python's sqlite3 has not begun the transaction yet (it does so lazily, and not at
        # all for CREATE TABLE): take the write lock now, before anything is read.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class _Worker:
    """The store's one thread: database calls run one at a time, in order, except that an
    urgent call goes before the queued ones.

    The ingest journal is urgent: a producer waits on it before its telemetry counts as
    accepted, while history, checkpoints and the alarm log can wait a few milliseconds.
    It cannot starve them: Intake journals under one lock, so at most one urgent call is
    ever queued.
    """

    _STOP = 2

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.PriorityQueue[tuple[int, int, Any, tuple[Any, ...], Any]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...], urgent: bool) -> Future[T]:
        if self._closed:
            raise RuntimeError(f"{self._name}: cannot run calls after shutdown")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        future: Future[T] = Future()
        self._queue.put((0 if urgent else 1, next(self._order), fn, args, future))
        return future

    def _loop(self) -> None:
        while True:
            priority, _, fn, args, future = self._queue.get()
            if priority == self._STOP:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put((self._STOP, next(self._order), None, (), None))
            self._thread.join()
            self._thread = None


class Store:
    """Open with `async with Store(url) as store:`; every method is a coroutine."""

    def __init__(self, url: str, instance: str = "") -> None:
        self.url = database_url(url)
        # Whose journal and outbox rows this store reads and writes (see the module doc).
        self.instance = instance
        self._engine: Engine | None = None
        self._worker = _Worker("store")
        self.version = 0
        # Since when writes have failed for want of the database (disk full, locked, gone)
        # and why; None once one succeeds again. Reads and pings can go on working
        # meanwhile, so /health asks this too, not only ping().
        self.writes_failing_since: float | None = None
        self.write_failure = ""

    @classmethod
    def in_data_dir(cls, data_dir: Path, instance: str = "") -> Store:
        return cls(sqlite_url(data_dir / "factory.db"), instance)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The configured database: `[data] database_url` (env DATABASE_URL) when set,
        else factory.db in the data folder.

        An ingest instance keeps its journal and outbox under its instance id; the other
        roles run one per database and keep "", so data from before v7 stays theirs."""
        instance = settings.instance_id if settings.instance.role == "ingest" else ""
        if settings.data.database_url:
            return cls(settings.data.database_url, instance)
        return cls.in_data_dir(settings.data_dir, instance)

    async def __aenter__(self) -> Store:
        try:
            await self._run(self._open)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._engine is not None:
            await self._run(self._engine.dispose)
            self._engine = None
        self._worker.shutdown()

    async def _run(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        try:
            return await asyncio.wrap_future(self._worker.submit(fn, args, urgent))
        except SQLAlchemyError as exc:
            raise StoreError(f"database {self.safe_url}: {exc.__class__.__name__}: {exc}") from exc

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs and /status."""
        try:
            return sa.make_url(self.url).render_as_string(hide_password=True)
        except (sa.exc.ArgumentError, ValueError):
            # Never echo a URL that does not parse: where its password is is unknown.
            scheme, sep, _ = self.url.partition("://")
            return f"{scheme}://(a URL that does not parse)" if sep else "(not a URL)"

    def _open(self) -> None:
        try:
            url = sa.make_url(self.url)
        except (sa.exc.ArgumentError, ValueError):
            raise StoreError(
                f"database URL {self.safe_url}: expected postgresql://user:password@host:port"
                "/database or sqlite:///path/to/file.db"
            ) from None
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            try:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the data folder for {url.database}: {exc}"
                ) from exc
        try:
            self._engine = _create_engine(url)
        except ImportError as exc:
            raise StoreError(
                f"database {self.safe_url}: its driver is not installed ({exc}); for "
                "PostgreSQL: pip install 'psycopg[binary]'"
            ) from exc
        self._migrate()

    def _migrate(self) -> None:
        assert self._engine is not None
        with self._engine.begin() as conn:
            serialize(conn, MIGRATION_LOCK_KEY)
            have = 0
            if sa.inspect(conn).has_table("schema_version"):
                have = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            if have > len(MIGRATIONS):
                raise StoreError(
                    f"database {self.safe_url} has schema version {have}, newer than this "
                    f"factory_mas knows ({len(MIGRATIONS)}); upgrade factory_mas"
                )
            for number, migrate in enumerate(MIGRATIONS[have:], start=have + 1):
                migrate(conn)
                conn.execute(schema_version.insert().values(version=number, applied_at=time.time()))
                log.info("store: applied schema migration %d", number)
            self.version = len(MIGRATIONS)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise StoreError("the store is not open")
        return self._engine

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` in one transaction on the store's thread.

        Components keep their own queries beside their logic and use this to run them:
        either everything `fn` wrote is committed when this returns, or nothing is.
        """
        return await self._write(self._in_transaction, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        """`_run` for a call that writes: its outcome is what /health reports."""
        try:
            result = await self._run(fn, *args, urgent=urgent)
        except StoreError as exc:
            # A constraint or a value the database refuses says nothing about the store.
            if not isinstance(exc.__cause__, sa.exc.IntegrityError | sa.exc.DataError):
                if self.writes_failing_since is None:
                    self.writes_failing_since = time.time()
                    log.error("store: writes failing: %s", exc)
                self.write_failure = exc.public
            raise
        if self.writes_failing_since is not None:
            self.writes_failing_since = None
            log.info("store: writes succeed again")
        return result

    @property
    def write_problem(self) -> str | None:
        """Since when and why writes fail, in words fit for /health; None while they
        succeed."""
        if self.writes_failing_since is None:
            return None
        return f"writes failing since {iso(self.writes_failing_since)}: {self.write_failure}"

    def _in_transaction(self, fn: Callable[..., T], *args: Any) -> T:
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(conn, *args)` for reading on the store's thread."""
        return await self._run(self._reading, fn, *args)

    def _reading(self, fn: Callable[..., T], *args: Any) -> T:
        with self.engine.connect() as conn:
            return fn(conn, *args)

    async def save_checkpoint(self, name: str, data: bytes) -> None:
        await self._write(self._save_checkpoint, name, data)

    def _save_checkpoint(self, name: str, data: bytes) -> None:
        with self.engine.begin() as conn:
            put_checkpoint(conn, name, data)

    async def load_checkpoint(self, name: str) -> bytes | None:
        return await self._run(self._load_checkpoint, name)

    def _load_checkpoint(self, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(checkpoints.c.data).where(checkpoints.c.name == name)
            ).scalar()

    async def inbox_append(self, topic: str, source: str, data: bytes) -> int:
        """Journal one accepted message durably; returns its sequence number."""
        (seq,) = await self.inbox_append_many(topic, source, [data])
        return seq

    async def inbox_append_many(self, topic: str, source: str, messages: list[bytes]) -> list[int]:
        """Journal messages durably in one transaction, all or none; returns their
        sequence numbers, in order."""
        return await self._write(self._inbox_append, topic, source, messages, urgent=True)

    def _inbox_append(self, topic: str, source: str, messages: list[bytes]) -> list[int]:
        now = time.time()
        with self.engine.begin() as conn:
            return [
                int(
                    conn.execute(
                        _INBOX_INSERT,
                        {
                            "topic": topic,
                            "source": source,
                            "instance": self.instance,
                            "received_at": now,
                            "data": data,
                        },
                    ).inserted_primary_key[0]
                )
                for data in messages
            ]

    async def inbox_after(self, seq: int, limit: int = 500) -> list[tuple[int, str, bytes]]:
        """This instance's journal rows after `seq`, oldest first: (seq, topic, data)."""
        return await self._run(self._inbox_after, seq, limit)

    def _inbox_after(self, seq: int, limit: int) -> list[tuple[int, str, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(inbox.c.seq, inbox.c.topic, inbox.c.data)
                .where(inbox.c.instance == self.instance, inbox.c.seq > seq)
                .order_by(inbox.c.seq)
                .limit(limit)
            )
            return [(r.seq, r.topic, r.data) for r in rows]

    async def inbox_prune(self, upto: int) -> int:
        """Forget this instance's journal rows up to and including `upto`; returns how
        many."""
        return await self._write(self._inbox_prune, upto)

    def _inbox_prune(self, upto: int) -> int:
        with self.engine.begin() as conn:
            mine = inbox.c.instance == self.instance
            return conn.execute(inbox.delete().where(mine, inbox.c.seq <= upto)).rowcount

    async def inbox_size(self) -> int:
        return await self._run(self._inbox_size)

    def _inbox_size(self) -> int:
        with self.engine.connect() as conn:
            count = sa.select(sa.func.count()).where(inbox.c.instance == self.instance)
            return int(conn.execute(count).scalar() or 0)

    async def ping(self) -> bool:
        try:
            await self._run(self._ping)
        except (StoreError, RuntimeError):  # RuntimeError: the store's thread has shut down
            return False
        return True

    def _ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the writer; synchronous=NORMAL is durable across a
    # process crash (kill -9) in WAL mode and only risks the last commits on power loss.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()
