"""Labels in the store: written by REST, the dashboard, `labels import` and alarm feedback;
read by training, the API and the exports.

Plain functions of a Connection, as every component's SQL: async callers run them on
the store's thread with `Store.write` / `Store.read`, in one transaction with what else
they write (the feedback's alarm event, the audit row).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import audit_change, labels
from ..times import epoch
from .csv import write_labels_csv
from .model import Label

# Keyset paging on (start, id), as the telemetry reader does: a long export never holds
# more than a page in memory.
READ_PAGE_ROWS = 5_000
# The audit trail's target for labels people add (alarm feedback is audited with its alarm).
AUDIT_TARGET = "labels"
_INSERT = labels.insert().returning(labels.c.id, sort_by_parameter_order=True)


def insert_labels(conn: Connection, items: Sequence[Label]) -> list[int]:
    """Store checked labels (see model.checked) in the caller's transaction; their ids,
    in order."""
    if not items:
        return []
    now = time.time()
    rows = [
        {
            "kind": label.kind,
            "machine_id": label.machine_id,
            "start": epoch(label.start),
            "end": None if label.end is None else epoch(label.end),
            "detail": label.detail,
            "alarm_id": label.alarm_id,
            "source": label.source,
            "comment": label.comment,
            "by": label.by,
            "created_at": now,
        }
        for label in items
    ]
    return [int(i) for i in conn.execute(_INSERT, rows).scalars()]


def add_labels(conn: Connection, items: Sequence[Label], *, by: str, origin: str) -> list[int]:
    """insert_labels and a row of the audit trail saying who added them, and how many of
    each kind."""
    ids = insert_labels(conn, items)
    kinds: dict[str, int] = {}
    for label in items:
        kinds[label.kind] = kinds.get(label.kind, 0) + 1
    audit_change(
        conn,
        at=time.time(),
        target=AUDIT_TARGET,
        origin=origin,
        by=by,
        accepted=True,
        data=msgspec.json.encode(
            {"request": {"action": "add", "kinds": kinds}, "result": {"ids": ids}}
        ),
    )
    return ids


def read_labels(
    conn: Connection,
    *,
    machine_id: int | None = None,
    since: float | None = None,
    until: float | None = None,
    kind: str | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> Iterator[Label]:
    """Stored labels with since <= start < until (Unix seconds), oldest start first (or
    newest, for a list of recent ones), at most `limit`."""
    where = []
    if machine_id is not None:
        where.append(labels.c.machine_id == machine_id)
    if since is not None:
        where.append(labels.c.start >= since)
    if until is not None:
        where.append(labels.c.start < until)
    if kind is not None:
        where.append(labels.c.kind == kind)
    left = limit
    after: tuple[float, int] | None = None
    while left is None or left > 0:
        page = READ_PAGE_ROWS if left is None else min(READ_PAGE_ROWS, left)
        query = sa.select(labels).where(*where)
        key = sa.tuple_(labels.c.start, labels.c.id)
        if after is not None:
            query = query.where(key < after if newest_first else key > after)
        order = (
            (labels.c.start.desc(), labels.c.id.desc())
            if newest_first
            else (labels.c.start, labels.c.id)
        )
        rows = conn.execute(query.order_by(*order).limit(page)).all()
        for row in rows:
            yield Label(
                id=row.id,
                kind=row.kind,
                machine_id=row.machine_id,
                start=_at(row.start),
                end=None if row.end is None else _at(row.end),
                detail=row.detail,
                alarm_id=row.alarm_id,
                source=row.source,
                comment=row.comment,
                by=row.by,
            )
        if len(rows) < page:
            return
        after = (rows[-1].start, rows[-1].id)
        if left is not None:
            left -= len(rows)


def labels_in(url: str) -> list[Label]:
    """Every label of the database at `url`, for training: a few per machine and day, so
    all of them (a failure after the telemetry's window still tells a machine's remaining
    life). None from a database no server of this version has opened yet."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(labels.name):
                return []
            return list(read_labels(conn))
    finally:
        engine.dispose()


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def export_labels(conn: Connection, out: Path | str | TextIO, **query: Any) -> int:
    """The stored labels `read_labels(**query)` finds, written as the labels CSV as they
    are read (a page in memory at a time); returns how many."""
    return write_labels_csv(read_labels(conn, **query), out)
