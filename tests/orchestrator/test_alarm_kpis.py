"""Alarm performance KPIs on a known history (pure), and through the API: chattering
alarms marked and shelved, common-cause groups, counts that agree everywhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from factory_mas.messages import RETURN_TO_NORMAL, Alarm
from factory_mas.orchestrator import records
from factory_mas.orchestrator.kpis import Event, Rules, kpis
from factory_mas.orchestrator.logic import ActivationWindow
from tests.support.app import running_app
from tests.support.orchestrator import act, alarms, alert, post_alert, tuned

T0 = 1_800_000_000.0  # a round start: 10-minute periods begin here
FIRE = ("safety_agent", "FIRE_RISK", "machine:3")
POWER = ("energy_agent", "POWER_ANOMALY", "machine:9")
CAM = ("ppe_agent", "PPE_VIOLATION", "camera:gate")


def history() -> tuple[list[Event], dict[int, tuple[str, str, str]]]:
    """Three 10-minute periods from T0:
    - period 0: alarm 1 (FIRE) raised, acked after 30 s; alarm 2 (POWER) chatters: raised
      and back twice within 40 s; acked 300 s after its last return;
    - period 1: twelve raises of twelve one-off alarms (a flood: more than 10);
    - period 2: alarm 3 (camera) raised, never acked.
    An activation before the window (T0 - 100) is read for context only.
    """
    keys = {1: FIRE, 2: POWER, 3: CAM}
    events = [
        Event(1, T0 - 100, "raised"),  # before `since`: not counted
        Event(1, T0 + 10, "reactivated"),
        Event(1, T0 + 40, "acked"),
        Event(2, T0 + 100, "raised"),
        Event(2, T0 + 120, "reactivated"),
        Event(2, T0 + 140, "reactivated"),
        Event(2, T0 + 440, "acked"),
        Event(3, T0 + 1250, "raised"),
    ]
    for i in range(12):
        keys[10 + i] = ("cyber_agent", "DDOS_RISK", f"machine:{20 + i}")
        events.append(Event(10 + i, T0 + 600 + i * 10, "raised"))
    return events, keys


def test_kpis_on_a_known_history():
    events, keys = history()
    now = datetime.fromtimestamp(T0 + 1800, UTC)
    standing = Alarm(
        id=3,
        source="ppe_agent",
        type="PPE_VIOLATION",
        camera_id="gate",
        state="ACTIVE_UNACK",
        level="CRITICAL",
        highest_level="CRITICAL",
        count=1,
        first_seen=now - timedelta(hours=30),
        last_seen=now,
        details="no helmet",
        shelved_until=now + timedelta(hours=1),
    )
    k = kpis(events, keys, T0, T0 + 1800, [standing], now, Rules())
    assert k["periods"] == 3
    assert (k["activations"], k["new"], k["reactivated"]) == (17, 14, 3)
    assert k["activations_per_period"] == {
        "average": pytest.approx(17 / 3, abs=0.001),
        "peak": 12,
        "peak_at": datetime.fromtimestamp(T0 + 600, UTC).isoformat(),
    }
    assert k["flood"]["periods"] == 1
    assert k["flood"]["pct_of_periods"] == pytest.approx(33.3)
    top = k["top"][0]
    assert (top["source"], top["type"], top["machine_id"], top["activations"]) == (
        "energy_agent",
        "POWER_ANOMALY",
        9,
        3,
    )
    assert len(k["top"]) == 10
    # POWER activated 3 times in 40 s: chattering; FIRE twice in 110 s (one before since) is not.
    assert k["chattering"]["count"] == 1
    assert k["chattering"]["alarms"][0]["machine_id"] == 9
    # Acks: 30 s after FIRE's return, 300 s after POWER's last return.
    assert k["time_to_ack_s"] == {"count": 2, "p50": 30.0, "p90": 300.0}
    assert k["now"]["standing"] == 1
    assert k["now"]["stale"] == 1  # active for 30 h
    assert k["now"]["shelved"] == 1
    assert k["now"]["unacknowledged"] == 1


def test_kpis_of_a_quiet_window_are_zero_not_errors():
    now = datetime.fromtimestamp(T0, UTC)
    k = kpis([], {}, T0 - 600, T0, [], now)
    assert k["activations"] == 0
    assert k["activations_per_period"]["peak_at"] is None
    assert k["time_to_ack_s"] == {"count": 0, "p50": None, "p90": None}
    assert k["flood"]["pct_of_periods"] == 0


def test_a_window_a_sliver_over_whole_periods_is_not_one_period_more():
    now = datetime.fromtimestamp(T0, UTC)
    assert kpis([], {}, T0 - 3600.0004, T0, [], now)["periods"] == 6


def test_activation_window_counts_per_key_once_per_activation():
    w = ActivationWindow(3, 60.0)
    assert w.note(FIRE, 0.0) == 1
    assert w.note(FIRE, 0.0) == 1  # the same activation again (a retried batch)
    assert w.note(FIRE, 30.0) == 2
    assert w.note(POWER, 31.0) == 1
    assert w.note(FIRE, 70.0) == 2  # the one at 0 has left the window
    group = ("cyber_agent", "DDOS_RISK", "")
    assert [w.note(group, 5.0, f"machine:{m}") for m in range(3)] == [1, 2, 3]
    w.note(group, 6.0, "machine:0")  # machine 0 again: still two others than it
    assert (w.others(group, "machine:0"), w.others(group, "machine:9")) == (2, 3)
    w.prune(1000.0)
    assert w.note(FIRE, 1000.0) == 1


# ------------------------------------------------------------------- through the API


async def test_a_chattering_alarm_is_marked_shelved_by_the_system_and_audited(settings):
    async with running_app(settings) as (components, client):
        # Alarm times are the alerts' own: a minute ago, so the KPIs' window (to now) holds them.
        at = datetime.now(UTC) - timedelta(seconds=60)
        body = alert(level="WARNING", type="POWER_ANOMALY", source="energy_agent")
        for i in range(4):
            stamp = (at + timedelta(seconds=10 * i)).isoformat()
            await post_alert(client, {**body, "timestamp": stamp})
            back = {**body, "type": RETURN_TO_NORMAL, "level": "NORMAL", "timestamp": stamp}
            back["timestamp"] = (at + timedelta(seconds=10 * i + 5)).isoformat()
            await post_alert(client, back)
        found = await alarms(client)
        assert len(found) == 1
        alarm = found[0]
        assert alarm["chattering"] is True
        assert alarm["activations"] == 4
        assert alarm["shelved_by"] == "system"
        events = (await client.get(f"/api/orchestrator/alarms/{alarm['id']}")).json()["events"]
        kinds = [e["kind"] for e in events]
        assert kinds.count("chattering") == 1 and "shelved" in kinds
        # Shelved: its fourth return was recorded but not annunciated.
        assert "reactivated_shelved" in kinds
        audit = (await client.get("/api/audit")).json()
        actions = {(e["actor"], e["action"]) for e in audit["events"]}
        assert {("system", "chattering"), ("system", "shelved")} <= actions
        k = (await client.get("/api/orchestrator/kpis")).json()
        assert k["activations"] == 3  # raised + twice back; the shelved return is not one
        assert k["chattering"]["count"] == 1
        assert components.orchestrator.counters["chattering"] == 1


async def test_chattering_critical_alarms_are_marked_but_never_shelved(settings):
    async with running_app(settings) as (_components, client):
        at = datetime.now(UTC)
        for i in range(3):
            stamp = (at + timedelta(seconds=10 * i)).isoformat()
            await post_alert(client, {**alert(), "timestamp": stamp})
            clear = alert(level="NORMAL", type=RETURN_TO_NORMAL)
            clear["timestamp"] = (at + timedelta(seconds=10 * i + 5)).isoformat()
            await post_alert(client, clear)
        (alarm,) = await alarms(client)
        assert alarm["chattering"] is True and alarm["shelved_until"] is None


async def test_many_alarms_of_one_cause_sound_as_one_group_alarm(settings):
    async with running_app(tuned(settings, flood_threshold=5)) as (components, client):
        at = datetime.now(UTC).isoformat()
        body = alert(level="WARNING", type="DDOS_RISK", source="cyber_agent", timestamp=at)
        for machine in range(1, 31):
            await post_alert(client, {**body, "machine_id": machine})
        found = await alarms(client, "?limit=100")
        assert len(found) == 31  # each machine's own alarm is listed, plus the group
        group = [a for a in found if a["machine_id"] is None]
        assert len(group) == 1
        assert "30 machines" in group[0]["details"]
        assert sum(a["grouped"] for a in found) == 28
        k = (await client.get("/api/orchestrator/kpis")).json()
        assert k["activations"] == 3  # two before the group formed, and the group
        state = (await client.get("/api/orchestrator/system-state")).json()
        assert state["flood"]["activations_in_window"] == 3
        assert state["flood"]["active"] is False
        # Acknowledging the group acknowledges its silent members, each audited.
        assert (
            await act(client, group[0]["id"], "ack", by="op", note="segment isolated")
        ).status_code == 200
        after = await alarms(client, "?limit=100")
        assert all(a["state"] == "ACTIVE_ACK" for a in after if a["grouped"])
        assert sum(a["state"] == "ACTIVE_UNACK" for a in after) == 2  # the two that sounded
        member = next(a for a in after if a["grouped"])
        trail = (await client.get(f"/api/orchestrator/alarms/{member['id']}")).json()["events"]
        assert trail[-1]["kind"] == "acked" and trail[-1]["by"] == "op"
        assert f"with group alarm {group[0]['id']}" in trail[-1]["detail"]
        # The group clears with the last of its members.
        clear = {**body, "type": RETURN_TO_NORMAL, "level": "NORMAL"}
        for machine in range(1, 30):
            await post_alert(client, {**clear, "machine_id": machine})
        group_now = components.orchestrator.alarm_by_id(group[0]["id"])
        assert group_now is not None and group_now.state == "ACTIVE_ACK"  # one still on
        await post_alert(client, {**clear, "machine_id": 30})
        group_now = await components.store.read(records.get, group[0]["id"])
        assert group_now is not None and group_now.state == "CLEARED_ACK"  # acked above


async def test_group_min_alarms_0_turns_grouping_off(settings):
    async with running_app(tuned(settings, group_min_alarms=0)) as (_components, client):
        body = alert(level="WARNING", type="DDOS_RISK", source="cyber_agent")
        for machine in range(1, 11):
            await post_alert(client, {**body, "machine_id": machine})
        assert len(await alarms(client)) == 10


async def test_counts_agree_in_system_state_metrics_and_status(settings):
    async with running_app(tuned(settings, group_min_alarms=0)) as (_components, client):
        for machine, level in [(1, "WARNING"), (2, "CRITICAL"), (3, "EMERGENCY")]:
            await post_alert(client, alert(machine_id=machine, level=level))
        # Machine 1 clears (active -> cleared, still open and unacknowledged); 2 is acked.
        await post_alert(client, alert(machine_id=1, level="NORMAL", type=RETURN_TO_NORMAL))
        two = next(a for a in await alarms(client) if a["machine_id"] == 2)
        assert (await act(client, two["id"], "ack", by="op")).status_code == 200
        counts = (await client.get("/api/orchestrator/system-state")).json()["alarm_counts"]
        assert (counts["open"], counts["active"], counts["unacknowledged"]) == (3, 2, 2)
        assert counts["by_level"] == {"CAUTION": 0, "WARNING": 0, "CRITICAL": 1, "EMERGENCY": 1}
        assert sum(counts["by_level"].values()) == counts["active"]
        metrics = (await client.get("/metrics")).text
        assert "factory_mas_alarms_active 2.0" in metrics
        assert "factory_mas_alarms_unacknowledged 2.0" in metrics
        assert 'factory_mas_alarms_active_by_level{level="WARNING"} 0.0' in metrics
        status = (await client.get("/api/orchestrator/status")).json()
        assert (status["open_alarms"], status["active_alarms"], status["unacknowledged"]) == (
            3,
            2,
            2,
        )


async def test_kpis_route_answers_bad_windows_with_400(settings):
    async with running_app(settings) as (_components, client):
        for query, words in [
            ("?since=2026-01-02&until=2026-01-01", "earlier than"),
            ("?since=yesterday", "since"),
            ("?since=0&until=99999999999", "at most"),
        ]:
            response = await client.get(f"/api/orchestrator/kpis{query}")
            assert response.status_code == 400, query
            assert words in response.json()["detail"], response.text


async def test_a_power_surge_under_an_electrical_hazard_is_listed_but_silent(settings):
    async with running_app(settings) as (components, client):
        hazard = alert(machine_id=12, level="CRITICAL", type="ELECTRICAL_HAZARD")
        await post_alert(client, {**hazard, "source": "safety_agent"})
        surge = alert(machine_id=12, level="WARNING", type="POWER_ANOMALY")
        await post_alert(client, {**surge, "source": "energy_agent"})
        # The same surge on a machine without the hazard sounds as usual.
        await post_alert(client, {**surge, "source": "energy_agent", "machine_id": 13})
        found = {(a["source"], a["machine_id"]): a for a in await alarms(client)}
        safety = found[("safety_agent", 12)]
        assert found[("energy_agent", 12)]["suppressed_by"] == safety["id"]
        assert found[("energy_agent", 13)]["suppressed_by"] is None
        trail = await client.get(f"/api/orchestrator/alarms/{found[('energy_agent', 12)]['id']}")
        assert [e["kind"] for e in trail.json()["events"]] == ["raised_suppressed"]
        k = (await client.get("/api/orchestrator/kpis")).json()
        assert k["activations"] == 2  # the hazard and machine 13's surge
        assert components.orchestrator.counters["suppressed"] == 1
