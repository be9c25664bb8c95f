"""The telemetry historian: every accepted raw record written to the store's `telemetry`
table, kept for a retention and within a row cap.

It must never slow ingest: its hub queue drops the oldest message when full instead of
making producers wait, and it writes in slices of a few thousand rows, one transaction
each, so the store's one thread (which journaling needs too) is never held long.

Journaled records (HTTP and MQTT ingest) are never lost, even to a kill -9: like the
agents, the historian keeps a cursor into this instance's journal (the highest seq whose
records are all stored), the journal pruner keeps every row past it, and on start, or
after its queue dropped messages, it reads what is past the cursor back from the journal.
The cursor is saved in the transaction that stores the rows, and that transaction leaves
out journal rows the saved cursor already covers: a slice is stored once even when its
commit was reported lost and it is written again. Records that were never journaled (the
built-in replay's) come from the hub alone; if dropped there, they are counted.

Retention goes by when a row arrived (`received_at`), not by the record's own time: a
replayed CSV from last year must not be deleted on arrival. The row cap deletes the
oldest rows (by seq, a range on the primary key) beyond `max_rows`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ..hub import Hub, Message, Overflow, Subscription, SubscriptionClosed, matches
from ..messages import TelemetryRecord
from ..store import Store, checkpoints, put_checkpoint, serialize, telemetry
from ..store.transaction import TELEMETRY_PRUNE_LOCK_KEY
from ..tasks import cancel, retry_every
from ..times import epoch
from ..topics import TELEMETRY_FILTER

# Named after the package: log filters and collectors know it by that name.
log = logging.getLogger(__package__)

CURSOR_CHECKPOINT = "history:telemetry"
# Rows per transaction, for writing and for pruning: each holds the store's one thread.
WRITE_CHUNK_ROWS = 2_000
PRUNE_CHUNK_ROWS = 5_000
# Journal rows read back per store call; a row holds up to 500 records (Intake's chunk).
CATCH_UP_ROWS = 8

_encoder = msgspec.json.Encoder()
_journal_decoder = msgspec.msgpack.Decoder(list[TelemetryRecord])
_cursor_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(int))
_INSERT = telemetry.insert()


@dataclass(slots=True)
class _Batch:
    """Records of one hub message or journal row, waiting to be stored."""

    seq: int  # its journal row; 0 when it was not journaled
    received_at: float
    records: list[TelemetryRecord]


def _store(conn: Connection, checkpoint: str, batches: list[_Batch]) -> tuple[int, int, int]:
    """Insert the batches and move the journal cursor, in one transaction; returns (rows
    inserted, records left out because the saved cursor covers them, the cursor now)."""
    raw = conn.execute(
        sa.select(checkpoints.c.data).where(checkpoints.c.name == checkpoint)
    ).scalar()
    saved = _cursor_codec[1].decode(raw) if raw else 0
    rows = []
    covered = 0
    for b in batches:
        if b.seq and b.seq <= saved:
            covered += len(b.records)
            continue
        rows += [
            {
                "machine_id": r.machine_id,
                "ts": epoch(r.timestamp) if r.timestamp is not None else b.received_at,
                "received_at": b.received_at,
                "data": _encoder.encode(r),
            }
            for r in b.records
        ]
    if rows:
        conn.execute(_INSERT, rows)
    top = max(b.seq for b in batches)
    if top > saved:
        put_checkpoint(conn, checkpoint, _cursor_codec[0].encode(top))
    return len(rows), covered, max(top, saved)


def _prune_chunk(conn: Connection, cutoff: float, max_rows: int, chunk: int) -> tuple[int, int]:
    """Delete up to a chunk of rows that arrived before `cutoff`, and up to a chunk of the
    oldest beyond `max_rows`; returns how many of each."""
    # Instances sharing a database each run a historian: one prunes at a time, rather
    # than all deleting the same rows and deadlocking.
    serialize(conn, TELEMETRY_PRUNE_LOCK_KEY)
    seq = telemetry.c.seq
    old = sa.select(seq).where(telemetry.c.received_at < cutoff)
    old = old.order_by(telemetry.c.received_at).limit(chunk)
    expired = conn.execute(telemetry.delete().where(seq.in_(old.scalar_subquery()))).rowcount
    over = 0
    # Two queries: SQLite answers a lone min() or max() from the index end, not both.
    lo = conn.execute(sa.select(sa.func.min(seq))).scalar()
    hi = conn.execute(sa.select(sa.func.max(seq))).scalar()
    # seq grows by one a row, so the newest max_rows rows are those above hi - max_rows.
    if lo is not None and hi is not None and lo <= hi - max_rows:
        upto = min(hi - max_rows, lo + chunk - 1)
        over = conn.execute(telemetry.delete().where(seq <= upto)).rowcount
    return expired, over


class TelemetryHistorian:
    """Writes the telemetry on the hub, and what this instance's journal holds past its
    cursor, to the store; `async with` runs it. On exit it stores what is queued (one
    attempt): what it could not store of the journal is read back at the next start."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        retention_days: float,
        max_rows: int,
        *,
        enabled: bool = True,
        flush_interval_s: float = 1.0,
        prune_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retention_days > 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.hub, self.store = hub, store
        self.enabled = enabled
        self.retention_s = retention_days * 86_400
        self.max_rows = max_rows
        self.flush_interval_s = flush_interval_s
        self.prune_interval_s = prune_interval_s
        self._clock = clock
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []
        self._pending: deque[_Batch] = deque()
        self._behind = False  # the journal may hold records the hub queue dropped
        self._dropped_seen = 0
        self.cursor = 0  # journal rows taken (pending or stored), in memory
        self.durable_cursor = 0  # ... and stored, as the saved cursor says
        self.written = 0
        self.covered = 0  # records of a slice written again that were stored already
        self.from_journal = 0  # records read back from the journal
        self.skipped = 0  # items on the telemetry topic that are no validated record
        self.flush_failures = 0
        self.pruned_expired = 0
        self.pruned_over_max = 0
        self.last_flush_at: float | None = None
        self.last_prune_at: float | None = None
        self.last_error: str | None = None
        self._failing = False

    @property
    def checkpoint_name(self) -> str:
        # Its cursor points into this instance's journal only (see Store.instance).
        instance = self.store.instance
        return f"{CURSOR_CHECKPOINT}@{instance}" if instance else CURSOR_CHECKPOINT

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not self._tasks[0].done()

    async def __aenter__(self) -> TelemetryHistorian:
        if not self.enabled:
            return self
        try:
            raw = await self.store.load_checkpoint(self.checkpoint_name)
            self.cursor = self.durable_cursor = _cursor_codec[1].decode(raw) if raw else 0
        except (StoreError, msgspec.DecodeError) as exc:
            # Harmless: the journal is read from its start, and what the saved cursor
            # covers is left out when written.
            log.error("telemetry history: journal cursor not read, reading it all: %s", exc)
        # Subscribe before reading the journal, so nothing falls between the two; what
        # arrives twice is skipped by its seq.
        self._sub = self.hub.subscribe(
            TELEMETRY_FILTER, name="telemetry-history", overflow=Overflow.DROP_OLDEST
        )
        self._behind = True
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="telemetry-history:write"),
            asyncio.create_task(
                retry_every(
                    self.prune_interval_s, self.prune, log, "telemetry history: old rows not pruned"
                ),
                name="telemetry-history:prune",
            ),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._tasks:
            return
        writer, pruner = self._tasks
        await cancel(pruner)
        assert self._sub is not None
        self._sub.close()  # the write loop takes what is queued, stores it, and ends
        await writer
        if self._pending:
            log.error(
                "telemetry history: %d records not stored at exit",
                sum(len(b.records) for b in self._pending),
            )

    def stats(self) -> dict[str, Any]:
        if not self.enabled:
            return {"enabled": False, "running": False}
        queue = self._sub.stats() if self._sub is not None else None
        return {
            "enabled": True,
            "running": self.running,
            "written": self.written,
            "pending": sum(len(b.records) for b in self._pending),
            # Journaled ones are read back from the journal (from_journal); others are lost.
            "dropped_messages": queue["dropped"] if queue else 0,
            "from_journal": self.from_journal,
            "covered": self.covered,
            "skipped": self.skipped,
            "journal": {"taken_up_to": self.cursor, "stored_up_to": self.durable_cursor},
            "catching_up": self._behind,
            "last_flush_at": self.last_flush_at,
            "failing": self._failing,
            "flush_failures": self.flush_failures,
            "last_error": self.last_error,
            "retention_days": self.retention_s / 86_400,
            "max_rows": self.max_rows,
            "pruned_expired": self.pruned_expired,
            "pruned_over_max": self.pruned_over_max,
            "last_prune_at": self.last_prune_at,
            "queue": queue,
        }

    # -- writing ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._sub is not None
        sub = self._sub
        while True:
            if self._pending and not await self.flush():
                if sub.closed:
                    return
                # While the store fails only the interval retries. Nothing more is taken
                # meanwhile: the hub queue holds (and drops) it, and the journal keeps it.
                await asyncio.sleep(self.flush_interval_s)
                continue
            if self._behind and not sub.closed:
                await self._catch_up()
                continue
            try:
                messages = await sub.get_many(WRITE_CHUNK_ROWS, self.flush_interval_s)
            except SubscriptionClosed:
                return
            if sub.dropped > self._dropped_seen:
                # Journaled messages of this batch may lie past the dropped ones: all of
                # them are read back from the journal, in order, instead.
                self._dropped_seen = sub.dropped
                self._behind = True
                messages = [m for m in messages if not m.seq]
            for message in messages:
                self._take(message)

    def _take(self, message: Message) -> None:
        payload = message.payload
        items = payload if isinstance(payload, list) else [payload]
        records = [r for r in items if isinstance(r, TelemetryRecord)]
        self.skipped += len(items) - len(records)
        if message.seq:
            if message.seq <= self.cursor:
                return  # read from the journal already
            self.cursor = message.seq
        self._pending.append(_Batch(message.seq, self._clock(), records))

    async def _catch_up(self) -> None:
        """Take the journal rows past the cursor, a few at a time, storing as it goes."""
        assert self._sub is not None
        while not self._sub.closed:
            try:
                rows = await self.store.inbox_after(self.cursor, CATCH_UP_ROWS)
            except (StoreError, RuntimeError) as exc:
                self._note_failure(exc, "journal not read")
                await asyncio.sleep(self.flush_interval_s)
                return
            if not rows:
                self._behind = False
                return
            now = self._clock()
            for seq, topic, data in rows:
                records: list[TelemetryRecord] = []
                if matches(TELEMETRY_FILTER, topic):
                    try:
                        records = _journal_decoder.decode(data)
                    except msgspec.DecodeError as exc:
                        log.error("telemetry history: journal row %d unreadable: %s", seq, exc)
                # An empty batch still moves the cursor past its row when stored.
                self._pending.append(_Batch(seq, now, records))
                self.from_journal += len(records)
                self.cursor = seq
            if not await self.flush():
                return

    async def flush(self) -> bool:
        """Store what is pending, a transaction per slice; False if the store failed (the
        rows stay pending for the next attempt)."""
        while self._pending:
            batch: list[_Batch] = []
            rows = 0
            for b in self._pending:
                if batch and rows + len(b.records) > WRITE_CHUNK_ROWS:
                    break
                batch.append(b)
                rows += len(b.records)
            try:
                written, covered, cursor = await self.store.write(
                    _store, self.checkpoint_name, batch
                )
            except (StoreError, RuntimeError) as exc:  # RuntimeError: the store is closed
                self.flush_failures += 1
                self._note_failure(exc, "records not stored, retrying")
                return False
            for _ in batch:
                self._pending.popleft()
            self.written += written
            self.covered += covered
            self.durable_cursor = max(self.durable_cursor, cursor)
            self.last_flush_at = self._clock()
            if self._failing:
                self._failing = False
                log.info("telemetry history: store writable again")
        return True

    def _note_failure(self, exc: Exception, what: str) -> None:
        # /status is read by viewers: the SQL and its values go to the log only.
        self.last_error = exc.public if isinstance(exc, StoreError) else "store closed"
        if not self._failing:
            self._failing = True
            log.error("telemetry history: %s: %s", what, exc)

    # -- retention -------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete rows that arrived more than the retention ago and the oldest beyond
        max_rows, a chunk per transaction; returns how many."""
        cutoff = self._clock() - self.retention_s
        deleted = 0
        while True:
            expired, over = await self.store.write(
                _prune_chunk, cutoff, self.max_rows, PRUNE_CHUNK_ROWS
            )
            self.pruned_expired += expired
            self.pruned_over_max += over
            deleted += expired + over
            if expired < PRUNE_CHUNK_ROWS and over < PRUNE_CHUNK_ROWS:
                break
        self.last_prune_at = self._clock()
        return deleted
