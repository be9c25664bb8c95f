"""Schema changes as numbered migrations, applied in order at start-up.

The applied version is kept in `schema_version`, so an old database is brought forward and
a newer one is refused. They run in one transaction under a lock, so processes starting
together migrate once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from . import schema as tables
from .transaction import MIGRATION_LOCK_KEY, serialize

# Named after the package: log filters and collectors know it by that name.
log = logging.getLogger(__package__)


def _v1(conn: Connection) -> None:
    tables.schema_version.create(conn)
    tables.checkpoints.create(conn)


def _v2(conn: Connection) -> None:
    # The journal as v2 made it; v7 adds `instance`.
    journal = sa.Table("inbox", sa.MetaData(), *tables.inbox_columns(), sqlite_autoincrement=True)
    journal.create(conn)


def _v3(conn: Connection) -> None:
    for table in (
        tables.alarms,
        tables.alarm_events,
        tables.alerts,
        tables.decisions,
        tables.sms_outbox,
    ):
        table.create(conn)
    # The history as v3 made it; v10 adds the journal position.
    tables.predictions_table(sa.MetaData()).create(conn)


def _v4(conn: Connection) -> None:
    # The outbox as v4 made it; v7 adds `instance`.
    outbox = sa.Table(
        "mqtt_outbox",
        sa.MetaData(),
        *tables.mqtt_outbox_columns(),
        sqlite_autoincrement=True,
    )
    outbox.create(conn)
    tables.config_changes.create(conn)


def _v5(conn: Connection) -> None:
    tables.shift_summaries.create(conn)


def _v6(conn: Connection) -> None:
    tables.api_keys.create(conn)


def _v7(conn: Connection) -> None:
    # Per-instance journal and outbox, for instances sharing a database. Both backends
    # add a NOT NULL column with a constant default in place: existing rows become "".
    for table in (tables.inbox, tables.mqtt_outbox):
        column = sa.schema.CreateColumn(table.c.instance).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {column}"))
    tables.inbox_by_instance.create(conn)
    tables.mqtt_outbox_by_instance.create(conn)


def _v8(conn: Connection) -> None:
    tables.sms_outbox_alarms.create(conn)
    rows = conn.execute(sa.select(tables.sms_outbox.c.id, tables.sms_outbox.c.alarm_ids)).all()
    links = [
        {"outbox_id": row.id, "alarm_id": int(alarm_id)}
        for row in rows
        for alarm_id in set(json.loads(row.alarm_ids))
    ]
    if links:
        conn.execute(tables.sms_outbox_alarms.insert(), links)


def _v9(conn: Connection) -> None:
    # The alarm KPIs and the flood window read the audit trail by time.
    tables.alarm_events_by_time.create(conn, checkfirst=True)


def _v10(conn: Connection) -> None:
    # Rows from before stay NULL, which the unique index never compares (NULLs are
    # distinct on both backends): old history is kept as it is.
    for column in (tables.predictions.c.journal_seq, tables.predictions.c.journal_index):
        spec = sa.schema.CreateColumn(column).compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE predictions ADD COLUMN {spec}"))
    tables.predictions_by_record.create(conn)


def _v11(conn: Connection) -> None:
    tables.telemetry.create(conn)


def _v12(conn: Connection) -> None:
    tables.labels.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9, _v10, _v11, _v12
]  # fmt: skip


def migrate(conn: Connection, database: str) -> int:
    """Bring the database forward to the newest schema in the caller's transaction;
    returns that version. `database` names it in the error for a newer one."""
    serialize(conn, MIGRATION_LOCK_KEY)
    have = 0
    if sa.inspect(conn).has_table("schema_version"):
        have = conn.execute(sa.select(sa.func.max(tables.schema_version.c.version))).scalar() or 0
    if have > len(MIGRATIONS):
        raise StoreError(
            f"database {database} has schema version {have}, newer than this "
            f"factory_mas knows ({len(MIGRATIONS)}); upgrade factory_mas"
        )
    for number, step in enumerate(MIGRATIONS[have:], start=have + 1):
        step(conn)
        conn.execute(tables.schema_version.insert().values(version=number, applied_at=time.time()))
        log.info("store: applied schema migration %d", number)
    return len(MIGRATIONS)
