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

from ..labels.model import Label
from ..levels import LEVELS, RANK, Level
from ..messages import (
    ALARM_STATES,
    RETURN_TO_NORMAL,
    Alarm,
    AlarmComment,
    AlarmEvent,
    AlarmState,
    Alert,
)

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
    # Alarm feedback: the label it keeps for training, committed with the change.
    label: Label | None = None


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
    cleared (an acknowledged alarm that escalates must be seen again). A shelved alarm
    that returns is recorded but not annunciated: shelving is for exactly that."""
    escalated = RANK[alert.level] > RANK[alarm.highest_level]
    reactivated = alarm.state == "CLEARED_UNACK"
    shelved = is_shelved(alarm, alert.timestamp)
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
        activations=alarm.activations + reactivated,
    )
    if reactivated and shelved:
        kind, detail = "reactivated_shelved", f"returned at {alert.level} while shelved"
    elif reactivated:
        kind, detail = "reactivated", f"returned at {alert.level}"
    elif escalated:
        kind, detail = "escalated", f"{alarm.highest_level} -> {alert.level}"
    else:
        return Change(new, None)
    event = _event(new, kind, alert.source, alert.timestamp, detail)
    annunciated = reactivated and not shelved
    return Change(new, event, annunciated=annunciated, plan=annunciated or escalated)


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


def feedback(alarm: Alarm, by: str, at: datetime, verdict: str, text: str = "") -> Change:
    """An operator's verdict on an alarm, at any time in its life: the alarm shows the
    latest, the audit trail each one, and a label keeps it for training and for the record
    of nuisance alarms. The label starts when the alarm was raised: that is the moment the
    models' output is judged at."""
    new = replace(alarm, feedback=verdict)
    label = Label(
        kind="alarm_feedback",
        machine_id=alarm.machine_id,
        start=alarm.first_seen,
        detail=verdict,
        alarm_id=alarm.id,
        source=alarm.source,
        comment=text,
        by=by,
    )
    detail = verdict + (f": {text}" if text else "")
    # Not model.checked: the alarm's own machine and source are kept as they are, even
    # outside the range people may type (an outside alert may name any machine).
    return Change(new, _event(new, "feedback", by, at, detail), label=label)


def counts(alarms: Iterable[Alarm], now: datetime) -> dict[str, object]:
    """The one set of alarm counts that system-state, /metrics, SCADA and the dashboard
    show, so they agree:

    - open: not yet both cleared and acknowledged (what the alarm list holds);
    - active: the condition is still there (ACTIVE_UNACK + ACTIVE_ACK);
    - unacknowledged: nobody has acknowledged it yet (ACTIVE_UNACK + CLEARED_UNACK);
    - by_level: the active alarms by their current level, so they add up to `active`;
    - shelved: open alarms shelved now (they stay in the other counts too).
    """
    by_state = Counter({state: 0 for state in ALARM_STATES})
    by_level: Counter[Level] = Counter({level: 0 for level in LEVELS if level != "NORMAL"})
    shelved = total = 0
    for alarm in alarms:
        total += 1
        by_state[alarm.state] += 1
        if alarm.state in ACTIVE_STATES:
            # An active alarm's level is never NORMAL; its latest alert set it.
            by_level[alarm.level if alarm.level != "NORMAL" else alarm.highest_level] += 1
        shelved += is_shelved(alarm, now)
    return {
        "open": total,
        "active": by_state["ACTIVE_UNACK"] + by_state["ACTIVE_ACK"],
        "unacknowledged": by_state["ACTIVE_UNACK"] + by_state["CLEARED_UNACK"],
        "shelved": shelved,
        "by_state": by_state,
        "by_level": by_level,
    }


class FloodDetector:
    """Counts activations (ISA-18.2: new alarms and alarms that returned) in a sliding
    window. A flood starts above `threshold` and ends below `end_below`; the gap between
    the two keeps it from flickering."""

    def __init__(self, threshold: int, window_s: float, end_below: int) -> None:
        self.threshold, self.window_s, self.end_below = threshold, window_s, end_below
        self._times: deque[tuple[float, bool]] = deque()  # (when, a new alarm)
        self.since: float | None = None

    @property
    def active(self) -> bool:
        return self.since is not None

    def in_window(self, now: float) -> int:
        while self._times and self._times[0][0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)

    def breakdown(self, now: float) -> tuple[int, int]:
        """(new, returned) activations in the window."""
        total = self.in_window(now)
        new = sum(is_new for _, is_new in self._times)
        return new, total - new

    def note(self, at: float, new: bool = True) -> None:
        self._times.append((at, new))

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


class ActivationWindow:
    """Activation times per key over the last `window_s` (record time). Keyed by alarm,
    an alarm that activates `count` times within it chatters (ISA-18.2 / EEMUA 191);
    keyed by source and type, `count` alarms at once have a common cause."""

    def __init__(self, count: int, window_s: float) -> None:
        self.count, self.window_s = count, window_s
        self._times: dict[Key, deque[tuple[float, str]]] = {}

    def note(self, key: Key, at: float, who: str = "") -> int:
        """Record one activation (of `who`, when the key is shared); returns how many the
        key had within the window. The same activation noted again (a batch retried after
        a store failure) counts once."""
        times = self._times.setdefault(key, deque())
        if (at, who) not in times:
            times.append((at, who))
        while times and times[0][0] <= at - self.window_s:
            times.popleft()
        return len(times)

    def others(self, key: Key, who: str) -> int:
        """How many others than `who` activated under the key within the window (as of
        the last note): a chattering alarm alone is no common cause."""
        return len({w for _, w in self._times.get(key, ())} - {who})

    def prune(self, now: float) -> None:
        """Forget keys quiet for a whole window: memory stays bounded by the busy ones."""
        stale = [k for k, t in self._times.items() if not t or t[-1][0] <= now - self.window_s]
        for key in stale:
            del self._times[key]


def as_grouped(change: Change) -> Change:
    """An activation that belongs to a common-cause group: the alarm is raised (or
    returns) as usual, listed and audited, but its group alarm is what is annunciated and
    planned for."""
    assert change.event is not None
    alarm = replace(change.alarm, grouped=True)
    event = replace(change.event, kind=f"{change.event.kind}_grouped")
    return Change(alarm, event, annunciated=False, plan=False)


def as_suppressed(change: Change, by: Alarm) -> Change:
    """An activation that a related active alarm on the same machine already annunciates
    (designed suppression): raised as usual, listed and audited, but silent."""
    assert change.event is not None
    alarm = replace(change.alarm, suppressed_by=by.id)
    detail = f"{by.source} {by.type} (alarm {by.id}) is active on the same subject"
    event = replace(change.event, kind=f"{change.event.kind}_suppressed", detail=detail)
    return Change(alarm, event, annunciated=False, plan=False)


def suppressor(working: dict[Key, Alarm], alarm: Alarm, by: list[str]) -> Alarm | None:
    """The active alarm among `by` ("source/type") on `alarm`'s subject, if any."""
    subject = key_of(alarm)[2]
    for name in by:
        source, _, kind = name.partition("/")
        other = working.get((source, kind, subject))
        if other is not None and other.state in ACTIVE_STATES:
            return other
    return None


def group_alert(alert: Alert, members: list[Alarm]) -> Alert:
    """The alert for the group alarm of `alert`'s source and type, on behalf of the
    active `members` (each a machine or camera)."""
    names = sorted(subject_of(a.machine_id, a.camera_id).partition(":")[2] for a in members)
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    return Alert(
        source=alert.source,
        type=alert.type,
        level=max((a.level for a in members), key=RANK.__getitem__, default=alert.level),
        details=(
            f"{alert.type} on {len(members)} machines or cameras at once, likely one common "
            f"cause: {shown}. Their own alarms are listed without sounding."
        ),
        value=float(len(members)),
        timestamp=alert.timestamp,
    )


def mark_chattering(alarm: Alarm, at: datetime, activations: int, window_s: float) -> Change:
    new = replace(alarm, chattering=True)
    detail = f"{activations} activations within {window_s:g} s"
    return Change(new, _event(new, "chattering", "system", at, detail))


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
