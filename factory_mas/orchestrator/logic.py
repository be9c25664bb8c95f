"""The alarm life cycle after ISA-18.2 / IEC 62682, as pure functions.

An alarm is keyed by (source, type, subject), the subject being the machine or camera.
Every alert with that key updates the one open alarm (count, last seen, highest level)
instead of raising another. States say two things at once: is the condition still there
(ACTIVE / CLEARED) and has an operator seen it (UNACK / ACK). An alarm is open until it is
both cleared and acknowledged; the next alert with its key then raises a new alarm.

Nothing here does I/O or keeps time: every function gets `now` and returns new objects
(the service commits them to the store before anyone else sees them).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from msgspec import Struct, field
from msgspec.structs import replace

from ..levels import RANK
from ..messages import (
    ALARM_STATES,
    RETURN_TO_NORMAL,
    Alarm,
    AlarmComment,
    AlarmEvent,
    AlarmState,
    Alert,
)
from ..settings import LEVELS, Level

Key = tuple[str, str, str]
OPEN_STATES: frozenset[AlarmState] = frozenset({"ACTIVE_UNACK", "ACTIVE_ACK", "CLEARED_UNACK"})
ACTIVE_STATES: frozenset[AlarmState] = frozenset({"ACTIVE_UNACK", "ACTIVE_ACK"})


class AlarmConflict(ValueError):
    """The operator's action does not apply to the alarm's state (e.g. ack twice)."""


def subject_of(machine_id: int | None, camera_id: str | None) -> str:
    if machine_id is not None:
        return f"machine:{machine_id}"
    if camera_id:
        return f"camera:{camera_id}"
    return ""


def key_of(item: Alarm | Alert) -> Key:
    return (item.source, item.type, subject_of(item.machine_id, item.camera_id))


def is_open(alarm: Alarm) -> bool:
    return alarm.state in OPEN_STATES


def is_shelved(alarm: Alarm, now: datetime) -> bool:
    return alarm.shelved_until is not None and alarm.shelved_until > now


@dataclass(frozen=True)
class Change:
    """What one input did to one alarm: the alarm as it is now, the audit line, and
    whether it counts as a new annunciation (for flood detection) and needs a plan."""

    alarm: Alarm
    event: AlarmEvent | None
    annunciated: bool = False
    plan: bool = False


def _event(alarm: Alarm, kind: str, by: str, at: datetime, detail: str = "") -> AlarmEvent:
    return AlarmEvent(
        alarm_id=alarm.id,
        at=at,
        kind=kind,
        by=by,
        state=alarm.state,
        level=alarm.level,
        detail=detail,
    )


def raise_alarm(alert: Alert) -> Change:
    alarm = Alarm(
        id=0,  # the store assigns it
        source=alert.source,
        type=alert.type,
        machine_id=alert.machine_id,
        camera_id=alert.camera_id,
        state="ACTIVE_UNACK",
        level=alert.level,
        highest_level=alert.level,
        count=1,
        first_seen=alert.timestamp,
        last_seen=alert.timestamp,
        details=alert.details,
        value=alert.value,
    )
    return Change(
        alarm, _event(alarm, "raised", alert.source, alert.timestamp), annunciated=True, plan=True
    )


def update_alarm(alarm: Alarm, alert: Alert) -> Change:
    """Another alert for an open alarm: count it; re-annunciate when it got worse or had
    cleared (an acknowledged alarm that escalates must be seen again)."""
    escalated = RANK[alert.level] > RANK[alarm.highest_level]
    reactivated = alarm.state == "CLEARED_UNACK"
    state: AlarmState = alarm.state
    acked_by, acked_at = alarm.acked_by, alarm.acked_at
    if reactivated or (escalated and state == "ACTIVE_ACK"):
        # Annunciated again: the earlier acknowledgement no longer covers it.
        state, acked_by, acked_at = "ACTIVE_UNACK", None, None
    new = replace(
        alarm,
        state=state,
        acked_by=acked_by,
        acked_at=acked_at,
        level=alert.level,
        highest_level=alert.level if escalated else alarm.highest_level,
        count=alarm.count + 1,
        last_seen=max(alarm.last_seen, alert.timestamp),
        details=alert.details,
        value=alert.value,
        cleared_at=None,
    )
    if reactivated:
        kind, detail = "reactivated", f"returned at {alert.level}"
    elif escalated:
        kind, detail = "escalated", f"{alarm.highest_level} -> {alert.level}"
    else:
        return Change(new, None)
    event = _event(new, kind, alert.source, alert.timestamp, detail)
    return Change(new, event, annunciated=reactivated, plan=True)


def clear_alarm(alarm: Alarm, by: str, at: datetime) -> Change | None:
    """The condition is gone (its source reported NORMAL). None if it was not active."""
    if alarm.state not in ACTIVE_STATES:
        return None
    state: AlarmState = "CLEARED_ACK" if alarm.state == "ACTIVE_ACK" else "CLEARED_UNACK"
    new = replace(alarm, state=state, level="NORMAL", cleared_at=at)
    return Change(new, _event(new, "cleared", by, at))


def clears(alert: Alert, alarm: Alarm) -> bool:
    """Does this NORMAL alert clear this alarm? RETURN_TO_NORMAL clears every alarm of its
    source on its subject; a NORMAL alert of a type clears that type's alarm only."""
    if alert.source != alarm.source:
        return False
    # A return to normal older than the alarm's last alert is stale news (deliveries can
    # overtake each other); the condition was seen again after it.
    if alert.timestamp < alarm.last_seen:
        return False
    if subject_of(alert.machine_id, alert.camera_id) != subject_of(
        alarm.machine_id, alarm.camera_id
    ):
        return False
    return alert.type in (RETURN_TO_NORMAL, alarm.type)


def apply_alert(open_alarms: dict[Key, Alarm], alert: Alert) -> list[Change]:
    """What `alert` does to the open alarms (not changed here; the caller commits)."""
    if alert.level == "NORMAL":
        changes = []
        for alarm in open_alarms.values():
            if clears(alert, alarm):
                change = clear_alarm(alarm, alert.source, alert.timestamp)
                if change is not None:
                    changes.append(change)
        return changes
    current = open_alarms.get(key_of(alert))
    if current is None or not is_open(current):
        return [raise_alarm(alert)]
    return [update_alarm(current, alert)]


def acknowledge(alarm: Alarm, by: str, at: datetime, note: str = "") -> Change:
    if alarm.state == "ACTIVE_UNACK":
        state: AlarmState = "ACTIVE_ACK"
    elif alarm.state == "CLEARED_UNACK":
        state = "CLEARED_ACK"
    else:
        who = f" by {alarm.acked_by}" if alarm.acked_by else ""
        raise AlarmConflict(f"alarm {alarm.id} is {alarm.state}: already acknowledged{who}")
    new = replace(alarm, state=state, acked_by=by, acked_at=at)
    return Change(new, _event(new, "acked", by, at, note))


def shelve(alarm: Alarm, by: str, at: datetime, until: datetime, reason: str = "") -> Change:
    if not is_open(alarm):
        raise AlarmConflict(f"alarm {alarm.id} is {alarm.state}: closed alarms cannot be shelved")
    new = replace(alarm, shelved_until=until, shelved_by=by)
    detail = f"until {until.isoformat()}" + (f": {reason}" if reason else "")
    return Change(new, _event(new, "shelved", by, at, detail))


def unshelve(alarm: Alarm, by: str, at: datetime, detail: str = "") -> Change:
    if alarm.shelved_until is None:
        raise AlarmConflict(f"alarm {alarm.id} is not shelved")
    new = replace(alarm, shelved_until=None, shelved_by=None)
    return Change(new, _event(new, "unshelved", by, at, detail))


def comment(alarm: Alarm, by: str, at: datetime, text: str) -> Change:
    new = replace(alarm, comments=[*alarm.comments, AlarmComment(by=by, at=at, text=text)])
    return Change(new, _event(new, "comment", by, at, text))


def counts(alarms: Iterable[Alarm], now: datetime) -> dict[str, object]:
    """Open alarms by state and by highest level, plus how many are shelved."""
    by_state = Counter({state: 0 for state in ALARM_STATES})
    by_level = Counter({level: 0 for level in LEVELS if level != "NORMAL"})
    shelved = total = 0
    for alarm in alarms:
        total += 1
        by_state[alarm.state] += 1
        by_level[alarm.highest_level] += 1
        shelved += is_shelved(alarm, now)
    return {"open": total, "shelved": shelved, "by_state": by_state, "by_level": by_level}


class FloodDetector:
    """Counts new annunciations in a sliding window. A flood starts above `threshold` and
    ends below `end_below`; the gap between the two keeps it from flickering."""

    def __init__(self, threshold: int, window_s: float, end_below: int) -> None:
        self.threshold, self.window_s, self.end_below = threshold, window_s, end_below
        self._times: deque[float] = deque()
        self.since: float | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def in_window(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)

    def note(self, at: float) -> None:
        self._times.append(at)

    def update(self, now: float) -> bool | None:
        """True when a flood starts now, False when it ends now, None otherwise."""
        n = self.in_window(now)
        if self.since is None and n > self.threshold:
            self.since = now
            return True
        if self.since is not None and n < self.end_below:
            self.since = None
            return False
        return None


class AlarmGroup(Struct, kw_only=True):
    """Alarms of one source and type shown as one line during a flood."""

    source: str
    type: str
    highest_level: Level
    count: int = 0
    alarm_ids: list[int] = field(default_factory=list)
    machine_ids: list[int] = field(default_factory=list)
    camera_ids: list[str] = field(default_factory=list)


def flood_groups(alarms: Iterable[Alarm], below: Level) -> list[AlarmGroup]:
    """During a flood: the open alarms below level `below`, one group per source and type,
    so an operator sees 'POWER_ANOMALY on 14 machines' instead of 14 lines."""
    groups: dict[tuple[str, str], AlarmGroup] = {}
    for alarm in alarms:
        if RANK[alarm.highest_level] >= RANK[below]:
            continue
        g = groups.get((alarm.source, alarm.type))
        if g is None:
            g = groups[(alarm.source, alarm.type)] = AlarmGroup(
                source=alarm.source, type=alarm.type, highest_level=alarm.highest_level
            )
        g.count += 1
        g.alarm_ids.append(alarm.id)
        if alarm.machine_id is not None:
            g.machine_ids.append(alarm.machine_id)
        if alarm.camera_id:
            g.camera_ids.append(alarm.camera_id)
        if RANK[alarm.highest_level] > RANK[g.highest_level]:
            g.highest_level = alarm.highest_level
    return sorted(groups.values(), key=lambda g: (-g.count, g.source, g.type))
