"""The orchestrator's SQL: alarms, their audit trail, the alert log and decisions.

Every function takes a SQLAlchemy Connection and runs inside the transaction that
`Store.write` / `Store.read` opens, so one alert's alarm change, audit line and plan flag
commit together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..labels.store import insert_labels
from ..messages import Alarm, AlarmEvent, AlarmState, Alert, Decision
from ..store import alarm_events, alarms, alerts, decisions, inserted_id
from .kpis import ACTIVATIONS, KINDS, Event
from .logic import Change, Key, is_open, key_of

_encode = msgspec.json.encode
_alarm = msgspec.json.Decoder(Alarm)
_event = msgspec.json.Decoder(AlarmEvent)
_alert = msgspec.json.Decoder(Alert)
_decision = msgspec.json.Decoder(Decision)

# Built once: a statement built per call costs more than running it (see store/engine.py).
_ALARM_INSERT = alarms.insert()
_ALARM_UPDATE = alarms.update().where(alarms.c.id == sa.bindparam("b_id"))
_EVENT_INSERT = alarm_events.insert()
_ALERT_INSERT = alerts.insert()
_DECISION_INSERT = decisions.insert()
_MARK_PLANNED = (
    alarms.update().where(alarms.c.id == sa.bindparam("b_id")).values(plan_pending=False)
)


def _columns(alarm: Alarm, plan_pending: bool | None) -> dict[str, object]:
    values: dict[str, object] = {
        "source": alarm.source,
        "type": alarm.type,
        "subject": key_of(alarm)[2],
        "machine_id": alarm.machine_id,
        "state": alarm.state,
        "level": alarm.level,
        "highest_level": alarm.highest_level,
        "first_seen": alarm.first_seen.timestamp(),
        "last_seen": alarm.last_seen.timestamp(),
        "open": is_open(alarm),
        "data": _encode(alarm),
    }
    if plan_pending is not None:
        values["plan_pending"] = plan_pending
    return values


def save(conn: Connection, received: Sequence[Alert], changes: Sequence[Change]) -> None:
    """Log the alerts and commit the alarm changes they caused, with their audit lines.

    New alarms get their id here. One batch may raise an alarm and update it again: both
    changes then carry id 0 and the second belongs to the row the first inserted, until
    that alarm closes (the next raise with its key is a new alarm). Each alarm's row is
    written once, in its final state: an alert storm costs a statement per alarm, not per
    alert.
    """
    now = time.time()
    if received:
        conn.execute(
            _ALERT_INSERT,
            [{"id": a.id, "received_at": now, "data": _encode(a)} for a in received],
        )
    assigned: dict[Key, int] = {}
    final: dict[int, tuple[Alarm, bool]] = {}  # id -> (last version, a plan is owed)
    events: list[dict[str, object]] = []
    for change in changes:
        alarm, key = change.alarm, key_of(change.alarm)
        if alarm.id == 0:
            if key in assigned:
                alarm.id = assigned[key]
            else:
                result = conn.execute(_ALARM_INSERT, _columns(alarm, change.plan))
                alarm.id = assigned[key] = inserted_id(result)
        owed = final[alarm.id][1] if alarm.id in final else False
        final[alarm.id] = (alarm, owed or change.plan)
        if not is_open(alarm):
            # Written now, before a successor with its key can be inserted: the database
            # allows one open alarm per key.
            assigned.pop(key, None)
            _write(conn, *final.pop(alarm.id))
        if change.event is not None:
            change.event.alarm_id = alarm.id
            events.append(
                {
                    "alarm_id": alarm.id,
                    "at": change.event.at.timestamp(),
                    "kind": change.event.kind,
                    "by": change.event.by,
                    "data": _encode(change.event),
                }
            )
    # One executemany per shape of row: with and without the plan flag.
    for owed in (True, False):
        rows = [_update_row(alarm, owed) for alarm, o in final.values() if bool(o) is owed]
        if rows:
            conn.execute(_ALARM_UPDATE, rows)
    if events:
        conn.execute(_EVENT_INSERT, events)
    insert_labels(conn, [c.label for c in changes if c.label is not None])


def _update_row(alarm: Alarm, owed: bool) -> dict[str, object]:
    # The JSON copy is written here, with the id; a plan owed stays owed until a decision
    # settles it (see mark_planned), so only True is ever written.
    return {"b_id": alarm.id, **_columns(alarm, True if owed else None)}


def _write(conn: Connection, alarm: Alarm, owed: bool) -> None:
    conn.execute(_ALARM_UPDATE, _update_row(alarm, owed))


def load_open(conn: Connection) -> list[Alarm]:
    rows = conn.execute(sa.select(alarms.c.data).where(alarms.c.open).order_by(alarms.c.id))
    return [_alarm.decode(r.data) for r in rows]


def plans_owed(conn: Connection) -> list[int]:
    rows = conn.execute(sa.select(alarms.c.id).where(alarms.c.plan_pending).order_by(alarms.c.id))
    return [r.id for r in rows]


def mark_planned(conn: Connection, alarm_ids: Sequence[int]) -> None:
    if alarm_ids:
        # An executemany: an expanding IN list is rendered afresh for every call.
        conn.execute(_MARK_PLANNED, [{"b_id": i} for i in alarm_ids])


def save_decision(conn: Connection, decision: Decision) -> None:
    conn.execute(
        _DECISION_INSERT,
        {
            "id": decision.id,
            "at": decision.timestamp.timestamp(),
            "machine_id": decision.plan.machine_id,
            "level": decision.level,
            "data": _encode(decision),
        },
    )


def recent_decisions(
    conn: Connection,
    limit: int,
    machine_id: int | None = None,
    since: float | None = None,
) -> list[Decision]:
    query = sa.select(decisions.c.data).order_by(decisions.c.seq.desc()).limit(limit)
    if machine_id is not None:
        query = query.where(decisions.c.machine_id == machine_id)
    if since is not None:
        query = query.where(decisions.c.at >= since)
    return [_decision.decode(r.data) for r in conn.execute(query)]


def recent_alerts(conn: Connection, limit: int) -> list[Alert]:
    rows = conn.execute(sa.select(alerts.c.data).order_by(alerts.c.seq.desc()).limit(limit))
    return [_alert.decode(r.data) for r in rows]


# Activations, and the grouped ones that keep a common-cause burst going.
_RESTORED = (*ACTIVATIONS, "raised_grouped", "reactivated_grouped")


def annunciations_since(conn: Connection, since: float) -> list[tuple[float, str, Key]]:
    """Activations (raised or returned) since `since`, oldest first, with their alarm's
    key: restores the flood window and the chatter detector after a restart."""
    rows = conn.execute(
        sa.select(alarm_events.c.at, alarm_events.c.kind, alarms.c.source, alarms.c.type,
                  alarms.c.subject)
        .join(alarms, alarms.c.id == alarm_events.c.alarm_id)
        .where(alarm_events.c.at > since, alarm_events.c.kind.in_(_RESTORED))
        .order_by(alarm_events.c.at)
    )  # fmt: skip
    return [(r.at, r.kind, (r.source, r.type, r.subject)) for r in rows]


# Rows one KPI request may read: a month of a plant in a steady flood, far beyond what a
# rationalised plant logs; a longer window is refused rather than read into memory.
KPI_EVENTS_MAX = 2_000_000


def kpi_events(
    conn: Connection, since: float, until: float
) -> tuple[list[Event], dict[int, Key]] | None:
    """Activations and acknowledgements in [since, until), with the keys of their alarms;
    None when there are more than KPI_EVENTS_MAX."""
    window = (
        alarm_events.c.at >= since,
        alarm_events.c.at < until,
        alarm_events.c.kind.in_(KINDS),
    )
    n = conn.execute(sa.select(sa.func.count()).select_from(alarm_events).where(*window))
    if n.scalar_one() > KPI_EVENTS_MAX:
        return None
    rows = conn.execute(
        sa.select(alarm_events.c.alarm_id, alarm_events.c.at, alarm_events.c.kind,
                  alarms.c.source, alarms.c.type, alarms.c.subject)
        .join(alarms, alarms.c.id == alarm_events.c.alarm_id)
        .where(*window)
    )  # fmt: skip
    events, keys = [], {}
    for r in rows:
        events.append(Event(r.alarm_id, r.at, r.kind))
        keys[r.alarm_id] = (r.source, r.type, r.subject)
    return events, keys


@dataclass(frozen=True)
class AlarmQuery:
    states: tuple[AlarmState, ...] = ()
    levels: tuple[str, ...] = ()  # matched against the highest level
    source: str | None = None
    type: str | None = None
    machine_id: int | None = None
    camera_id: str | None = None
    since: float | None = None  # last seen at or after
    open: bool | None = None
    limit: int = 100


def find(conn: Connection, q: AlarmQuery) -> list[Alarm]:
    query = sa.select(alarms.c.data).order_by(alarms.c.last_seen.desc(), alarms.c.id.desc())
    if q.states:
        query = query.where(alarms.c.state.in_(q.states))
    if q.levels:
        query = query.where(alarms.c.highest_level.in_(q.levels))
    if q.source:
        query = query.where(alarms.c.source == q.source)
    if q.type:
        query = query.where(alarms.c.type == q.type)
    if q.machine_id is not None:
        query = query.where(alarms.c.machine_id == q.machine_id)
    if q.camera_id:
        query = query.where(alarms.c.subject == f"camera:{q.camera_id}")
    if q.since is not None:
        query = query.where(alarms.c.last_seen >= q.since)
    if q.open is not None:
        query = query.where(alarms.c.open == q.open)
    return [_alarm.decode(r.data) for r in conn.execute(query.limit(q.limit))]


def get(conn: Connection, alarm_id: int) -> Alarm | None:
    data = conn.execute(sa.select(alarms.c.data).where(alarms.c.id == alarm_id)).scalar()
    return None if data is None else _alarm.decode(data)


def events_of(conn: Connection, alarm_id: int) -> list[AlarmEvent]:
    rows = conn.execute(
        sa.select(alarm_events.c.id, alarm_events.c.data)
        .where(alarm_events.c.alarm_id == alarm_id)
        .order_by(alarm_events.c.id)
    )
    out = []
    for r in rows:
        event = _event.decode(r.data)
        event.id = r.id
        out.append(event)
    return out
