"""The ISA-18.2 alarm life cycle as pure functions: dedup, states, audit, floods."""

from __future__ import annotations

import copy
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from msgspec.structs import replace

from factory_mas.levels import RANK
from factory_mas.messages import ALARM_STATES, RETURN_TO_NORMAL, Alarm, Alert
from factory_mas.orchestrator.logic import (
    AlarmConflict,
    Change,
    FloodDetector,
    Key,
    acknowledge,
    apply_alert,
    clear_alarm,
    comment,
    counts,
    flood_groups,
    is_shelved,
    key_of,
    shelve,
    subject_of,
    unshelve,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def alert(
    type: str = "OVERHEAT",
    level: str = "WARNING",
    source: str = "pm_agent",
    machine_id: int | None = 7,
    t: float = 0,
    **kw: object,
) -> Alert:
    return Alert(
        source=source,
        type=type,
        level=level,
        details=f"{type} at {level}",
        machine_id=machine_id,
        timestamp=at(t),
        **kw,
    )


def commit(open_alarms: dict[Key, Alarm], changes: list[Change]) -> dict[Key, Alarm]:
    """What the service does: give raised alarms an id, drop the ones that are closed."""
    out = dict(open_alarms)
    for change in changes:
        alarm = change.alarm
        if alarm.id == 0:
            alarm = replace(alarm, id=next(_ids))
        out[key_of(alarm)] = alarm
        if alarm.state == "CLEARED_ACK":
            del out[key_of(alarm)]
    return out


def audit(change: Change) -> tuple[str, str, datetime]:
    """The audit line of a change as (kind, by, at)."""
    assert change.event is not None
    return change.event.kind, change.event.by, change.event.at


def raised(*alerts: Alert) -> Alarm:
    """The alarm left by feeding `alerts` (all with one key) through apply_alert."""
    open_alarms: dict[Key, Alarm] = {}
    for a in alerts:
        open_alarms = commit(open_alarms, apply_alert(open_alarms, a))
    (alarm,) = open_alarms.values()
    return alarm


def test_key_names_source_type_and_subject() -> None:
    assert key_of(alert()) == ("pm_agent", "OVERHEAT", "machine:7")
    assert key_of(alert("NO_HELMET", machine_id=None, camera_id="cam-1"))[2] == "camera:cam-1"
    assert subject_of(None, None) == subject_of(None, "") == ""


def test_new_key_raises_an_unacknowledged_alarm() -> None:
    a = alert(level="CRITICAL", value=91.5, t=5)
    (change,) = apply_alert({}, a)
    alarm = change.alarm
    assert (alarm.state, alarm.count) == ("ACTIVE_UNACK", 1)
    assert alarm.level == alarm.highest_level == "CRITICAL"
    assert alarm.first_seen == alarm.last_seen == at(5)
    assert (alarm.details, alarm.value, alarm.machine_id) == (a.details, 91.5, 7)
    assert audit(change) == ("raised", "pm_agent", at(5))
    assert change.annunciated and change.plan


def test_same_key_updates_the_one_alarm_instead_of_a_duplicate() -> None:
    first = raised(alert(level="WARNING", t=0))
    open_alarms = {key_of(first): first}
    snapshot = copy.deepcopy(open_alarms)
    (change,) = apply_alert(open_alarms, alert(level="CAUTION", t=120))
    assert open_alarms == snapshot and open_alarms[key_of(first)] is first
    alarm = change.alarm
    assert (alarm.id, alarm.count) == (first.id, 2)
    assert (alarm.level, alarm.highest_level) == ("CAUTION", "WARNING")
    assert (alarm.first_seen, alarm.last_seen) == (at(0), at(120))
    assert change.event is None and not change.annunciated and not change.plan
    # A late alert is counted but does not move last_seen back.
    (late,) = apply_alert({key_of(alarm): alarm}, alert(t=60))
    assert (late.alarm.count, late.alarm.last_seen) == (3, at(120))


@pytest.mark.parametrize(
    "other",
    [alert(machine_id=8), alert("VIBRATION"), alert(source="safety_agent")],
    ids=["machine", "type", "source"],
)
def test_a_different_key_raises_its_own_alarm(other: Alert) -> None:
    first = raised(alert())
    (change,) = apply_alert({key_of(first): first}, other)
    assert audit(change)[0] == "raised" and change.alarm.count == 1


def test_escalation_is_audited_and_planned() -> None:
    first = raised(alert(level="WARNING"))
    (change,) = apply_alert({key_of(first): first}, alert(level="CRITICAL", t=30))
    assert change.alarm.state == "ACTIVE_UNACK"
    assert (change.alarm.level, change.alarm.highest_level) == ("CRITICAL", "CRITICAL")
    assert audit(change) == ("escalated", "pm_agent", at(30)) and change.plan
    assert change.event is not None and change.event.alarm_id == first.id
    assert change.event.detail == "WARNING -> CRITICAL"


def test_acknowledged_alarm_that_escalates_must_be_acknowledged_again() -> None:
    acked = acknowledge(raised(alert(level="WARNING")), "alice", at(10)).alarm
    (same,) = apply_alert({key_of(acked): acked}, alert(level="WARNING", t=20))
    assert same.alarm.state == "ACTIVE_ACK" and same.event is None
    (worse,) = apply_alert({key_of(acked): acked}, alert(level="EMERGENCY", t=20))
    assert worse.alarm.state == "ACTIVE_UNACK" and audit(worse)[0] == "escalated"


def test_cleared_unacknowledged_alarm_is_reactivated_by_a_new_alert() -> None:
    cleared = clear_alarm(raised(alert(level="CRITICAL")), "pm_agent", at(60))
    assert cleared is not None
    alarm = cleared.alarm
    assert (alarm.state, alarm.level, alarm.cleared_at) == ("CLEARED_UNACK", "NORMAL", at(60))
    (change,) = apply_alert({key_of(alarm): alarm}, alert(level="WARNING", t=90))
    new = change.alarm
    assert (new.state, new.count, new.level, new.cleared_at) == ("ACTIVE_UNACK", 2, "WARNING", None)
    assert new.highest_level == "CRITICAL"
    assert audit(change) == ("reactivated", "pm_agent", at(90))
    assert change.annunciated and change.plan


def _plant() -> dict[Key, Alarm]:
    open_alarms: dict[Key, Alarm] = {}
    for a in [
        alert("OVERHEAT"),
        alert("VIBRATION"),
        alert("OVERHEAT", machine_id=8),
        alert("OVERHEAT", source="safety_agent"),
        alert("NO_HELMET", source="ppe_agent", machine_id=None, camera_id="cam-1"),
    ]:
        open_alarms = commit(open_alarms, apply_alert(open_alarms, a))
    key = ("pm_agent", "VIBRATION", "machine:7")
    open_alarms[key] = acknowledge(open_alarms[key], "alice", at(1)).alarm
    return open_alarms


def test_return_to_normal_clears_every_alarm_of_its_source_on_its_subject() -> None:
    open_alarms = _plant()
    snapshot = copy.deepcopy(open_alarms)
    changes = apply_alert(open_alarms, alert(RETURN_TO_NORMAL, level="NORMAL", t=300))
    assert open_alarms == snapshot
    states = {key_of(c.alarm): c.alarm.state for c in changes}
    assert states == {
        ("pm_agent", "OVERHEAT", "machine:7"): "CLEARED_UNACK",
        ("pm_agent", "VIBRATION", "machine:7"): "CLEARED_ACK",
    }
    for c in changes:
        assert (c.alarm.level, c.alarm.cleared_at) == ("NORMAL", at(300))
        assert audit(c) == ("cleared", "pm_agent", at(300))
    after = commit(open_alarms, changes)
    assert ("pm_agent", "VIBRATION", "machine:7") not in after  # cleared and acked: closed
    assert len(after) == 4


def test_normal_alert_of_one_type_clears_only_that_type() -> None:
    changes = apply_alert(_plant(), alert("OVERHEAT", level="NORMAL"))
    assert [key_of(c.alarm) for c in changes] == [("pm_agent", "OVERHEAT", "machine:7")]


def test_camera_alarms_clear_on_their_camera_only() -> None:
    rtn = alert(RETURN_TO_NORMAL, "NORMAL", "ppe_agent", machine_id=None, camera_id="cam-2")
    assert apply_alert(_plant(), rtn) == []
    (change,) = apply_alert(_plant(), replace(rtn, camera_id="cam-1"))
    assert key_of(change.alarm) == ("ppe_agent", "NO_HELMET", "camera:cam-1")


def test_clearing_a_cleared_alarm_does_nothing() -> None:
    cleared = clear_alarm(raised(alert()), "pm_agent", at(60))
    assert cleared is not None
    alarm = cleared.alarm
    assert apply_alert({key_of(alarm): alarm}, alert(level="NORMAL", t=90)) == []
    assert clear_alarm(alarm, "pm_agent", at(90)) is None
    assert apply_alert({}, alert(RETURN_TO_NORMAL, level="NORMAL")) == []


@pytest.mark.parametrize(
    ("before", "after"), [("ACTIVE_UNACK", "ACTIVE_ACK"), ("CLEARED_UNACK", "CLEARED_ACK")]
)
def test_acknowledge(before: str, after: str) -> None:
    alarm = replace(raised(alert()), state=before)
    change = acknowledge(alarm, "alice", at(30), note="checked the bearing")
    assert change.alarm.state == after
    assert (change.alarm.acked_by, change.alarm.acked_at) == ("alice", at(30))
    assert audit(change) == ("acked", "alice", at(30))
    assert change.event is not None
    assert (change.event.state, change.event.detail) == (after, "checked the bearing")


@pytest.mark.parametrize("state", ["ACTIVE_ACK", "CLEARED_ACK"])
def test_acknowledging_twice_is_a_conflict_naming_the_alarm(state: str) -> None:
    alarm = replace(raised(alert()), id=42, state=state, acked_by="alice", acked_at=at(1))
    with pytest.raises(AlarmConflict, match=r"alarm 42 .*already acknowledged by alice"):
        acknowledge(alarm, "bob", at(2))


def test_shelve_for_a_while_then_it_unshelves_itself() -> None:
    alarm = raised(alert())
    change = shelve(alarm, "bob", at(10), until=at(3600), reason="sensor swap")
    shelved = change.alarm
    assert (shelved.shelved_until, shelved.shelved_by) == (at(3600), "bob")
    assert audit(change) == ("shelved", "bob", at(10)) and change.event is not None
    assert at(3600).isoformat() in change.event.detail and "sensor swap" in change.event.detail
    assert is_shelved(shelved, at(3599)) and not is_shelved(shelved, at(3600))
    assert counts([shelved], at(3599))["shelved"] == 1
    assert counts([shelved], at(3600))["shelved"] == 0

    back = unshelve(shelved, "system", at(3600), "expired")
    assert (back.alarm.shelved_until, back.alarm.shelved_by) == (None, None)
    assert audit(back) == ("unshelved", "system", at(3600))
    with pytest.raises(AlarmConflict, match=f"alarm {alarm.id} is not shelved"):
        unshelve(back.alarm, "bob", at(3601))


def test_closed_alarm_cannot_be_shelved() -> None:
    closed = replace(raised(alert()), id=9, state="CLEARED_ACK")
    with pytest.raises(AlarmConflict, match="alarm 9 is CLEARED_ACK"):
        shelve(closed, "bob", at(0), until=at(60))


def test_comments_append_and_are_audited() -> None:
    one = comment(raised(alert()), "alice", at(1), "called maintenance").alarm
    change = comment(one, "bob", at(2), "bearing ordered")
    assert [(c.by, c.at, c.text) for c in change.alarm.comments] == [
        ("alice", at(1), "called maintenance"),
        ("bob", at(2), "bearing ordered"),
    ]
    assert audit(change) == ("comment", "bob", at(2))
    assert change.event is not None and change.event.detail == "bearing ordered"


OPERATIONS: dict[str, Callable[[Alarm], object]] = {
    "update": lambda a: apply_alert({key_of(a): a}, alert(level="EMERGENCY", t=50)),
    "clear": lambda a: apply_alert({key_of(a): a}, alert(RETURN_TO_NORMAL, "NORMAL", t=50)),
    "acknowledge": lambda a: acknowledge(a, "bob", at(50)),
    "shelve": lambda a: shelve(a, "bob", at(50), until=at(500)),
    "comment": lambda a: comment(a, "bob", at(50), "more"),
    "counts": lambda a: counts([a], at(50)),
    "flood_groups": lambda a: flood_groups([a], "EMERGENCY"),
}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_inputs_are_never_mutated(operation: str) -> None:
    alarm = comment(raised(alert()), "alice", at(1), "first").alarm
    snapshot = copy.deepcopy(alarm)
    OPERATIONS[operation](alarm)
    assert alarm == snapshot


def test_counts_by_state_level_and_shelved() -> None:
    base = raised(alert())
    alarms = [
        base,
        replace(base, state="ACTIVE_ACK", highest_level="CRITICAL"),
        replace(base, state="CLEARED_UNACK", level="NORMAL", shelved_until=at(100)),
        replace(base, highest_level="EMERGENCY", shelved_until=at(10)),
    ]
    result = counts(alarms, at(50))
    assert (result["open"], result["shelved"]) == (4, 1)
    assert dict(result["by_state"]) == {
        "ACTIVE_UNACK": 2,
        "ACTIVE_ACK": 1,
        "CLEARED_UNACK": 1,
        "CLEARED_ACK": 0,
    }
    # Active alarms by their current level: they add up to "active".
    assert dict(result["by_level"]) == {"CAUTION": 0, "WARNING": 3, "CRITICAL": 0, "EMERGENCY": 0}
    assert (result["active"], result["unacknowledged"]) == (3, 3)
    assert sum(result["by_level"].values()) == result["active"]


def test_flood_starts_above_ten_in_ten_minutes() -> None:
    flood = FloodDetector(threshold=10, window_s=600, end_below=5)
    for i in range(10):
        flood.note(i * 10)
        assert flood.update(i * 10) is None
    assert not flood.active
    flood.note(100)
    assert flood.update(100) is True and flood.active
    flood.note(110)
    assert flood.update(110) is None and flood.active


def test_flood_ends_below_five_with_hysteresis() -> None:
    flood = FloodDetector(threshold=10, window_s=600, end_below=5)
    for i in range(11):
        flood.note(i * 10)  # t = 0, 10, ..., 100
    assert flood.update(100) is True
    # At now = 600 + t the note at t has left the window; 6 and 5 left keep the flood on.
    assert flood.update(640) is None and flood.in_window(640) == 6
    assert flood.update(650) is None and flood.in_window(650) == 5 and flood.active
    assert flood.update(660) is False and flood.in_window(660) == 4
    assert not flood.active and flood.update(670) is None


def test_notes_older_than_the_window_do_not_start_a_flood() -> None:
    flood = FloodDetector(threshold=10, window_s=600, end_below=5)
    for t in [0, *range(601, 611)]:
        flood.note(t)
    assert flood.update(610) is None and flood.in_window(610) == 10


def test_flood_groups_low_priority_alarms_per_source_and_type() -> None:
    base = raised(alert())
    alarms = [
        replace(base, id=m, source="energy_agent", type="POWER_ANOMALY", machine_id=m,
                highest_level=level)
        for m, level in [(1, "CAUTION"), (2, "WARNING"), (3, "CAUTION")]
    ] + [
        replace(base, id=4, source="energy_agent", type="POWER_ANOMALY", machine_id=4,
                highest_level="CRITICAL"),
        replace(base, id=5, highest_level="EMERGENCY"),
        replace(base, id=6, source="ppe_agent", type="NO_HELMET", machine_id=None,
                camera_id="cam-1", highest_level="CAUTION"),
        replace(base, id=7, source="ppe_agent", type="NO_HELMET", machine_id=None,
                camera_id="cam-2", highest_level="WARNING"),
        replace(base, id=8, source="cyber_agent", type="DDOS_RISK", highest_level="CAUTION"),
    ]  # fmt: skip
    groups = flood_groups(alarms, "CRITICAL")
    assert [(g.source, g.type, g.count, g.highest_level) for g in groups] == [
        ("energy_agent", "POWER_ANOMALY", 3, "WARNING"),
        ("ppe_agent", "NO_HELMET", 2, "WARNING"),
        ("cyber_agent", "DDOS_RISK", 1, "CAUTION"),
    ]
    assert (groups[0].machine_ids, groups[0].camera_ids) == ([1, 2, 3], [])
    assert (groups[1].machine_ids, groups[1].camera_ids) == ([], ["cam-1", "cam-2"])
    assert (groups[0].alarm_ids, groups[1].alarm_ids) == ([1, 2, 3], [6, 7])
    assert flood_groups(alarms, "CAUTION") == []


@dataclass
class Expected:
    """The reference model of one open alarm."""

    active: bool
    acked: bool
    count: int
    highest: str
    first: datetime
    last: datetime

    @property
    def state(self) -> str:
        return ("ACTIVE_" if self.active else "CLEARED_") + ("ACK" if self.acked else "UNACK")


def _expect_alert(model: dict[Key, Expected], a: Alert) -> None:
    m = model.get(key_of(a))
    if m is None:
        model[key_of(a)] = Expected(True, False, 1, a.level, a.timestamp, a.timestamp)
        return
    escalated = RANK[a.level] > RANK[m.highest]
    if not m.active or (escalated and m.acked):
        m.acked = False
    m.active, m.count, m.last = True, m.count + 1, a.timestamp
    m.highest = a.level if escalated else m.highest


def _expect_normal(model: dict[Key, Expected], a: Alert) -> None:
    for k, m in list(model.items()):
        if k[0] == a.source and k[2] == key_of(a)[2] and a.type in (RETURN_TO_NORMAL, k[1]):
            if m.active and m.acked:
                del model[k]
            m.active = False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_life_cycles_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    levels = ["CAUTION", "WARNING", "CRITICAL", "EMERGENCY"]
    open_alarms: dict[Key, Alarm] = {}
    model: dict[Key, Expected] = {}
    kinds: Counter[str] = Counter()
    t = 0.0
    for _ in range(3000):
        t += rng.choice([0, 1, 30])
        source, machine = rng.choice(["pm_agent", "energy_agent"]), rng.choice([1, 2])
        roll = rng.random()
        if roll < 0.55:
            a = alert(rng.choice("AB"), rng.choice(levels), source, machine, t)
            _expect_alert(model, a)
            changes = apply_alert(open_alarms, a)
        elif roll < 0.8:
            a = alert(RETURN_TO_NORMAL if roll < 0.65 else rng.choice("AB"), "NORMAL", source,
                      machine, t)  # fmt: skip
            _expect_normal(model, a)
            changes = apply_alert(open_alarms, a)
        elif open_alarms:
            k = rng.choice(sorted(open_alarms))
            if model[k].acked:
                with pytest.raises(AlarmConflict, match=f"alarm {open_alarms[k].id} "):
                    acknowledge(open_alarms[k], "op", at(t))
                kinds["conflict"] += 1
                continue
            model[k].acked = True
            if not model[k].active:
                del model[k]
            changes = [acknowledge(open_alarms[k], "op", at(t))]
        else:
            continue

        for c in changes:
            if c.event is None:
                assert c.alarm.state in ("ACTIVE_UNACK", "ACTIVE_ACK")
                continue
            kinds[c.event.kind] += 1
            if c.event.kind == "raised":
                assert key_of(c.alarm) not in open_alarms
            else:
                assert c.alarm.id == c.event.alarm_id == open_alarms[key_of(c.alarm)].id
            assert c.event.state == c.alarm.state
        open_alarms = commit(open_alarms, changes)

        assert set(open_alarms) == set(model)  # at most one open alarm per key
        assert len({a.id for a in open_alarms.values()}) == len(open_alarms)
        for k, alarm in open_alarms.items():
            m = model[k]
            assert alarm.state in ALARM_STATES and alarm.state == m.state
            assert (key_of(alarm), alarm.count, alarm.highest_level) == (k, m.count, m.highest)
            assert (alarm.first_seen, alarm.last_seen) == (m.first, m.last)
            if m.active:
                assert RANK[alarm.highest_level] >= RANK[alarm.level] > RANK["NORMAL"]
                assert alarm.cleared_at is None
            else:
                assert alarm.level == "NORMAL" and alarm.cleared_at is not None
    # The walk went through every transition, not just the easy ones.
    assert set(kinds) == {"raised", "escalated", "reactivated", "cleared", "acked", "conflict"}
