"""A label: one thing that happened to a machine, as a person or the alarm system told it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

LabelKind = Literal["maintenance", "failure", "incident", "alarm_feedback"]
LABEL_KINDS: tuple[LabelKind, ...] = ("maintenance", "failure", "incident", "alarm_feedback")
# What an incident was: the safety agent's hazards, an attack on the network, a surge.
INCIDENT_TYPES: tuple[str, ...] = (
    "FIRE_RISK",
    "MECHANICAL_HAZARD",
    "ELECTRICAL_HAZARD",
    "CYBER_ATTACK",
    "POWER_ANOMALY",
)
# An operator's verdict on an alarm.
Verdict = Literal["confirmed", "false_alarm"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "false_alarm")
# The columns of a labels CSV, for import and export alike.
CSV_COLUMNS: tuple[str, ...] = (
    "kind",
    "machine_id",
    "start",
    "end",
    "detail",
    "alarm_id",
    "source",
    "comment",
    "by",
)


class Label(msgspec.Struct, kw_only=True, frozen=True):
    kind: LabelKind
    # When it happened; for a failure, the moment the machine failed.
    start: datetime
    machine_id: int | None = None
    # The end of an incident or a maintenance spell; None for a moment.
    end: datetime | None = None
    # An incident: one of INCIDENT_TYPES; alarm feedback: one of VERDICTS.
    detail: str = ""
    alarm_id: int | None = None
    # Alarm feedback: the agent that raised the alarm.
    source: str = ""
    comment: str = ""
    by: str = ""
    id: int | None = None


# Machine ids as telemetry has them (TelemetryRecord.machine_id).
MACHINE_ID_MAX = 1_000_000
# Text bounds: a label is a line of a log, not a document.
TEXT_MAX = {"detail": 100, "source": 200, "comment": 2000, "by": 200}


class LabelError(ValueError):
    """A label that cannot be kept: `field` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def checked(label: Label) -> Label:
    """The label with its times in UTC, or LabelError naming the first bad field.

    What the Struct's types cannot say: which details a kind takes, the order of the
    times, the range of machine ids and the length of texts. A time without a zone is
    read as UTC, as the telemetry export writes it."""
    if label.kind not in LABEL_KINDS:
        raise LabelError("kind", f"{label.kind!r} is not one of {', '.join(LABEL_KINDS)}")
    if label.kind == "incident" and label.detail not in INCIDENT_TYPES:
        raise LabelError("detail", f"{label.detail!r} is not one of {', '.join(INCIDENT_TYPES)}")
    if label.kind == "alarm_feedback" and label.detail not in VERDICTS:
        raise LabelError("detail", f"{label.detail!r} is not one of {', '.join(VERDICTS)}")
    if label.machine_id is not None and not 1 <= label.machine_id <= MACHINE_ID_MAX:
        raise LabelError("machine_id", f"{label.machine_id} is not from 1 to {MACHINE_ID_MAX:,}")
    if label.alarm_id is not None and label.alarm_id < 1:
        raise LabelError("alarm_id", f"{label.alarm_id} is not an alarm id (1 or more)")
    for name, most in TEXT_MAX.items():
        if len(getattr(label, name)) > most:
            raise LabelError(name, f"longer than {most} characters")
    start, end = _utc(label.start), None if label.end is None else _utc(label.end)
    if end is not None and end < start:
        raise LabelError("end", f"{end.isoformat()} is before start {start.isoformat()}")
    return msgspec.structs.replace(label, start=start, end=end)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
