"""The telemetry historian's reading side: accepted raw records as stored in `telemetry`.

`read_records` (one connection, for `train --from-store`) and `stored_pages` (one store
call per page, for the API and `export`) share one query, so every consumer sees one
shape: snake_case field names, "timestamp" an ISO 8601 string, oldest first, with
since <= record time < until (half-open: consecutive exports never overlap).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import Store, telemetry
from ..times import epoch

# Keyset paging on (ts, seq): a long export never holds more than a page in memory, and
# a page costs the same whatever its offset.
READ_PAGE_ROWS = 5_000

_decoder = msgspec.json.Decoder(dict[str, Any])
# (ts, seq) of the last row of a page: where the next one starts.
After = tuple[float, int]


@dataclass(frozen=True)
class Span:
    """Which stored records: one machine or all, since <= record time < until (Unix
    seconds), at most `limit` of them."""

    machine_id: int | None = None
    since: float | None = None
    until: float | None = None
    limit: int | None = None

    def conditions(self) -> list[Any]:
        where = []
        if self.machine_id is not None:
            where.append(telemetry.c.machine_id == self.machine_id)
        if self.since is not None:
            where.append(telemetry.c.ts >= self.since)
        if self.until is not None:
            where.append(telemetry.c.ts < self.until)
        return where


def read_page(conn: Connection, span: Span, after: After | None, rows: int) -> list[Any]:
    """Up to `rows` rows (ts, seq, data) of the span after `after`, oldest first."""
    query = sa.select(telemetry.c.ts, telemetry.c.seq, telemetry.c.data).where(*span.conditions())
    if after is not None:
        query = query.where(sa.tuple_(telemetry.c.ts, telemetry.c.seq) > after)
    return list(conn.execute(query.order_by(telemetry.c.ts, telemetry.c.seq).limit(rows)))


class _Paging:
    """Keyset paging through a span: the size of the next page to ask for (0 when done)
    and where it starts, stopping at the span's limit or after a short page."""

    def __init__(self, span: Span) -> None:
        self.left = span.limit
        self.after: After | None = None
        self.done = False

    def size(self) -> int:
        if self.done:
            return 0
        return READ_PAGE_ROWS if self.left is None else min(READ_PAGE_ROWS, self.left)

    def advance(self, rows: list[Any], asked: int) -> None:
        if len(rows) < asked:
            self.done = True
            return
        self.after = (rows[-1].ts, rows[-1].seq)
        if self.left is not None:
            self.left -= len(rows)


def read_records(
    conn: Connection,
    *,
    machine_id: int | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Stored records with since <= record time < until, oldest first, at most `limit`."""
    span = Span(machine_id, _seconds(since), _seconds(until), limit)
    for data in _raw(conn, span):
        yield _decoder.decode(data)


def _raw(conn: Connection, span: Span) -> Iterator[bytes]:
    paging = _Paging(span)
    while size := paging.size():
        rows = read_page(conn, span, paging.after, size)
        yield from (row.data for row in rows)
        paging.advance(rows, size)


async def stored_pages(store: Store, span: Span) -> AsyncIterator[list[bytes]]:
    """The span's records as stored (JSON objects), a page per store call: a long export
    holds the store's one thread for a page at a time, never for the whole of it."""
    paging = _Paging(span)
    while size := paging.size():
        rows = await store.read(read_page, span, paging.after, size)
        if rows:
            yield [row.data for row in rows]
        paging.advance(rows, size)


def _seconds(t: datetime | float | None) -> float | None:
    if t is None:
        return None
    return epoch(t) if isinstance(t, datetime) else float(t)
