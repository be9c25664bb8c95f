"""Signal conditioning and alarm gating shared by every agent, as pure functions.

A model scores each record on its own, and one record is a noisy witness: the pm forest's
RUL for a steady machine swings by 60-80 h from one record to the next. An operator's
alarm must follow the machine, not the noise, so between the model and the alarm:

1. each score is smoothed per machine (an EWMA over about `records` records; the RUL as a
   trend that ages between records, since a life estimate of 100 h an hour ago is 99 h
   now);
2. the level is read off the smoothed value with a deadband under every threshold: a
   level is entered at its threshold and left only once the value is `deadband` back on
   the safe side (ISA-18.2 hysteresis);
3. the gate tells the orchestrator about a level only once it has held for the on-delay,
   and about the return to normal once that has held for the off-delay (seconds of record
   time, so a replay at any speed behaves as the plant would).

Nothing here does I/O or reads a clock: every function is given the record time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from ..levels import RANK, Level
from ..messages import Prediction
from ..settings import AgentSettings

# A machine or a camera (PPE).
SubjectKey = int | str
# The threshold a value must reach for a level, lowest level first.
Cuts = Sequence[tuple[float, Level]]


def alpha_for(records: int) -> float:
    """The EWMA weight whose average age is that of a mean over `records` records; one
    record means no smoothing."""
    return 2.0 / (records + 1.0)


def ewma(previous: float | None, value: float, alpha: float) -> float:
    # In this form alpha = 1 gives `value` bit for bit: no smoothing means none.
    return value if previous is None else (1.0 - alpha) * previous + alpha * value


def aged_ewma(previous: float | None, value: float, alpha: float, elapsed_h: float) -> float:
    """A remaining-life trend: the earlier estimate counts down the hours since it was made
    before the new one is averaged in. A gap in the data (a clock set back, a day offline)
    ages it by what honestly passed, never backwards."""
    if previous is None:
        return value
    return ewma(max(0.0, previous - max(0.0, elapsed_h)), value, alpha)


def level_with_deadband(value: float, cuts: Cuts, previous: Level | None, deadband: float) -> Level:
    """The level `value` has reached (higher is worse), with hysteresis against `previous`.

    Rising, a level needs its threshold. Falling, the level held so far stays until the
    value is `deadband` below its threshold, and the level then taken is the highest whose
    threshold less the deadband is still met (never above `previous`). For a value where
    lower is worse (RUL), pass both the value and the thresholds negated.
    """
    reached: Level = "NORMAL"
    for threshold, level in cuts:
        if value >= threshold:
            reached = level
    if previous is None or RANK[reached] >= RANK[previous]:
        return reached
    held: Level = "NORMAL"
    for threshold, level in cuts:
        if RANK[level] <= RANK[previous] and value >= threshold - deadband:
            held = level
    return held if RANK[held] > RANK[reached] else reached


class SubjectMemory(msgspec.Struct, kw_only=True):
    """One machine's (or camera's) conditioned scores, as a checkpoint keeps them."""

    values: dict[str, float] = msgspec.field(default_factory=dict)
    level: Level | None = None
    at: float | None = None  # the latest record's time, epoch seconds


class Conditioner:
    """Per-subject smoothing and hysteresis for one agent. Its agent calls it from score()
    (serialised per agent) record by record, in arrival order."""

    def __init__(self) -> None:
        self.subjects: dict[SubjectKey, SubjectMemory] = {}

    def memory(self, subject: SubjectKey) -> SubjectMemory:
        m = self.subjects.get(subject)
        if m is None:
            m = self.subjects[subject] = SubjectMemory()
        return m

    def forget(self, subject: SubjectKey) -> None:
        """Start afresh: the machine was repaired, or changed beyond what its past says."""
        self.subjects.pop(subject, None)

    def smooth(self, subject: SubjectKey, name: str, value: float, records: int) -> float:
        m = self.memory(subject)
        out = m.values[name] = ewma(m.values.get(name), value, alpha_for(records))
        return out

    def trend(self, subject: SubjectKey, name: str, hours: float, records: int, at: float) -> float:
        """An aged EWMA of a remaining time in hours; `at` is the record's time."""
        m = self.memory(subject)
        elapsed_h = 0.0 if m.at is None else (at - m.at) / 3600.0
        out = m.values[name] = aged_ewma(m.values.get(name), hours, alpha_for(records), elapsed_h)
        return out

    def level(self, subject: SubjectKey, reached: Level, at: float) -> Level:
        """Remember the level a record got (and when), and return it."""
        m = self.memory(subject)
        m.level, m.at = reached, at if m.at is None else max(m.at, at)
        return reached

    def previous_level(self, subject: SubjectKey) -> Level | None:
        m = self.subjects.get(subject)
        return None if m is None else m.level

    def export(self) -> list[tuple[SubjectKey, SubjectMemory]]:
        return list(self.subjects.items())

    def restore(self, saved: list[tuple[SubjectKey, SubjectMemory]]) -> None:
        self.subjects = dict(saved)


# -- the alarm gate: on-delay and off-delay --------------------------------------------

Told = Literal["alert", "normal"]


class Gate(msgspec.Struct, kw_only=True):
    """What the orchestrator was last told about one subject, and what is waiting."""

    reported: Level = "NORMAL"
    # The alert type of the level reported (its off-delay may be its own).
    reported_type: str = ""
    # Since when (record time) the level has stood above the reported one in the band.
    rising_since: float | None = None
    # Since when it has been NORMAL while an alarm level was reported.
    normal_since: float | None = None


def gate_step(
    gate: Gate,
    level: Level,
    at: float,
    minimum: Level,
    on_delay_s: float,
    off_delay_s: float,
    immediate: Level,
    urgent: bool = False,
) -> Told | None:
    """One conditioned prediction through the gate (changed in place).

    "alert": tell the orchestrator about `level` now (it entered the alarm band, or got
    worse in it, and has held for the on-delay; levels from `immediate` up, and an
    `urgent` prediction, skip it).
    "normal": tell it the subject is back to normal (NORMAL held for the off-delay).
    None: nothing is news. A level that eases off but stays above NORMAL keeps the alarm:
    ISA-18.2 clears an alarm on return to normal, not on a lesser abnormality.
    """
    rank = RANK[level]
    in_band = rank >= RANK[minimum]
    if in_band and rank > RANK[gate.reported]:
        gate.normal_since = None
        if gate.rising_since is None or at < gate.rising_since:
            gate.rising_since = at
        if urgent or rank >= RANK[immediate] or at - gate.rising_since >= on_delay_s:
            gate.reported, gate.rising_since = level, None
            return "alert"
        return None
    gate.rising_since = None
    if level != "NORMAL" or gate.reported == "NORMAL":
        gate.normal_since = None
        return None
    if gate.normal_since is None or at < gate.normal_since:
        gate.normal_since = at
    if at - gate.normal_since >= off_delay_s:
        gate.reported, gate.reported_type, gate.normal_since = "NORMAL", "", None
        return "normal"
    return None


def gate_prediction(
    gate: Gate, p: Prediction, alert_type: str, s: AgentSettings, urgent: bool = False
) -> Told | None:
    """One prediction through its subject's gate with the agent's settings: the on-delay
    of the alert type it would raise (none when `urgent`), the off-delay of the type last
    told."""
    on_s = s.delays_for(alert_type)[0]
    off_s = s.delays_for(gate.reported_type)[1]
    at = p.record_ts.timestamp()
    told = gate_step(
        gate, p.level, at, s.alert_min_level, on_s, off_s, s.on_delay_skip_level, urgent
    )
    if told == "alert":
        gate.reported_type = alert_type
    return told
