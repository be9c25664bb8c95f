"""The telemetry table (v11) and the historian's reader, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from sqlalchemy.engine import Connection

from factory_mas.history import telemetry as history
from factory_mas.history.telemetry import read_records
from factory_mas.messages import TelemetryRecord
from factory_mas.store import Store, telemetry

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _record(machine_id: int, minute: int) -> TelemetryRecord:
    return TelemetryRecord(
        machine_id=machine_id,
        operation_mode="Active",
        temperature_c=50.0 + minute,
        vibration_hz=1.0,
        power_consumption_kw=5.0,
        network_latency_ms=5.0,
        packet_loss_pct=0.0,
        defect_rate_pct=0.0,
        production_speed=300.0,
        maintenance_score=0.5,
        error_rate_pct=0.0,
        timestamp=T0 + timedelta(minutes=minute),
    )


def _insert(conn: Connection, records: list[TelemetryRecord]) -> None:
    encode = msgspec.json.Encoder().encode
    rows = [
        {
            "machine_id": r.machine_id,
            "ts": r.timestamp.timestamp() if r.timestamp else 0.0,
            "received_at": 0.0,
            "data": encode(r),
        }
        for r in records
    ]
    conn.execute(telemetry.insert(), rows)


async def _read(store: Store, **query: Any) -> list[dict[str, Any]]:
    return await store.read(lambda conn: list(read_records(conn, **query)))


async def test_records_come_back_oldest_first_filtered_and_paged(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, so the keyset paging is crossed several times.
    monkeypatch.setattr(history, "READ_PAGE_ROWS", 3)
    # Inserted newest first: the order must come from the record time, not the insert.
    records = [_record(1 + minute % 2, minute) for minute in reversed(range(10))]
    await store.write(_insert, records)

    everything = await _read(store)
    assert [r["timestamp"] for r in everything] == [
        (T0 + timedelta(minutes=m)).isoformat().replace("+00:00", "Z") for m in range(10)
    ]
    assert everything[4]["temperature_c"] == 54.0
    assert set(everything[0]) == set(TelemetryRecord.__struct_fields__)

    machine_2 = await _read(store, machine_id=2)
    assert [r["temperature_c"] for r in machine_2] == [51.0, 53.0, 55.0, 57.0, 59.0]

    window = await _read(
        store, since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=7), limit=4
    )
    assert [r["temperature_c"] for r in window] == [52.0, 53.0, 54.0, 55.0]
    assert await _read(store, machine_id=3) == []
