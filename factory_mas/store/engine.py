"""The Store: the engine for a database URL, opened, migrated and run on the store's thread.

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
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import StoreError
from ..times import iso
from .migrations import migrate
from .schema import checkpoints, inbox
from .transaction import inserted_id, put_checkpoint
from .worker import Worker

if TYPE_CHECKING:
    from ..settings import Settings

# Named after the package: log filters and collectors know it by that name.
log = logging.getLogger(__package__)
T = TypeVar("T")


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


# Statements on the hot paths are built once: building one per call (`.values(...)`,
# `.where(...)`) and deriving its cache key costs more than executing it (measured: an
# inbox append takes 380 us built per call, 150 us prebuilt).
_INBOX_INSERT = inbox.insert()


class Store:
    """Open with `async with Store(url) as store:`; every method is a coroutine."""

    def __init__(self, url: str, instance: str = "") -> None:
        self.url = database_url(url)
        # Whose journal and outbox rows this store reads and writes (see the module doc).
        self.instance = instance
        self._engine: Engine | None = None
        self._worker = Worker("store")
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
            self.version = migrate(conn, self.safe_url)

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
                inserted_id(
                    conn.execute(
                        _INBOX_INSERT,
                        {
                            "topic": topic,
                            "source": source,
                            "instance": self.instance,
                            "received_at": now,
                            "data": data,
                        },
                    )
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
