"""A label: one thing that happened to a machine, as a person or the alarm system told it."""

from __future__ import annotations

from datetime import datetime
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
VERDICTS: tuple[str, ...] = ("confirmed", "false_alarm")
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
