"""Planner rules: playbook lookup, correlation on one subject, priority rules, dedup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from factory_mas.messages import Alarm, Alert
from factory_mas.planner.logic import (
    alarm_from_alert,
    alarms_from_alerts,
    correlated,
    make_plan,
    signature,
)
from factory_mas.settings import PlannerSettings, Playbook

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
SETTINGS = PlannerSettings()


def alarm(
    id: int,
    type: str,
    level: str = "WARNING",
    source: str = "agent",
    machine_id: int | None = 7,
    camera_id: str | None = None,
    state: str = "ACTIVE_UNACK",
    seen: datetime = T0,
    count: int = 1,
    **kw: object,
) -> Alarm:
    return Alarm(
        id=id,
        source=source,
        type=type,
        state=state,
        level=level,
        highest_level=level,
        count=count,
        first_seen=seen,
        last_seen=seen,
        details="",
        machine_id=machine_id,
        camera_id=camera_id,
        **kw,
    )


@pytest.mark.parametrize(
    ("type", "source", "action", "priority"),
    [
        ("PPE_VIOLATION", "ppe_agent", "stop_machine", 1),
        ("FIRE_RISK", "safety_agent", "evacuate_area", 1),
        ("ELECTRICAL_HAZARD", "safety_agent", "isolate_power", 1),
        ("MECHANICAL_HAZARD", "safety_agent", "stop_machine", 2),
        ("IMMINENT_FAILURE", "pm_agent", "stop_machine", 2),
        ("DDOS_RISK", "cyber_agent", "isolate_network_segment", 2),
        ("NETWORK_DEGRADATION", "cyber_agent", "inspect_network", 3),
        ("LOW_RUL", "pm_agent", "schedule_maintenance", 3),
        ("POWER_ANOMALY", "energy_agent", "adjust_power_profile", 4),
        ("IDLE_WASTE", "energy_agent", "adjust_power_profile", 4),
        ("SOMETHING_NEW", "custom", "log", 5),
    ],
)
def test_one_alarm_gets_its_playbook(type: str, source: str, action: str, priority: int) -> None:
    plan = make_plan([alarm(1, type, source=source, count=3)], SETTINGS)
    book = SETTINGS.playbooks.get(type, SETTINGS.fallback)
    assert (plan.action, plan.priority, plan.steps) == (action, priority, book.steps)
    assert plan.machine_id == 7 and plan.camera_id is None
    for word in (source, type, "WARNING", "3 times", "machine 7"):
        assert word in plan.rationale
    assert ("fallback" in plan.rationale) == (type == "SOMETHING_NEW")


def test_camera_alarm_plan_names_the_camera() -> None:
    plan = make_plan([alarm(1, "PPE_VIOLATION", machine_id=None, camera_id="cam-2")], SETTINGS)
    assert plan.camera_id == "cam-2" and plan.machine_id is None
    assert "camera cam-2" in plan.rationale


def test_playbooks_come_from_settings() -> None:
    custom = msgspec.structs.replace(
        SETTINGS,
        playbooks={"LOW_RUL": Playbook(action="call_vendor", priority=2, steps=["Call"])},
        fallback=Playbook(action="ignore", priority=5, steps=[]),
    )
    assert make_plan([alarm(1, "LOW_RUL")], custom).action == "call_vendor"
    assert make_plan([alarm(1, "POWER_ANOMALY")], custom).action == "ignore"


def test_hazard_and_failure_on_one_machine_make_one_raised_plan() -> None:
    hazard = alarm(1, "MECHANICAL_HAZARD", "CRITICAL", "safety_agent")
    failure = alarm(2, "LOW_RUL", "WARNING", "pm_agent", seen=T0 - timedelta(minutes=5))
    group = correlated(hazard, [failure, hazard], SETTINGS.correlation_window_s)
    assert [a.id for a in group] == [1, 2]
    plan = make_plan(group, SETTINGS)
    # MECHANICAL_HAZARD (2) leads; correlation raises it to 1.
    assert plan.action == "stop_machine" and plan.priority == 1
    hazard_steps = SETTINGS.playbooks["MECHANICAL_HAZARD"].steps
    rul_steps = SETTINGS.playbooks["LOW_RUL"].steps
    assert plan.steps == hazard_steps + rul_steps
    for evidence in ("safety_agent MECHANICAL_HAZARD at CRITICAL", "pm_agent LOW_RUL at WARNING"):
        assert evidence in plan.rationale
    assert "raised from 2 to 1 for correlation" in plan.rationale
    assert plan.machine_id == 7


def test_lead_is_the_most_urgent_playbook_not_the_trigger() -> None:
    plan = make_plan(
        [alarm(1, "POWER_ANOMALY", source="energy_agent"), alarm(2, "DDOS_RISK", source="cyber")],
        SETTINGS,
    )
    assert plan.action == "isolate_network_segment" and plan.priority == 1
    assert plan.steps[0] == SETTINGS.playbooks["DDOS_RISK"].steps[0]
    assert plan.steps[-1] == SETTINGS.playbooks["POWER_ANOMALY"].steps[-1]


def test_two_alarms_of_one_source_are_one_view_and_raise_nothing() -> None:
    # pm's LOW_RUL and IMMINENT_FAILURE are the same model's view of the same wear.
    plan = make_plan(
        [
            alarm(1, "IMMINENT_FAILURE", "WARNING", source="pm_agent"),
            alarm(2, "LOW_RUL", "WARNING", source="pm_agent"),
        ],
        SETTINGS,
    )
    assert plan.action == "stop_machine" and plan.priority == 2
    assert "correlation" not in plan.rationale


def test_priority_tie_goes_to_the_worse_level() -> None:
    # Both playbooks have priority 2 and stop_machine vs isolate_network_segment.
    plan = make_plan(
        [alarm(1, "DDOS_RISK", "WARNING"), alarm(2, "IMMINENT_FAILURE", "CRITICAL")], SETTINGS
    )
    assert plan.action == "stop_machine"


def test_shared_steps_are_not_repeated() -> None:
    settings = msgspec.structs.replace(
        SETTINGS,
        playbooks={
            "A": Playbook(action="a", priority=3, steps=["Stop", "Inspect"]),
            "B": Playbook(action="b", priority=4, steps=["Inspect", "Report"]),
        },
    )
    plan = make_plan([alarm(1, "B"), alarm(2, "A")], settings)
    assert plan.steps == ["Stop", "Inspect", "Report"]


def test_priority_never_below_one() -> None:
    plan = make_plan(
        [alarm(1, "PPE_VIOLATION", "EMERGENCY"), alarm(2, "FIRE_RISK", "EMERGENCY")], SETTINGS
    )
    assert plan.priority == 1
    assert "raised" not in plan.rationale


def test_same_type_twice_is_not_correlation() -> None:
    # Two cameras' worth of one kind of evidence on one machine is still one kind.
    a, b = alarm(1, "LOW_RUL"), alarm(2, "LOW_RUL")
    assert make_plan([a, b], SETTINGS).priority == 3


@pytest.mark.parametrize(
    ("type", "level", "priority"),
    [
        ("SOMETHING_NEW", "EMERGENCY", 2),
        ("SOMETHING_NEW", "CRITICAL", 3),
        ("SOMETHING_NEW", "WARNING", 5),
        ("POWER_ANOMALY", "CRITICAL", 3),
        ("PPE_VIOLATION", "CAUTION", 1),
    ],
)
def test_level_caps_priority(type: str, level: str, priority: int) -> None:
    plan = make_plan([alarm(1, type, level)], SETTINGS)
    assert plan.priority == priority
    assert (f"for the {level} level" in plan.rationale) == (priority in (2, 3))


def test_correlation_and_level_cap_combine() -> None:
    # LOW_RUL (3) raised to 2 by correlation; EMERGENCY would cap at 2 anyway.
    plan = make_plan(
        [alarm(1, "LOW_RUL", "EMERGENCY"), alarm(2, "SOMETHING_NEW", "CAUTION")], SETTINGS
    )
    assert plan.priority == 2


@pytest.mark.parametrize(
    "other",
    [
        alarm(2, "LOW_RUL", machine_id=8),
        alarm(2, "LOW_RUL", seen=T0 - timedelta(seconds=601)),
        alarm(2, "LOW_RUL", seen=T0 + timedelta(seconds=601)),
        alarm(2, "LOW_RUL", state="CLEARED_UNACK"),
        alarm(2, "LOW_RUL", state="CLEARED_ACK"),
        alarm(2, "LOW_RUL", shelved_until=T0 + timedelta(hours=1)),
        alarm(2, "LOW_RUL", machine_id=None, camera_id="cam-1"),
    ],
    ids=[
        "other machine",
        "before window",
        "after window",
        "cleared",
        "cleared acked",
        "shelved",
        "camera only",
    ],
)
def test_unrelated_alarms_are_not_correlated(other: Alarm) -> None:
    trigger = alarm(1, "MECHANICAL_HAZARD")
    assert correlated(trigger, [other], 600) == [trigger]


@pytest.mark.parametrize(
    "other",
    [
        alarm(2, "LOW_RUL", state="ACTIVE_ACK"),
        alarm(2, "LOW_RUL", seen=T0 - timedelta(seconds=600)),
        alarm(2, "LOW_RUL", shelved_until=T0 - timedelta(seconds=1)),
        alarm(2, "LOW_RUL", camera_id="cam-9"),
    ],
    ids=["acked", "window edge", "shelving expired", "machine with a camera"],
)
def test_related_alarms_are_correlated(other: Alarm) -> None:
    trigger = alarm(1, "MECHANICAL_HAZARD")
    assert [a.id for a in correlated(trigger, [other], 600)] == [1, 2]


def test_camera_trigger_correlates_by_camera() -> None:
    trigger = alarm(1, "PPE_VIOLATION", machine_id=None, camera_id="cam-1")
    same = alarm(2, "X", machine_id=None, camera_id="cam-1")
    other = alarm(3, "X", machine_id=None, camera_id="cam-2")
    assert [a.id for a in correlated(trigger, [other, same], 600)] == [1, 2]


def test_alarm_without_subject_correlates_only_with_itself() -> None:
    trigger = alarm(1, "X", machine_id=None)
    assert correlated(trigger, [alarm(2, "Y", machine_id=None), trigger], 600) == [trigger]


def test_correlated_order_is_deterministic() -> None:
    trigger = alarm(5, "LOW_RUL")
    others = [alarm(9, "A", "WARNING"), alarm(3, "B", "CRITICAL"), alarm(4, "C", "WARNING")]
    for candidates in (others, others[::-1], [*others, others[0]]):
        assert [a.id for a in correlated(trigger, candidates, 600)] == [5, 3, 4, 9]


def test_repeated_evidence_has_the_same_signature() -> None:
    first = correlated(alarm(1, "MECHANICAL_HAZARD"), [alarm(2, "LOW_RUL")], 600)
    # The same alarms again, seen more often since: nothing new for the operator.
    again = correlated(
        alarm(1, "MECHANICAL_HAZARD", count=5, seen=T0 + timedelta(seconds=30)),
        [alarm(2, "LOW_RUL", count=2, seen=T0 + timedelta(seconds=20))],
        600,
    )
    sig = signature(make_plan(first, SETTINGS), [a.id for a in first])
    assert signature(make_plan(again, SETTINGS), [a.id for a in again]) == sig
    assert len({sig, sig}) == 1  # hashable

    escalated = [alarm(1, "LOW_RUL", "EMERGENCY")]
    calm = [alarm(1, "LOW_RUL", "WARNING")]
    assert signature(make_plan(escalated, SETTINGS), [1]) != signature(
        make_plan(calm, SETTINGS), [1]
    )
    joined = [*first, alarm(3, "POWER_ANOMALY")]
    assert signature(make_plan(joined, SETTINGS), [1, 2, 3]) != sig


def test_alarm_from_alert() -> None:
    alert = Alert(
        source="pm_agent",
        type="LOW_RUL",
        level="CRITICAL",
        details="RUL 20 h",
        machine_id=3,
        value=20.0,
        timestamp=datetime(2025, 1, 1),  # zone-less: read as UTC
    )
    a = alarm_from_alert(alert, 4)
    assert (a.id, a.state, a.count, a.level, a.highest_level) == (
        4,
        "ACTIVE_UNACK",
        1,
        "CRITICAL",
        "CRITICAL",
    )
    assert a.first_seen == a.last_seen == datetime(2025, 1, 1, tzinfo=UTC)
    assert (a.machine_id, a.value, a.details) == (3, 20.0, "RUL 20 h")


def test_repeated_alerts_fold_into_one_alarm() -> None:
    def alert(level: str, minute: int, machine_id: int = 7) -> Alert:
        return Alert(
            source="pm_agent",
            type="LOW_RUL",
            level=level,
            details=f"minute {minute}",
            machine_id=machine_id,
            timestamp=T0 + timedelta(minutes=minute),
        )

    folded = alarms_from_alerts(
        [alert("WARNING", 1), alert("CRITICAL", 0), alert("WARNING", 2, 8), alert("CAUTION", 3)]
    )
    (a, a_idx), (b, b_idx) = folded
    assert (a.id, a.count, a_idx) == (1, 3, [0, 1, 3])
    assert (a.level, a.highest_level, a.details) == ("CAUTION", "CRITICAL", "minute 3")
    assert (a.first_seen, a.last_seen) == (T0, T0 + timedelta(minutes=3))
    assert (b.id, b.machine_id, b_idx) == (2, 8, [2])
