"""The tables, in their current shape.

A migration that creates a table which later changes must spell out the old shape itself
(see migrations.py), which is what the functions building columns are for.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()


def _id() -> sa.types.TypeEngine[int]:
    """Row ids: BIGSERIAL on PostgreSQL, INTEGER on SQLite.

    The journal and the history take thousands of rows a second, and a 32-bit sequence
    would run out within weeks. SQLite's INTEGER is 64-bit already, and must stay spelled
    INTEGER to be the rowid that AUTOINCREMENT needs."""
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(length: int) -> sa.types.TypeEngine[str]:
    """VARCHAR(length) on SQLite, unbounded TEXT on PostgreSQL.

    SQLite never enforced these lengths and the code relies on that: PostgreSQL would turn
    one over-long MQTT topic or alarm list into a failed transaction, losing the batch it
    was in. The length stays as a statement of what is expected."""
    return sa.String(length).with_variant(sa.Text(), "postgresql")


schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.Float, nullable=False),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("name", _text(200), primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def _instance() -> sa.Column[str]:
    """v7: which instance a journal or outbox row belongs to (Store.instance).

    A server default only: rows written before v7, and inserts that do not name it, are
    "", the single-process instance's."""
    return sa.Column("instance", _text(200), nullable=False, server_default="")


def inbox_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("topic", _text(500), nullable=False),
        sa.Column("source", _text(200), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    ]


inbox = sa.Table(
    "inbox",
    metadata,
    *inbox_columns(),
    _instance(),
    # Without AUTOINCREMENT SQLite reuses the numbers of deleted rows, and an agent whose
    # cursor is past a reused number would skip new records after a restart.
    sqlite_autoincrement=True,
)
inbox_by_instance = sa.Index("inbox_instance_seq", inbox.c.instance, inbox.c.seq)


# -- v3: the orchestrator's durable state -----------------------------------------------
# Times are Unix seconds (floats): sortable, portable between SQLite and PostgreSQL.
# Whole messages are kept as JSON next to the columns that queries filter on.

alarms = sa.Table(
    "alarms",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("source", _text(200), nullable=False),
    sa.Column("type", _text(200), nullable=False),
    # "machine:12", "camera:cam-1" or "": the third part of the alarm key, never NULL so
    # the unique index below also holds for alarms about neither.
    sa.Column("subject", _text(300), nullable=False),
    sa.Column("machine_id", sa.Integer),
    sa.Column("state", _text(20), nullable=False),
    sa.Column("level", _text(20), nullable=False),
    sa.Column("highest_level", _text(20), nullable=False),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    # True until the alarm is cleared and acknowledged: at most one open alarm per key.
    sa.Column("open", sa.Boolean, nullable=False),
    # A plan is owed for this alarm (set with the alarm change, reset with the decision),
    # so a crash between the two is made good at the next start.
    sa.Column("plan_pending", sa.Boolean, nullable=False, default=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index(
    "alarms_open_key",
    alarms.c.source,
    alarms.c.type,
    alarms.c.subject,
    unique=True,
    sqlite_where=alarms.c.open,
    postgresql_where=alarms.c.open,
)
sa.Index("alarms_last_seen", alarms.c.last_seen)

alarm_events = sa.Table(
    "alarm_events",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("alarm_id", _id(), sa.ForeignKey("alarms.id"), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", _text(40), nullable=False),
    sa.Column("by", _text(200), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("seq", _id(), primary_key=True),
    sa.Column("id", _text(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("seq", _id(), primary_key=True),
    sa.Column("id", _text(64), nullable=False, unique=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("machine_id", sa.Integer),
    sa.Column("level", _text(20), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)

sms_outbox = sa.Table(
    "sms_outbox",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("decision_id", _text(64)),  # NULL for a digest
    sa.Column("alarm_ids", _text(2000), nullable=False),  # JSON list
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # queued -> sent | held (rate limit) -> digested | cooldown | not_configured | failed
    sa.Column("status", _text(20), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("sent_at", sa.Float, index=True),
    sa.Column("provider_id", _text(100)),
    sa.Column("error", sa.Text),
    sa.Column("digest_id", _id()),
    sqlite_autoincrement=True,
)


def predictions_table(meta: sa.MetaData, *more: sa.Column[Any]) -> sa.Table:
    table = sa.Table(
        "predictions",
        meta,
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("agent_id", _text(100), nullable=False),
        sa.Column("machine_id", sa.Integer),
        sa.Column("camera_id", _text(200)),
        sa.Column("record_ts", sa.Float, nullable=False),
        sa.Column("level", _text(20), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        *more,
        sqlite_autoincrement=True,
    )
    sa.Index("predictions_agent_machine", table.c.agent_id, table.c.machine_id, table.c.seq)
    sa.Index("predictions_agent_seq", table.c.agent_id, table.c.seq)
    return table


predictions = predictions_table(
    metadata,
    # v10: the journal row, and the position in it, of the record a prediction scored
    # (NULL for records that were not journaled). A record rescored after a crash is
    # then written once: the unique index below turns the second insert into nothing.
    sa.Column("journal_seq", _id()),
    sa.Column("journal_index", sa.Integer),
)
predictions_by_record = sa.Index(
    "predictions_record",
    predictions.c.agent_id,
    predictions.c.journal_seq,
    predictions.c.journal_index,
    unique=True,
)


# -- v4: messages for the MQTT broker that must not be lost, and audited setting changes --


def mqtt_outbox_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("seq", _id(), primary_key=True),
        sa.Column("topic", _text(500), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    ]


mqtt_outbox = sa.Table(
    "mqtt_outbox",
    metadata,
    *mqtt_outbox_columns(),
    _instance(),
    sqlite_autoincrement=True,
)
mqtt_outbox_by_instance = sa.Index(
    "mqtt_outbox_instance_seq", mqtt_outbox.c.instance, mqtt_outbox.c.seq
)

config_changes = sa.Table(
    "config_changes",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("at", sa.Float, nullable=False, index=True),
    sa.Column("target", _text(100), nullable=False),  # an agent id
    sa.Column("origin", _text(200), nullable=False),  # mqtt, http, scada:modbus, ...
    sa.Column("by", _text(200), nullable=False),
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),  # the request and the result, JSON
    sqlite_autoincrement=True,
)


# -- v5: shift summaries --------------------------------------------------------------

shift_summaries = sa.Table(
    "shift_summaries",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("shift_start", sa.Float, nullable=False),
    sa.Column("shift_end", sa.Float, nullable=False),
    # An on-demand summary of a shift in progress is kept too, but only one final one.
    sa.Column("partial", sa.Boolean, nullable=False),
    sa.Column("generated_at", sa.Float, nullable=False),
    sa.Column("generator", _text(200), nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index(
    "shift_summaries_final",
    shift_summaries.c.shift_start,
    unique=True,
    sqlite_where=~shift_summaries.c.partial,
    postgresql_where=~shift_summaries.c.partial,
)


# -- v6: API keys ------------------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("name", _text(200), nullable=False),
    sa.Column("role", _text(20), nullable=False),
    # SHA-256 of the key: keys are long random tokens, so a plain hash is enough, and the
    # key itself is never stored. `prefix` (the first characters) identifies it in lists.
    sa.Column("key_hash", _text(64), nullable=False, unique=True),
    sa.Column("prefix", _text(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("created_by", _text(200), nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("last_used_at", sa.Float),
    sqlite_autoincrement=True,
)


# -- v8: which alarms each text is about ------------------------------------------------

# One row per (text, alarm): the SMS cooldown asks "was every alarm of this decision texted
# lately?", which the JSON list in sms_outbox.alarm_ids can only answer by reading every
# recent text; in an alarm flood that grew with each decision (10 ms each after 400).
sms_outbox_alarms = sa.Table(
    "sms_outbox_alarms",
    metadata,
    sa.Column("outbox_id", _id(), nullable=False),
    sa.Column("alarm_id", _id(), nullable=False),
    sa.Index("sms_outbox_alarms_alarm", "alarm_id", "outbox_id"),
)


alarm_events_by_time = sa.Index("alarm_events_at", alarm_events.c.at, alarm_events.c.kind)


# -- v11: the telemetry historian ------------------------------------------------------

# Accepted raw records, whole (JSON), for export and training on the plant's own data.
# `ts` is the record's own time (queries), `received_at` when it arrived (retention: a
# replayed CSV from last year must not be deleted on arrival).
telemetry = sa.Table(
    "telemetry",
    metadata,
    sa.Column("seq", _id(), primary_key=True),
    sa.Column("machine_id", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index("telemetry_machine_ts", telemetry.c.machine_id, telemetry.c.ts)
sa.Index("telemetry_ts", telemetry.c.ts)


# -- v12: labels -------------------------------------------------------------------------

# What people know about the plant that telemetry does not say: maintenance, failures,
# incidents and verdicts on alarms (factory_mas/labels). Training reads them by time and
# machine; `machine_id` is NULL for one about the whole plant, `end` for a moment.
labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", _id(), primary_key=True),
    sa.Column("kind", _text(20), nullable=False),
    sa.Column("machine_id", sa.Integer),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float),
    sa.Column("detail", _text(100), nullable=False),
    sa.Column("alarm_id", _id()),
    sa.Column("source", _text(200), nullable=False),
    sa.Column("comment", _text(2000), nullable=False),
    sa.Column("by", _text(200), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,
)
sa.Index("labels_start", labels.c.start)
sa.Index("labels_machine_start", labels.c.machine_id, labels.c.start)
