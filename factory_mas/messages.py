"""The messages that travel on the hub and over the wire, as msgspec Structs.

The Struct is the schema: its annotations and `Meta` constraints validate input, encode
JSON and document the fields at once. Field names are the snake_case names of DESIGN.md.
"""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from .levels import Level

OperationMode = Literal["Active", "Idle", "Maintenance"]
EfficiencyStatus = Literal["Low", "Medium", "High"]
# What the PPE agent looks for on a worker, in the model's output order.
PPE_ITEMS: tuple[str, ...] = ("helmet", "boots", "pants", "shirt")


# Every float of a record has both bounds on purpose: NaN and +/-inf fail any bounded
# check, so a bounded float is also a finite float. The bounds are physical sense, not the
# usual range. Spelled out per field: a type checker accepts no call in an annotation.
Percent = Annotated[float, Meta(ge=0, le=100)]


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
    temperature_c: Annotated[float, Meta(ge=-273.15, le=2000)]
    vibration_hz: Annotated[float, Meta(ge=0, le=100_000)]
    power_consumption_kw: Annotated[float, Meta(ge=0, le=1_000_000)]
    network_latency_ms: Annotated[float, Meta(ge=0, le=3_600_000)]
    packet_loss_pct: Percent
    defect_rate_pct: Percent
    production_speed: Annotated[float, Meta(ge=0, le=1_000_000)]
    # A plant rarely has one: the agents do without it.
    maintenance_score: Annotated[float, Meta(ge=0, le=1)] | None = None
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
    # The ingest journal row of the record scored and its position in that row; None for
    # a record that was not journaled. The stored history is keyed by them, so a record
    # scored again after a crash (its agent's checkpoint had not covered it) is kept once.
    journal_seq: int | None = None
    journal_index: int | None = None


Name = Annotated[str, Meta(min_length=1, max_length=200)]


class Alert(Struct, kw_only=True):
    source: Name
    type: Name
    level: Level
    details: Annotated[str, Meta(max_length=4000)]
    machine_id: int | None = None
    # For alerts about a place rather than a machine (a PPE camera).
    camera_id: str | None = None
    value: float | None = None
    id: Annotated[str, Meta(min_length=1, max_length=64)] = msgspec.field(
        default_factory=lambda: uuid.uuid4().hex
    )
    timestamp: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        # A sender's time without a zone is read as UTC, so alarm times stay comparable.
        if self.timestamp.tzinfo is None:
            self.timestamp = self.timestamp.replace(tzinfo=UTC)


# -- orchestrator ----------------------------------------------------------------------

# ISA-18.2 / IEC 62682 alarm states: is the condition still there, has anyone seen it.
AlarmState = Literal["ACTIVE_UNACK", "ACTIVE_ACK", "CLEARED_UNACK", "CLEARED_ACK"]
ALARM_STATES: tuple[AlarmState, ...] = typing.get_args(AlarmState)
# A return-to-normal alert of this type clears every alarm of its source on its subject;
# a NORMAL alert of any other type clears only the alarm of that type.
RETURN_TO_NORMAL = "RETURN_TO_NORMAL"


class AlarmComment(Struct, kw_only=True):
    by: str
    at: datetime
    text: str


class Alarm(Struct, kw_only=True):
    """One abnormal condition: every alert with its (source, type, machine or camera)
    updates this alarm instead of raising another, until it is cleared and acknowledged."""

    id: int
    source: str
    type: str
    state: AlarmState
    level: Level  # the latest alert's level
    highest_level: Level
    count: int
    first_seen: datetime
    last_seen: datetime
    details: str
    machine_id: int | None = None
    camera_id: str | None = None
    value: float | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    shelved_until: datetime | None = None
    shelved_by: str | None = None
    cleared_at: datetime | None = None
    comments: list[AlarmComment] = msgspec.field(default_factory=list)
    # Times it became active: the raise and every return after a clear.
    activations: int = 1
    # Activated chatter_count times within chatter_window_s (set once, kept).
    chattering: bool = False
    # One of many alarms of its source and type at once (a common cause): listed and
    # audited, but annunciated by its group alarm (same source and type, no subject).
    grouped: bool = False
    # Raised while a related alarm on its machine already said it (orchestrator
    # suppress_by): the id of that alarm, which is what sounded.
    suppressed_by: int | None = None
    # The operator's latest verdict on it (labels.model.VERDICTS): confirmed or
    # false_alarm; each is kept as a label too (POST .../alarms/{id}/feedback).
    feedback: str | None = None


class AlarmEvent(Struct, kw_only=True):
    """One line of an alarm's audit trail: what changed, who did it, when."""

    alarm_id: int
    at: datetime
    # raised, escalated, reactivated, cleared, acked, shelved, unshelved, comment; and,
    # not annunciated: reactivated_shelved (returned while shelved), raised_grouped and
    # reactivated_grouped (a member of a group alarm), raised_suppressed and
    # reactivated_suppressed (a related alarm said it); chattering (marked by the system)
    kind: str
    by: str  # the agent or the operator
    state: AlarmState
    level: Level
    detail: str = ""
    id: int = 0


class Plan(Struct, kw_only=True):
    action: str
    priority: Annotated[int, Meta(ge=1, le=5)]
    steps: list[str]
    rationale: str
    machine_id: int | None = None
    camera_id: str | None = None


class Notified(Struct, kw_only=True):
    channel: str  # sms
    status: str  # queued, sent, cooldown, held, not_configured, failed


class Decision(Struct, kw_only=True):
    alarm_ids: list[int]
    level: Level  # the highest level among its alarms
    plan: Plan
    # "builtin", or "external <url>", or "builtin (external planner failed: ...)".
    planner: str
    notified: Notified | None = None
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))


# -- backlog ---------------------------------------------------------------------------


class MachineCount(Struct, kw_only=True):
    machine_id: int
    alarms: int
    highest_level: Level


class ShiftFacts(Struct, kw_only=True):
    """What happened in one shift, computed from the store and the prediction stream:
    the numbers a summary states. A language model may word them, never change them."""

    shift_start: datetime
    shift_end: datetime
    # Alarms raised (or raised again) in the shift, by source, by highest level, by machine.
    alarms_raised: int = 0
    alarms_by_source: dict[str, int] = msgspec.field(default_factory=dict)
    alarms_by_level: dict[str, int] = msgspec.field(default_factory=dict)
    top_machines: list[MachineCount] = msgspec.field(default_factory=list)
    # Of the alarms raised in the shift: still open at its end, and acknowledged.
    alarms_open: int = 0
    alarms_acknowledged: int = 0
    alarms_unacknowledged: int = 0
    # Decisions taken, by action; texts sent to the supervisor, by outbox status.
    decisions: int = 0
    decisions_by_action: dict[str, int] = msgspec.field(default_factory=dict)
    sms_by_status: dict[str, int] = msgspec.field(default_factory=dict)
    # Predictions scored in the shift, per agent and level.
    predictions_by_agent: dict[str, int] = msgspec.field(default_factory=dict)
    predictions_by_level: dict[str, int] = msgspec.field(default_factory=dict)
    # PPE: share of camera frames judged compliant (None: no frames).
    ppe_frames: int = 0
    ppe_compliance_rate: float | None = None
    # Energy: kWh drawn by all machines (from their readings), anomalous readings.
    energy_kwh: float = 0.0
    energy_anomalies: int = 0
    # The hardest alarms of the shift, worst first: "safety_agent FIRE_RISK on machine 7
    # (EMERGENCY, 3 times)".
    top_issues: list[str] = msgspec.field(default_factory=list)


class ShiftSummary(Struct, kw_only=True):
    shift_start: datetime
    shift_end: datetime
    facts: ShiftFacts
    narrative: str
    recommendations: list[str]
    # "gemini:<model>" or "offline"; for offline, why (no key, or the error).
    generator: str
    generated_at: datetime = msgspec.field(default_factory=lambda: datetime.now(UTC))
    # True for an on-demand summary of a shift still in progress.
    partial: bool = False
    note: str = ""
    id: int = 0
