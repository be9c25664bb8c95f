"""Prediction history written to the store.

`HistoryWriter` listens to predictions/# and inserts what it hears in batches, one
transaction per flush. It must never slow the agents down, so its hub queue drops the
oldest message when full (counted, shown on /status), and a failing store only makes it
hold rows (up to a cap, again dropping the oldest) and retry at the next interval.

Retention goes by when a row was written, not by its record_ts: record times come from the
devices, so a replayed CSV from last year or a gateway with a wrong clock would otherwise
be deleted the moment it arrives. The table has no insert-time column, but `seq` grows
with every insert, so "marks" (time, highest seq written by then) say which rows are old
enough; they are kept as a checkpoint row to survive restarts. Deleting `seq <= N` is a
range on the primary key: cheap, whatever the table size.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ..hub import Hub, Message, Overflow, Subscription, SubscriptionClosed
from ..messages import Prediction
from ..store import Store, predictions
from ..tasks import cancel, retry_every
from ..times import epoch
from ..topics import PREDICTIONS_TREE

# Named after the package: log filters and collectors know it by that name.
log = logging.getLogger(__package__)

MARKS_CHECKPOINT = "history:retention"
# Each store call holds the store's single thread, which ingest journaling also needs:
# big jobs (a backlog after an outage, a long prune) go in slices.
WRITE_CHUNK_ROWS = 10_000
PRUNE_CHUNK_ROWS = 20_000
# A retention mark at most every 1/100 of the retention: rows live at most 1 % longer
# than asked, and the marks checkpoint stays around a hundred pairs.
_MARKS_PER_RETENTION = 100

_encoder = msgspec.json.Encoder()
_marks_codec = (msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(list[tuple[float, int]]))


# A prediction of a journaled record that is stored already (its record was scored again
# after a crash) is left out by the unique index on (agent, journal seq, position). The
# rows inserted are counted by what RETURNING gives back: an insert of many rows on
# PostgreSQL reports no row count.
_INSERT_NEW = {
    "sqlite": sqlite.insert(predictions).on_conflict_do_nothing().returning(predictions.c.seq),
    "postgresql": postgresql.insert(predictions)
    .on_conflict_do_nothing()
    .returning(predictions.c.seq),
}


def _insert(conn: Connection, batch: list[Prediction]) -> tuple[int, int, int]:
    """Insert a batch; returns (highest seq now, predictions that could not be encoded,
    predictions stored already)."""
    rows = []
    for p in batch:
        try:
            data = _encoder.encode(p)
        except (TypeError, ValueError, OverflowError):  # a result holding a non-JSON value
            continue
        rows.append(
            {
                "agent_id": p.agent_id,
                "machine_id": p.machine_id,
                "camera_id": p.camera_id,
                "record_ts": epoch(p.record_ts),
                "level": p.level,
                "data": data,
                "journal_seq": p.journal_seq,
                "journal_index": p.journal_index,
            }
        )
    inserted = 0
    if rows:
        inserted = len(conn.execute(_INSERT_NEW[conn.dialect.name], rows).all())
    return _max_seq(conn), len(batch) - len(rows), len(rows) - inserted


def _max_seq(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.max(predictions.c.seq))).scalar() or 0)


def _delete_upto(conn: Connection, upto: int, chunk: int) -> tuple[int, bool]:
    """Delete the oldest rows up to `upto`, at most a chunk; returns (deleted, more left)."""
    lo = conn.execute(sa.select(sa.func.min(predictions.c.seq))).scalar()
    if lo is None or lo > upto:
        return 0, False
    hi = min(upto, lo + chunk - 1)
    deleted = conn.execute(predictions.delete().where(predictions.c.seq <= hi)).rowcount
    return deleted, hi < upto


class HistoryWriter:
    """Writes the predictions on the hub to the store (every level change, and one per
    machine and agent per `sample_s`); `async with` runs it.

    On exit it writes what is still queued or pending (one attempt).
    """

    def __init__(
        self,
        hub: Hub,
        store: Store,
        retention_days: float,
        flush_interval_s: float = 1.0,
        *,
        queue_size: int = 4096,
        flush_rows: int = 2000,
        max_pending_rows: int = 50_000,
        prune_interval_s: float = 60.0,
        sample_s: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not retention_days > 0:
            raise ValueError(f"retention_days must be > 0, got {retention_days}")
        self.hub, self.store = hub, store
        self.retention_s = retention_days * 86_400
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.flush_rows = flush_rows
        self.prune_interval_s = prune_interval_s
        self._clock = clock
        # 0 keeps every prediction; see _worth_keeping.
        self.sample_s = sample_s
        self._last_kept: dict[tuple[str, int | str | None], tuple[str, float]] = {}
        self.sampled_out = 0
        self._mark_every_s = max(prune_interval_s, self.retention_s / _MARKS_PER_RETENTION)
        self._pending: deque[Prediction] = deque(maxlen=max_pending_rows)
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []
        self._marks: list[tuple[float, int]] = []  # (written by then, highest seq)
        self._marks_dirty = False
        self._prune_lock = asyncio.Lock()
        self._last_seq = 0
        self.written = 0
        self.dropped_pending = 0  # held during a store outage beyond max_pending_rows
        self.skipped = 0  # not a Prediction, or not encodable as JSON
        self.duplicates = 0  # of a record rescored after a crash: stored already
        self.pruned = 0
        self.flush_failures = 0
        self.last_flush_at: float | None = None
        self.last_prune_at: float | None = None
        self.last_error: str | None = None
        self._failing = False

    async def __aenter__(self) -> HistoryWriter:
        await self._load_marks()
        self._sub = self.hub.subscribe(
            PREDICTIONS_TREE, name="history", maxsize=self.queue_size, overflow=Overflow.DROP_OLDEST
        )
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="history:write"),
            asyncio.create_task(
                retry_every(
                    self.prune_interval_s, self.prune, log, "history: old predictions not pruned"
                ),
                name="history:prune",
            ),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        writer, pruner = self._tasks
        await cancel(pruner)
        if self._sub is not None:
            self._sub.close()  # the write loop takes what is queued, flushes, and ends
        await writer
        if self._pending:
            log.error("history: %d predictions not written at exit", len(self._pending))

    def stats(self) -> dict[str, Any]:
        queue = self._sub.stats() if self._sub is not None else None
        dropped_queue = queue["dropped"] if queue else 0
        return {
            "running": bool(self._tasks) and not self._tasks[0].done(),
            "written": self.written,
            "dropped": dropped_queue + self.dropped_pending,
            "dropped_queue": dropped_queue,
            "dropped_pending": self.dropped_pending,
            "pending": len(self._pending),
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "sampled_out": self.sampled_out,
            "sample_s": self.sample_s,
            "last_flush_at": self.last_flush_at,
            "failing": self._failing,
            "flush_failures": self.flush_failures,
            "last_error": self.last_error,
            "retention_days": self.retention_s / 86_400,
            "pruned": self.pruned,
            "last_prune_at": self.last_prune_at,
            "queue": queue,
        }

    # -- writing ---------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        assert self._sub is not None
        sub = self._sub
        loop = asyncio.get_running_loop()
        flush_at: float | None = None  # when the pending rows are due; None when none are
        while True:
            timeout = None if flush_at is None else max(0.0, flush_at - loop.time())
            try:
                # get() takes nothing off the queue unless it returns, so a timeout is safe.
                self._take(await asyncio.wait_for(sub.get(), timeout))
                while len(sub) and len(self._pending) < self.flush_rows:
                    self._take(await sub.get())  # returns at once: already queued
            except TimeoutError:
                pass
            except SubscriptionClosed:
                break
            if not self._pending:
                continue
            if flush_at is None:
                flush_at = loop.time() + self.flush_interval_s
            # While the store fails only the interval retries, not every arriving message.
            full = len(self._pending) >= self.flush_rows and not self._failing
            if full or loop.time() >= flush_at:
                await self.flush()
                flush_at = loop.time() + self.flush_interval_s if self._pending else None
        await self.flush()

    def _take(self, message: Message) -> None:
        payload = message.payload
        items = payload if isinstance(payload, list) else [payload]
        fit = [p for p in items if isinstance(p, Prediction)]
        self.skipped += len(items) - len(fit)
        if self.sample_s > 0:
            now = self._clock()
            kept = [p for p in fit if self._worth_keeping(p, now)]
            self.sampled_out += len(fit) - len(kept)
            fit = kept
        before = len(self._pending)
        self._pending.extend(fit)  # a full deque drops its oldest
        self.dropped_pending += before + len(fit) - len(self._pending)

    def _worth_keeping(self, p: Prediction, now: float) -> bool:
        """A historian's rule: keep every change of level, and otherwise one prediction
        per machine (or camera) and agent every `sample_s` seconds."""
        key = (p.agent_id, p.machine_id if p.machine_id is not None else p.camera_id)
        last = self._last_kept.get(key)
        if last is not None and last[0] == p.level and now - last[1] < self.sample_s:
            return False
        self._last_kept[key] = (p.level, now)
        return True

    async def flush(self) -> bool:
        """Write what is pending, a transaction per slice; False if the store failed (the
        rows stay pending for the next attempt)."""
        while self._pending:
            batch = list(islice(self._pending, WRITE_CHUNK_ROWS))
            try:
                self._last_seq, unencodable, stored = await self.store.write(_insert, batch)
            except (StoreError, RuntimeError) as exc:  # RuntimeError: the store is closed
                # /status is read by viewers: the SQL and its values go to the log only.
                self.last_error = exc.public if isinstance(exc, StoreError) else "store closed"
                self.flush_failures += 1
                if not self._failing:
                    self._failing = True
                    log.error("history: predictions not written, retrying: %s", exc)
                return False
            for _ in batch:
                self._pending.popleft()
            self.written += len(batch) - unencodable - stored
            self.skipped += unencodable
            self.duplicates += stored
            self.last_flush_at = self._clock()
            if self._failing:
                self._failing = False
                log.info("history: store writable again, %d rows were held", len(batch))
        return True

    # -- retention -------------------------------------------------------------------------

    async def _load_marks(self) -> None:
        try:
            raw = await self.store.load_checkpoint(MARKS_CHECKPOINT)
            self._last_seq = await self.store.read(_max_seq)
        except StoreError as exc:
            # Harmless: the next mark then covers the older rows too, they live longer.
            log.error("history: retention marks not read: %s", exc)
            return
        if raw:
            try:
                self._marks = _marks_codec[1].decode(raw)
            except msgspec.DecodeError as exc:
                log.error("history: retention marks unreadable, starting anew: %s", exc)
        if self._last_seq > (self._marks[-1][1] if self._marks else 0):
            # Rows written after the last mark (or before marks existed): of unknown age,
            # so counted as written now.
            self._marks.append((self._clock(), self._last_seq))
            self._marks_dirty = True

    async def prune(self) -> int:
        """Delete rows written more than retention_days ago; returns how many."""
        async with self._prune_lock:
            now = self._clock()
            last = self._marks[-1] if self._marks else (-math.inf, 0)
            if self._last_seq > last[1] and now - last[0] >= self._mark_every_s:
                self._marks.append((now, self._last_seq))
                self._marks_dirty = True
            due = [m for m in self._marks if m[0] <= now - self.retention_s]
            deleted = 0
            if due:
                more = True
                while more:
                    n, more = await self.store.write(_delete_upto, due[-1][1], PRUNE_CHUNK_ROWS)
                    deleted += n
                    self.pruned += n
                self._marks = self._marks[len(due) :]
                self._marks_dirty = True
            if self._marks_dirty:
                await self.store.save_checkpoint(
                    MARKS_CHECKPOINT, _marks_codec[0].encode(self._marks)
                )
                self._marks_dirty = False
            self.last_prune_at = now
            return deleted
