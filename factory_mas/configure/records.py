"""The SQL of run-time settings: the audit trail and the saved overrides."""

from __future__ import annotations

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..store import audit_change, checkpoints, config_changes, put_checkpoint
from ..times import iso
from .requests import (
    RAW_KEPT_CHARS,
    ConfigResult,
    Received,
    SavedOverrides,
    audit_data,
    checkpoint_name,
)


def record(conn: Connection, result: ConfigResult, received: Received, known_target: bool) -> None:
    """The audit row and, for an accepted change, the saved overrides: one
    transaction, so what is in force after a restart is always audited."""
    at = result.at.timestamp()
    if result.accepted and result.changed and known_target:
        saved = SavedOverrides(
            overrides=result.overrides or {}, at=at, by=result.by, origin=result.origin
        )
        put_checkpoint(conn, checkpoint_name(result.target), msgspec.json.encode(saved))
    audit_change(
        conn,
        at=at,
        target=result.target,
        origin=result.origin,
        by=result.by,
        accepted=result.accepted,
        data=audit_data(received, result),
    )


def forget(conn: Connection, result: ConfigResult, raw: bytes) -> None:
    """Drop saved overrides that no longer fit; the audit row keeps what they were."""
    conn.execute(checkpoints.delete().where(checkpoints.c.name == checkpoint_name(result.target)))
    text = raw.decode("utf-8", "replace")[:RAW_KEPT_CHARS]
    record(conn, result, Received(raw=text), known_target=False)


def changes(conn: Connection, target: str | None, since: float | None, limit: int) -> list:
    query = sa.select(config_changes).order_by(config_changes.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(config_changes.c.target == target)
    if since is not None:
        query = query.where(config_changes.c.at >= since)
    out = []
    for row in conn.execute(query):
        data = msgspec.json.decode(row.data)
        out.append(
            {
                "id": row.id,
                "at": iso(row.at),
                "target": row.target,
                "origin": row.origin,
                "by": row.by,
                "accepted": row.accepted,
                "request": data.get("request"),
                # What was received when it was not JSON (cut short).
                **({"raw": data["raw"]} if "raw" in data else {}),
                "result": data.get("result"),
            }
        )
    return out
