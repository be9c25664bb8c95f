"""The orchestrator through its HTTP API and the hub, in process with the full lifespan:
alarms deduplicated under concurrency, the life cycle, shelving, floods, plans."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from factory_mas.messages import RETURN_TO_NORMAL, Alert
from factory_mas.settings import Settings
from tests.support.app import running_app
from tests.support.orchestrator import act, alarms, alert, post_alert, tuned


@pytest.fixture
def settings(on_each_database: Settings) -> Settings:
    """Each test here runs on SQLite and again on PostgreSQL."""
    return on_each_database


# --------------------------------------------------------------------------- dedup


async def test_concurrent_duplicate_alerts_make_one_alarm_with_the_right_count(settings):
    async with running_app(settings) as (components, client):
        levels = ["WARNING"] * 30 + ["CRITICAL"] * 10 + ["WARNING"] * 10
        await asyncio.gather(*(post_alert(client, alert(level=lv)) for lv in levels))
        # ... and the same key arriving from the hub at the same time.
        hub_alerts = [Alert(**alert(level="WARNING")) for _ in range(20)]
        await asyncio.gather(
            *(components.hub.publish("alerts/plc", a, origin="test") for a in hub_alerts)
        )
        await components.orchestrator.idle()
        for _ in range(100):
            if components.orchestrator.counters["alerts"] == 70:
                break
            await asyncio.sleep(0.02)

        found = await alarms(client)
        detail = (await client.get(f"/api/orchestrator/alarms/{found[0]['id']}")).json()

    assert len(found) == 1
    (one,) = found
    assert one["count"] == 70
    assert one["highest_level"] == "CRITICAL" and one["state"] == "ACTIVE_UNACK"
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds in (["raised", "escalated"], ["raised"])  # raised at CRITICAL if it came first


async def test_alarm_keys_are_source_type_and_machine(settings):
    # One alarm per machine, not one group for the many (tests of test_alarm_kpis.py).
    async with running_app(tuned(settings, group_min_alarms=0)) as (_, client):
        await post_alert(client, alert())
        await post_alert(client, alert(machine_id=8))
        await post_alert(client, alert(type="ELECTRICAL_HAZARD"))
        await post_alert(client, alert(source="plc-4"))
        await post_alert(client, alert(machine_id=None, camera_id="gate2"))
        await post_alert(client, alert())
        found = await alarms(client)
    assert len(found) == 5
    assert sorted(a["count"] for a in found) == [1, 1, 1, 1, 2]


# --------------------------------------------------------------------------- life cycle


async def test_life_cycle_clear_ack_and_a_new_alarm_after_closing(settings):
    async with running_app(settings) as (components, client):
        first = (await post_alert(client, alert(source="safety_agent")))["alarms"][0]
        back = {
            "level": "NORMAL",
            "type": RETURN_TO_NORMAL,
            "source": "safety_agent",
            "details": "back",
        }
        # A return to normal for another machine or source changes nothing.
        await post_alert(client, {**back, "machine_id": 8})
        await post_alert(client, {**back, "machine_id": 7, "source": "pm_agent"})
        assert (await alarms(client))[0]["state"] == "ACTIVE_UNACK"

        cleared = (await post_alert(client, {**back, "machine_id": 7}))["alarms"][0]
        assert cleared["state"] == "CLEARED_UNACK" and cleared["id"] == first["id"]
        assert cleared["level"] == "NORMAL" and cleared["highest_level"] == "CRITICAL"

        # Still unacknowledged: it comes back as the same alarm.
        again = (await post_alert(client, alert(source="safety_agent")))["alarms"][0]
        assert again["id"] == first["id"] and again["state"] == "ACTIVE_UNACK"
        assert again["count"] == 2

        acked = (await act(client, first["id"], "ack", by="alice", note="crew sent")).json()
        assert acked["state"] == "ACTIVE_ACK" and acked["acked_by"] == "alice"
        closed = (await post_alert(client, {**back, "machine_id": 7}))["alarms"][0]
        assert closed["state"] == "CLEARED_ACK"

        assert await alarms(client, "?open=true") == []
        state = (await client.get("/system-state")).json()
        assert state["alarm_counts"]["open"] == 0

        # Closed: the next alert with that key is a new alarm.
        fresh = (await post_alert(client, alert(source="safety_agent")))["alarms"][0]
        assert fresh["id"] != first["id"] and fresh["count"] == 1

        trail = (await client.get(f"/api/orchestrator/alarms/{first['id']}")).json()["events"]
        await components.orchestrator.idle()
    assert [(e["kind"], e["by"], e["state"]) for e in trail] == [
        ("raised", "safety_agent", "ACTIVE_UNACK"),
        ("cleared", "safety_agent", "CLEARED_UNACK"),
        ("reactivated", "safety_agent", "ACTIVE_UNACK"),
        ("acked", "alice", "ACTIVE_ACK"),
        ("cleared", "safety_agent", "CLEARED_ACK"),
    ]
    assert trail[3]["detail"] == "crew sent"
    assert all(e["at"] for e in trail)


async def test_acked_alarm_that_gets_worse_needs_acknowledging_again(settings):
    async with running_app(settings) as (_, client):
        raised = (await post_alert(client, alert(level="WARNING")))["alarms"][0]
        await act(client, raised["id"], "ack", by="alice")
        same = (await post_alert(client, alert(level="WARNING")))["alarms"][0]
        assert same["state"] == "ACTIVE_ACK"
        worse = (await post_alert(client, alert(level="EMERGENCY")))["alarms"][0]
    assert worse["state"] == "ACTIVE_UNACK" and worse["highest_level"] == "EMERGENCY"
    assert worse["acked_by"] is None and worse["acked_at"] is None


async def test_operator_actions_answer_conflicts_and_bad_requests(settings):
    async with running_app(settings) as (_, client):
        alarm_id = (await post_alert(client, alert()))["alarms"][0]["id"]
        assert (await act(client, alarm_id, "ack", by="alice")).status_code == 200
        twice = await act(client, alarm_id, "ack", by="bob")
        assert twice.status_code == 409 and "already acknowledged by alice" in twice.text
        nobody = await act(client, alarm_id, "ack")
        assert nobody.status_code == 422 and nobody.json()["field"] == "by"
        missing = await act(client, 999, "ack", by="alice")
        assert missing.status_code == 404 and "999" in missing.text
        unknown = await act(client, alarm_id, "explode", by="alice")
        assert unknown.status_code == 404 and "ack, shelve" in unknown.text
        too_long = await act(client, alarm_id, "shelve", by="bob", duration_s=10**6)
        assert too_long.status_code == 422 and too_long.json()["field"] == "duration_s"
        empty = await act(client, alarm_id, "comment", by="bob", text="")
        assert empty.status_code == 422 and empty.json()["field"] == "text"
        not_shelved = await act(client, alarm_id, "unshelve", by="bob")
        assert not_shelved.status_code == 409
        commented = await act(client, alarm_id, "comment", by="bob", text="valve replaced")
        assert commented.status_code == 200
        assert commented.json()["comments"][0] == {
            "by": "bob",
            "at": commented.json()["comments"][0]["at"],
            "text": "valve replaced",
        }


async def test_shelved_alarm_returns_by_itself(settings):
    async with running_app(settings) as (components, client):
        alarm_id = (await post_alert(client, alert()))["alarms"][0]["id"]
        shelved = await act(client, alarm_id, "shelve", by="bob", duration_s=0.3, reason="test")
        assert shelved.status_code == 200 and shelved.json()["shelved_by"] == "bob"
        state = (await client.get("/system-state")).json()
        assert state["alarm_counts"]["shelved"] == 1
        for _ in range(200):
            current = (await client.get(f"/api/orchestrator/alarms/{alarm_id}")).json()
            if current["alarm"]["shelved_until"] is None:
                break
            await asyncio.sleep(0.05)
        await components.orchestrator.idle()
    assert current["alarm"]["shelved_until"] is None
    kinds = [(e["kind"], e["by"]) for e in current["events"]]
    assert ("shelved", "bob") in kinds and ("unshelved", "system") in kinds


# --------------------------------------------------------------------------- flood


async def test_flood_groups_low_priority_alarms_and_ends(settings):
    settings = tuned(
        settings, flood_window_s=1.5, flood_threshold=10, flood_end_below=5, group_min_alarms=0
    )
    async with running_app(settings) as (components, client):
        for machine in range(1, 11):
            await post_alert(client, alert(machine, level="WARNING", type="POWER_ANOMALY"))
        state = (await client.get("/system-state")).json()
        assert state["flood"]["active"] is False, "10 in the window is not yet a flood"
        await post_alert(client, alert(11, level="WARNING", type="POWER_ANOMALY"))
        await post_alert(client, alert(12, level="EMERGENCY", type="FIRE_RISK"))
        state = (await client.get("/system-state")).json()
        assert state["flood"]["active"] is True
        assert state["flood"]["new_alarms_in_window"] == 12
        (group,) = state["alarm_groups"]
        assert group["type"] == "POWER_ANOMALY" and group["count"] == 11
        assert sorted(group["machine_ids"]) == list(range(1, 12))
        # The serious one stays in view on its own line.
        assert [(a["type"], a["machine_id"]) for a in state["alarms"]] == [("FIRE_RISK", 12)]

        for _ in range(100):
            state = (await client.get("/system-state")).json()
            if not state["flood"]["active"]:
                break
            await asyncio.sleep(0.05)
        await components.orchestrator.idle()
    assert state["flood"]["active"] is False
    assert state["alarm_groups"] == [] and len(state["alarms"]) == 12


# --------------------------------------------------------------------------- plans


async def test_correlated_alarms_on_one_machine_make_one_raised_plan_once(settings):
    async with running_app(settings) as (components, client):
        hazard = alert(source="safety_agent", type="MECHANICAL_HAZARD", level="WARNING")
        failure = alert(source="pm_agent", type="IMMINENT_FAILURE", level="CRITICAL")
        await post_alert(client, hazard)
        await components.orchestrator.idle()
        await post_alert(client, failure)
        await components.orchestrator.idle()
        # Repeats of the same evidence: no new plans.
        for _ in range(5):
            await post_alert(client, failure)
            await post_alert(client, hazard)
        await components.orchestrator.idle()
        decisions = (await client.get("/api/orchestrator/decisions")).json()["decisions"]
        on_other_machine = alert(9, source="pm_agent", type="LOW_RUL", level="WARNING")
        await post_alert(client, on_other_machine)
        await components.orchestrator.idle()
        later = (await client.get("/api/orchestrator/decisions?machine_id=9")).json()

    assert len(decisions) == 2, [d["plan"]["rationale"] for d in decisions]
    combined, alone = decisions  # newest first
    assert alone["plan"]["action"] == "stop_machine" and len(alone["alarm_ids"]) == 1
    assert len(combined["alarm_ids"]) == 2
    assert combined["plan"]["priority"] < 2, "correlated evidence raises the priority"
    assert combined["level"] == "CRITICAL"
    for evidence in ("MECHANICAL_HAZARD", "IMMINENT_FAILURE", "machine 7"):
        assert evidence in combined["plan"]["rationale"]
    assert combined["planner"] == "builtin"
    assert [d["plan"]["action"] for d in later["decisions"]] == ["schedule_maintenance"]
    assert later["decisions"][0]["plan"]["priority"] == 3
    assert later["decisions"][0]["notified"] is None, "WARNING decisions are not texted"


async def test_playbooks_decide_the_action_and_priority(settings):
    cases = {
        "PPE_VIOLATION": ("stop_machine", 1),
        "DDOS_RISK": ("isolate_network_segment", 2),
        "LOW_RUL": ("schedule_maintenance", 3),
        "POWER_ANOMALY": ("adjust_power_profile", 4),
        "SOMETHING_NEW": ("log", 5),
    }
    async with running_app(settings) as (components, client):
        for machine, kind in enumerate(cases, start=1):
            await post_alert(client, alert(machine, type=kind, level="WARNING"))
        await components.orchestrator.idle()
        decisions = (await client.get("/api/orchestrator/decisions")).json()["decisions"]
    got = {d["plan"]["machine_id"]: (d["plan"]["action"], d["plan"]["priority"]) for d in decisions}
    assert got == {m: cases[k] for m, k in enumerate(cases, start=1)}


async def test_system_state_lists_newest_first_with_counts(settings):
    async with running_app(tuned(settings, group_min_alarms=0)) as (components, client):
        for machine in (1, 2, 3):
            await post_alert(
                client, alert(machine, level="CRITICAL" if machine == 2 else "WARNING")
            )
        await components.orchestrator.idle()
        state = (await client.get("/system-state")).json()
        same = (await client.get("/api/orchestrator/system-state")).json()
    assert state.keys() == same.keys()
    assert [a["machine_id"] for a in state["alerts"]] == [3, 2, 1]
    assert [a["machine_id"] for a in state["alarms"]] == [3, 2, 1]
    assert [d["plan"]["machine_id"] for d in state["decisions"]] == [3, 2, 1]
    assert state["alarm_counts"]["by_state"]["ACTIVE_UNACK"] == 3
    assert state["alarm_counts"]["by_level"] == Counter(
        {"CAUTION": 0, "WARNING": 2, "CRITICAL": 1, "EMERGENCY": 0}
    )
    assert state["last_update"] is not None


async def test_system_state_is_fresh_after_every_change_and_304_while_unchanged(settings):
    async with running_app(settings) as (components, client):
        await post_alert(client, alert(1, level="WARNING"))
        await components.orchestrator.idle()
        first = await client.get("/system-state")
        tag = first.headers["etag"]
        unchanged = await client.get("/system-state", headers={"If-None-Match": tag})
        assert unchanged.status_code == 304 and unchanged.content == b""
        # An operator's ack shows at once, under a new tag.
        alarm_id = first.json()["alarms"][0]["id"]
        acked = await client.post(f"/api/orchestrator/alarms/{alarm_id}/ack", json={"by": "alice"})
        assert acked.status_code == 200
        after_ack = await client.get("/system-state", headers={"If-None-Match": tag})
        assert after_ack.status_code == 200 and after_ack.headers["etag"] != tag
        assert after_ack.json()["alarms"][0]["state"] == "ACTIVE_ACK"
        # So does a new alert that changes no alarm (the same alarm counted again).
        await post_alert(client, alert(1, level="WARNING"))
        await components.orchestrator.idle()
        again = (await client.get("/system-state")).json()
        assert len(again["alerts"]) == 2
        assert again["alarms"][0]["count"] == 2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"type": "X", "source": "s", "details": "d"}, "level", "required"),
        (alert(level="SEVERE"), "level", "'SEVERE' is not one of NORMAL"),
        (alert(type=""), "type", "length"),
        (alert(source=None), "source", "Expected `str`"),
        (alert(machine_id="seven"), "machine_id", "Expected `int"),
        (alert(timestamp="yesterday"), "timestamp", "datetime"),
        ({"level": "CRITICAL", "type": "X", "source": "s"}, "details", "required"),
        ([alert(), alert(level=3)], "level", "alert 1"),
        ("just text", None, "JSON object"),
    ],
)
async def test_bad_alerts_get_422_naming_the_field_and_change_nothing(settings, body, field, words):
    async with running_app(settings) as (_, client):
        response = await client.post("/api/orchestrator/alert", json=body)
        assert response.status_code == 422, response.text
        error = response.json()
        assert error["error"] == "invalid_alert" and error["field"] == field
        assert words in error["detail"]
        assert await alarms(client) == []


async def test_bad_queries_and_bodies_get_400(settings):
    async with running_app(settings) as (_, client):
        for query, name in [
            ("?state=OPEN", "state"),
            ("?level=HIGH", "level"),
            ("?since=last+week", "since"),
            ("?limit=0", "limit"),
            ("?open=maybe", "open"),
            ("?machine_id=x", "machine_id"),
        ]:
            response = await client.get(f"/api/orchestrator/alarms{query}")
            assert response.status_code == 400, query
            assert response.json()["detail"].startswith(name)
        broken = await client.post("/api/orchestrator/alert", content=b"{nope")
        assert broken.status_code == 400 and broken.json()["error"] == "invalid_json"
        empty = await client.post("/api/orchestrator/alert", json=[])
        assert empty.status_code == 400
        assert (await client.get("/api/orchestrator/alarms/abc")).status_code == 404
        assert (await client.get("/api/orchestrator/decisions?since=soon")).status_code == 400


async def test_a_worse_level_with_the_same_plan_is_a_new_decision(settings):
    async with running_app(settings) as (components, client):
        await post_alert(client, alert(level="CRITICAL"))
        await components.orchestrator.idle()
        await post_alert(client, alert(level="CRITICAL"))
        await post_alert(client, alert(level="EMERGENCY"))
        await components.orchestrator.idle()
        decisions = (await client.get("/api/orchestrator/decisions")).json()["decisions"]
    assert [(d["level"], d["plan"]["action"]) for d in decisions] == [
        ("EMERGENCY", "evacuate_area"),
        ("CRITICAL", "evacuate_area"),
    ]


async def test_one_batch_can_close_an_alarm_and_raise_its_successor(settings):
    back = {"level": "NORMAL", "type": RETURN_TO_NORMAL, "source": "plc-3", "details": "ok"}
    async with running_app(settings) as (_, client):
        first = (await post_alert(client, alert()))["alarms"][0]
        await act(client, first["id"], "ack", by="alice")
        body = await post_alert(client, [{**back, "machine_id": 7}, alert(), alert()])
        found = await alarms(client)
    closed, fresh = sorted(body["alarms"], key=lambda a: a["id"])
    assert closed["id"] == first["id"] and closed["state"] == "CLEARED_ACK"
    assert fresh["state"] == "ACTIVE_UNACK" and fresh["count"] == 2
    assert sorted((a["id"], a["state"], a["count"]) for a in found) == [
        (first["id"], "CLEARED_ACK", 1),
        (fresh["id"], "ACTIVE_UNACK", 2),
    ]
