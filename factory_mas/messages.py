"""The messages that travel on the hub and over the wire, as msgspec Structs.

The Struct is the schema: its annotations and `Meta` constraints validate input, encode
JSON and document the fields at once. Field names are the snake_case names of DESIGN.md.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .settings import Level

OperationMode = Literal["Active", "Idle", "Maintenance"]
EfficiencyStatus = Literal["Low", "Medium", "High"]


def _bounded(lo: float, hi: float) -> Any:
    # Both bounds given on purpose: NaN and +/-inf fail any bounded check, so a bounded
    # float is also a finite float. The bounds are physical sense, not the usual range.
    return Annotated[float, Meta(ge=lo, le=hi)]


Percent = _bounded(0, 100)


# gc=False: records and predictions hold no references back to containers, so they can
# never be part of a cycle; untracked, the tens of thousands kept in queues and history do
# not have to be walked by every garbage collection (measured: -30 % scoring time).
class TelemetryRecord(Struct, kw_only=True, gc=False):
    """One reading of one machine: a row of the Intelligent Manufacturing Dataset.

    Unknown keys are ignored rather than rejected: gateways add their own (site, line),
    and a record must not be lost for carrying more than we need.
    """

    machine_id: Annotated[int, Meta(ge=1, le=1_000_000)]
    operation_mode: OperationMode
    temperature_c: _bounded(-273.15, 2000)
    vibration_hz: _bounded(0, 100_000)
    power_consumption_kw: _bounded(0, 1_000_000)
    network_latency_ms: _bounded(0, 3_600_000)
    packet_loss_pct: Percent
    defect_rate_pct: Percent
    production_speed: _bounded(0, 1_000_000)
    maintenance_score: _bounded(0, 1)
    error_rate_pct: Percent
    # A record without a timestamp is stamped on arrival, as ThingsBoard does.
    timestamp: datetime | None = None
    efficiency_status: EfficiencyStatus | None = None


class Rejection(Struct, kw_only=True):
    """A record that failed validation, published on sensors/factory/rejected."""

    source: str
    reason: str
    field: str | None = None
    index: int | None = None
    input: Any = None
    timestamp: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))


class Prediction(Struct, kw_only=True, gc=False):
    agent_id: str
    # None for predictions about a place rather than a machine (a PPE camera).
    machine_id: int | None
    record_ts: datetime
    produced_at: datetime
    model_version: str
    level: Level
    result: dict[str, Any]
    camera_id: str | None = None


class Alert(Struct, kw_only=True):
    source: str
    type: str
    level: Level
    details: str
    machine_id: int | None = None
    # For alerts about a place rather than a machine (a PPE camera).
    camera_id: str | None = None
    value: float | None = None
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
