"""Persistence behind one small interface: SQLite in WAL mode by default.

SQLAlchemy Core keeps the SQL portable, and a PostgreSQL URL (DATABASE_URL) backs the same
interface where instances share state. All database work runs on one dedicated thread:
SQLite has a single writer anyway, and the event loop and the inference pool never wait on
disk.

`schema` holds the tables, `migrations` the numbered steps that bring a database to them,
`transaction` the steps components share inside their own transactions, `engine` the
Store and `worker` its thread. Components import what they use from here.
"""

from .engine import Store, database_url, sqlite_url
from .migrations import MIGRATIONS
from .schema import (
    alarm_events,
    alarms,
    alerts,
    api_keys,
    checkpoints,
    config_changes,
    decisions,
    inbox,
    labels,
    metadata,
    mqtt_outbox,
    predictions,
    schema_version,
    shift_summaries,
    sms_outbox,
    sms_outbox_alarms,
    telemetry,
)
from .transaction import FIRST_KEY_LOCK_KEY, audit_change, inserted_id, put_checkpoint, serialize

__all__ = [
    "FIRST_KEY_LOCK_KEY",
    "MIGRATIONS",
    "Store",
    "alarm_events",
    "alarms",
    "alerts",
    "api_keys",
    "audit_change",
    "checkpoints",
    "config_changes",
    "database_url",
    "decisions",
    "inbox",
    "inserted_id",
    "labels",
    "metadata",
    "mqtt_outbox",
    "predictions",
    "put_checkpoint",
    "schema_version",
    "serialize",
    "shift_summaries",
    "sms_outbox",
    "sms_outbox_alarms",
    "sqlite_url",
    "telemetry",
]
