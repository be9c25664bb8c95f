"""The telemetry historian's reading side: accepted raw records as stored in `telemetry`.

`read_records` is what export, the API and `train --from-store` share, so every consumer
sees one shape: snake_case field names, "timestamp" an ISO 8601 string, oldest first.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import telemetry
from ..times import epoch

# Keyset paging on (ts, seq): a long export never holds more than a page in memory, and
# a page costs the same whatever its offset.
READ_PAGE_ROWS = 5_000

_decoder = msgspec.json.Decoder(dict[str, Any])


def read_records(
    conn: Connection,
    *,
    machine_id: int | None = None,
    since: datetime | float | None = None,
    until: datetime | float | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Stored records with since <= record time < until, oldest first, at most `limit`."""
    where = []
    if machine_id is not None:
        where.append(telemetry.c.machine_id == machine_id)
    if since is not None:
        where.append(telemetry.c.ts >= _seconds(since))
    if until is not None:
        where.append(telemetry.c.ts < _seconds(until))
    left = limit
    after: tuple[float, int] | None = None
    while left is None or left > 0:
        page = READ_PAGE_ROWS if left is None else min(READ_PAGE_ROWS, left)
        query = sa.select(telemetry.c.ts, telemetry.c.seq, telemetry.c.data).where(*where)
        if after is not None:
            query = query.where(sa.tuple_(telemetry.c.ts, telemetry.c.seq) > after)
        rows = conn.execute(query.order_by(telemetry.c.ts, telemetry.c.seq).limit(page)).all()
        for row in rows:
            yield _decoder.decode(row.data)
        if len(rows) < page:
            return
        after = (rows[-1].ts, rows[-1].seq)
        if left is not None:
            left -= len(rows)


def _seconds(t: datetime | float) -> float:
    return epoch(t) if isinstance(t, datetime) else float(t)
