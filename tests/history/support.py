"""What the historian's tests share: records to send, reading back what is stored."""

from __future__ import annotations

from typing import Any

from factory_mas.history.telemetry import read_records
from factory_mas.ingest.schema import parse_record
from factory_mas.messages import TelemetryRecord
from factory_mas.store import Store
from tests.support.records import record


def reading(machine_id: int, minute: int, **overrides: object) -> dict[str, Any]:
    """A valid record of `machine_id` at 2025-01-01 00:`minute`, as a gateway posts it;
    its temperature tells it apart."""
    at = f"2025-01-01T{minute // 60:02d}:{minute % 60:02d}:00Z"
    return record(machine_id, timestamp=at, temperature_c=40.0 + minute / 10, **overrides)


def validated(machine_id: int, minute: int) -> TelemetryRecord:
    return parse_record(reading(machine_id, minute))


async def stored(store: Store, **span: Any) -> list[dict[str, Any]]:
    return await store.read(lambda conn: list(read_records(conn, **span)))


def keys(rows: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(r["machine_id"], r["timestamp"]) for r in rows]
