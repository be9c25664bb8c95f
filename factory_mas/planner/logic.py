"""Planner rules as pure functions: which alarms belong together, and what to do about them.

No I/O and no clock: the trigger alarm's last_seen is "now", so the orchestrator, the HTTP
route and the tests all get the same answer for the same alarms.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..levels import RANK, Level, worst
from ..messages import Alarm, Alert, Plan
from ..settings import PlannerSettings, Playbook

ACTIVE_STATES = frozenset({"ACTIVE_UNACK", "ACTIVE_ACK"})

# A plan is never less urgent than the worst alarm behind it says: an EMERGENCY (a person
# or the machine in immediate danger) is at least priority 2 even when its type only has
# the log fallback, a CRITICAL at least 3. Lower levels keep their playbook's priority.
LEVEL_PRIORITY_CAP: dict[str, int] = {"EMERGENCY": 2, "CRITICAL": 3}


def subject_of(alarm: Alarm) -> tuple[str, Any]:
    """What an alarm is about: its machine, else its camera, else only itself."""
    if alarm.machine_id is not None:
        return ("machine", alarm.machine_id)
    if alarm.camera_id is not None:
        return ("camera", alarm.camera_id)
    return ("alarm", alarm.id)


def describe_subject(alarm: Alarm) -> str:
    kind, key = subject_of(alarm)
    return f"{kind} {key}" if kind != "alarm" else "no machine or camera"


def correlated(trigger: Alarm, candidates: Iterable[Alarm], window_s: float) -> list[Alarm]:
    """The trigger first, then the alarms that are evidence about the same subject.

    A candidate counts when it is on the trigger's machine (or camera, for a trigger without
    a machine), still active, not shelved at the trigger's time, and last seen within
    window_s of the trigger. Shelving is an operator saying "known, leave it aside": a
    shelved nuisance alarm must not raise the priority of others. The rest are ordered
    worst level first, then by id, so the same alarms always give the same plan.
    """
    subject = subject_of(trigger)
    found: dict[int, Alarm] = {}
    for alarm in candidates:
        if alarm.id == trigger.id or subject_of(alarm) != subject:
            continue
        if alarm.state not in ACTIVE_STATES:
            continue
        if alarm.shelved_until is not None and alarm.shelved_until > trigger.last_seen:
            continue
        if abs((alarm.last_seen - trigger.last_seen).total_seconds()) > window_s:
            continue
        found[alarm.id] = alarm
    rest = sorted(found.values(), key=lambda a: (-RANK[a.level], a.id))
    return [trigger, *rest]


def playbook_for(alarm: Alarm, settings: PlannerSettings) -> tuple[str, Playbook]:
    """The alarm's playbook and its name; the fallback's name is "fallback"."""
    playbook = settings.playbooks.get(alarm.type)
    if playbook is None:
        return "fallback", settings.fallback
    return alarm.type, playbook


def _evidence(alarm: Alarm) -> str:
    times = "once" if alarm.count == 1 else f"{alarm.count} times"
    return f"{alarm.source} {alarm.type} at {alarm.level} ({times})"


def make_plan(alarms: Sequence[Alarm], settings: PlannerSettings) -> Plan:
    """One plan for one alarm, or one combined plan for correlated alarms.

    alarms[0] is the trigger: the plan is about its machine or camera. The lead playbook is
    the most urgent one (lowest priority number, then the alarm with the worse level, then
    the earlier alarm); its action and steps come first, the other playbooks' steps follow
    without repeats. Alarms from two or more sources are independent evidence of one
    problem on one machine (a hazard while failure is near), so the priority is raised by
    one step. Two alarms of one source are not (pm's LOW_RUL and IMMINENT_FAILURE are one
    model's view of the same wear), nor are repeats of one alarm. Then LEVEL_PRIORITY_CAP
    applies.
    """
    if not alarms:
        raise ValueError("make_plan needs at least one alarm")
    trigger = alarms[0]
    books = [playbook_for(a, settings) for a in alarms]
    order = sorted(
        range(len(alarms)), key=lambda i: (books[i][1].priority, -RANK[alarms[i].level], i)
    )
    lead_name, lead = books[order[0]]
    steps: list[str] = []
    for i in order:
        steps.extend(s for s in books[i][1].steps if s not in steps)

    reasons: list[str] = []
    priority = lead.priority
    sources = {a.source for a in alarms}
    if len(sources) >= 2 and priority > 1:
        priority -= 1
        reasons.append(
            f"Priority raised from {lead.priority} to {priority} for correlation: "
            f"{len(sources)} independent sources point at the same {subject_of(trigger)[0]}"
        )
    level: Level = worst([a.level for a in alarms])
    cap = LEVEL_PRIORITY_CAP.get(level)
    if cap is not None and priority > cap:
        reasons.append(f"Priority raised from {priority} to {cap} for the {level} level")
        priority = cap

    subject = describe_subject(trigger)
    book = (
        f"playbook {lead_name}"
        if lead_name != "fallback"
        else f"the fallback playbook (no playbook for {alarms[order[0]].type})"
    )
    if len(alarms) == 1:
        head = f"{_evidence(trigger)} on {subject}"
    else:
        head = f"{len(alarms)} correlated alarms on {subject}: " + "; ".join(
            _evidence(a) for a in alarms
        )
    rationale = f"{head}. Led by {book} -> {lead.action} (priority {lead.priority})."
    if reasons:
        rationale += " " + ". ".join(reasons) + "."
    return Plan(
        action=lead.action,
        priority=priority,
        steps=steps,
        rationale=rationale,
        machine_id=trigger.machine_id,
        camera_id=trigger.camera_id,
    )


def signature(plan: Plan, alarm_ids: Iterable[int]) -> Hashable:
    """Equal for plans that would tell the operator nothing new.

    A repeated alert only bumps its alarm's count, so it yields the same alarms and the
    same plan: skipped. A new alarm joining, or a level change moving the priority, is
    news and gives a new signature.
    """
    return (plan.action, plan.priority, plan.machine_id, plan.camera_id, frozenset(alarm_ids))


def _aware(ts: datetime) -> datetime:
    # Alerts posted by hand often carry zone-less timestamps; read them as UTC like the
    # telemetry loader does, so they compare with everything else.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def alarm_from_alert(alert: Alert, alarm_id: int = 0) -> Alarm:
    """A transient, active, unacknowledged alarm standing for one alert."""
    ts = _aware(alert.timestamp)
    return Alarm(
        id=alarm_id,
        source=alert.source,
        type=alert.type,
        state="ACTIVE_UNACK",
        level=alert.level,
        highest_level=alert.level,
        count=1,
        first_seen=ts,
        last_seen=ts,
        details=alert.details,
        machine_id=alert.machine_id,
        camera_id=alert.camera_id,
        value=alert.value,
    )


def alarms_from_alerts(alerts: Sequence[Alert]) -> list[tuple[Alarm, list[int]]]:
    """Transient alarms for a batch of alerts, with the alert indexes behind each.

    Alerts with one (source, type, machine, camera) fold into one alarm, as the
    orchestrator would fold them: count, first/last seen, latest and highest level. Ids
    are 1, 2, ... in order of first appearance.
    """
    out: dict[tuple[Any, ...], tuple[Alarm, list[int]]] = {}
    for i, alert in enumerate(alerts):
        key = (alert.source, alert.type, alert.machine_id, alert.camera_id)
        if key not in out:
            out[key] = (alarm_from_alert(alert, len(out) + 1), [i])
            continue
        alarm, indexes = out[key]
        indexes.append(i)
        ts = _aware(alert.timestamp)
        alarm.count += 1
        alarm.first_seen = min(alarm.first_seen, ts)
        alarm.highest_level = worst([alarm.highest_level, alert.level])
        if ts >= alarm.last_seen:
            alarm.last_seen, alarm.level, alarm.details = ts, alert.level, alert.details
            alarm.value = alert.value
    return list(out.values())
