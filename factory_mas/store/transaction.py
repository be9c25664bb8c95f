"""Steps several components take inside their own transaction (`Store.write`): saving a
checkpoint, a row of the audit trail, and waiting for another process's check-then-write."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, CursorResult

from .schema import checkpoints, config_changes

# Built once, like the journal's insert (see engine.py): building a statement per call
# costs more than executing it.
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


def inserted_id(result: CursorResult[Any]) -> int:
    """The id the database gave the one row an INSERT added."""
    key = result.inserted_primary_key
    # SQLAlchemy types the key as optional: it is None only for a statement that is no insert.
    if key is None:
        raise TypeError("no row was inserted, so there is no inserted id")
    return int(key[0])


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


# Keys of the advisory locks (see serialize): constants no other application on the
# database is likely to use ("factorym", "factoryk" and "factoryt" in ASCII).
MIGRATION_LOCK_KEY = 0x666163746F72796D
FIRST_KEY_LOCK_KEY = 0x666163746F72796B
TELEMETRY_PRUNE_LOCK_KEY = 0x666163746F727974


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
