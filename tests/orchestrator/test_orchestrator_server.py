"""The orchestrator through the real server: kill -9 in a burst, SMS through the real
twilio client, the WebSocket stream, and a real agent's return to normal."""

from __future__ import annotations

import json
import signal
import socket
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from websockets.sync.client import connect

from tests.support.fake_twilio import FakeTwilio
from tests.support.scenarios import attack_episode
from tests.support.waiting import wait_until

# A real server process, with a fake Twilio on a loopback port.
pytestmark = pytest.mark.integration

Key = tuple[str, str, int]
# The burst below is thirty keys at once: as a common cause they would make group alarms
# (tested in test_alarm_kpis.py); here each key's own alarm is what is counted.
ONE_ALARM_PER_KEY = {"FACTORY_ORCHESTRATOR_GROUP_MIN_ALARMS": "0"}


def alert(source: str, type_: str, machine_id: int, level: str, details: str = "") -> dict:
    return {
        "level": level,
        "type": type_,
        "source": source,
        "details": details or f"{type_} reported by {source} on machine {machine_id}",
        "machine_id": machine_id,
    }


def key_of(alarm: dict) -> Key:
    return (alarm["source"], alarm["type"], alarm["machine_id"])


def all_alarms(server, **query: object) -> list[dict]:
    body = server.get("/api/orchestrator/alarms", params={"limit": 10_000, **query}).json()
    return body["alarms"]


def all_decisions(server) -> list[dict]:
    return server.get("/api/orchestrator/decisions", params={"limit": 10_000}).json()["decisions"]


def outbox(server) -> list[dict]:
    return server.get("/api/notify/outbox", params={"limit": 1000}).json()["messages"]


# -- kill -9 in the middle of a burst ----------------------------------------------------


def test_kill_9_during_a_burst_loses_no_acknowledged_alarm_ack_or_plan(server_factory):
    # The external planner hangs (it takes connections and never answers): every plan
    # waits out the timeout before the built-in one answers, so plans are still owed
    # when the kill comes. After the restart the planner is unset and answers at once.
    with socket.socket() as hung_planner:
        hung_planner.bind(("127.0.0.1", 0))
        hung_planner.listen(512)
        port = hung_planner.getsockname()[1]
        server = server_factory(
            {
                "PLANNER_URL": f"http://127.0.0.1:{port}/plan",
                "FACTORY_PLANNER_TIMEOUT_S": "1.0",
                **ONE_ALARM_PER_KEY,
            }
        )
        owed = _burst_and_kill(server)
    again = server_factory(ONE_ALARM_PER_KEY, data_dir=server.data_dir)
    _check_after_restart(again, *owed)


def _burst_and_kill(server) -> tuple:
    url = server.url + "/api/orchestrator/alert"

    # Phase 1: 300 alerts over 30 keys from 6 threads; all sent before anything else.
    keys = [
        (source, type_, machine)
        for source in ("plc-1", "plc-2", "plc-3")
        for type_ in ("FIRE_RISK", "MECHANICAL_HAZARD")
        for machine in range(1, 6)
    ]
    # Ten rounds over the keys; each key is CRITICAL in some rounds (escalating it).
    burst = [
        (keys[i % 30], "CRITICAL" if (i // 30 + i % 30) % 4 == 0 else "WARNING") for i in range(300)
    ]

    def send(share: list[tuple[Key, str]]) -> Counter:
        accepted: Counter = Counter()
        with httpx.Client(timeout=10) as client:
            for (source, type_, machine), level in share:
                answer = client.post(url, json=alert(source, type_, machine, level))
                if answer.status_code == 202:
                    accepted[(source, type_, machine)] += 1
        return accepted

    with ThreadPoolExecutor(6) as pool:
        phase1 = sum(pool.map(send, [burst[i::6] for i in range(6)]), Counter())
    assert sum(phase1.values()) == 300, "a live server should accept every alert"

    # Acknowledge a few of them; their keys get no more alerts.
    by_key = {key_of(a): a for a in all_alarms(server, source="plc-1")}
    acked: dict[int, Key] = {}
    for key in keys[:4]:
        alarm_id = by_key[key]["id"]
        answer = server.post(f"/api/orchestrator/alarms/{alarm_id}/ack", {"by": "alice"})
        if answer.status_code == 200:
            acked[alarm_id] = key
    assert len(acked) == 4
    decided_before = wait_until(
        lambda: {d["id"] for d in all_decisions(server)}, what="a first decision"
    )

    # Phase 2: other keys, still being sent from another thread when the kill comes.
    late_keys = [("plc-9", "FIRE_RISK", machine) for machine in range(20, 26)]
    late: list[Key] = []  # appended by the sender thread; list.append is atomic
    refused: list[Key] = []
    stop = threading.Event()

    def keep_sending() -> None:
        i = 0
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                key = late_keys[i % len(late_keys)]
                i += 1
                try:
                    answer = client.post(url, json=alert(*key, "CRITICAL" if i % 2 else "WARNING"))
                except httpx.HTTPError:
                    refused.append(key)  # the server is gone: unanswered, not counted
                    continue
                if answer.status_code == 202:
                    late.append(key)

    sender = threading.Thread(target=keep_sending, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(late) >= 40, what="the second burst under way")
        # Alarms that still wait for their plan (the hung planner holds each for 1 s).
        covered = {i for d in all_decisions(server) for i in d["alarm_ids"]}
        undecided_at_kill = {a["id"] for a in all_alarms(server)} - covered
        server.stop(signal.SIGKILL)
        # The sender goes on against the dead server for a few refused requests.
        refused_at_kill = len(refused)
        wait_until(lambda: len(refused) >= refused_at_kill + 3, what="requests refused")
    finally:
        stop.set()
        sender.join(10)
    late_accepted = Counter(late)
    assert late_accepted
    return phase1, late_accepted, late_keys, acked, decided_before, undecided_at_kill


def _check_after_restart(
    again, phase1, late_accepted, late_keys, acked, decided_before, undecided_at_kill
) -> None:
    alarms = all_alarms(again)
    found: dict[Key, list[dict]] = {}
    for alarm in alarms:
        found.setdefault(key_of(alarm), []).append(alarm)

    # Every acknowledged alert is counted: exactly for the finished burst, at least for
    # the one the kill interrupted (an alert committed but not yet answered may count).
    for key, n in phase1.items():
        assert len(found.get(key, [])) == 1, (key, found.get(key))
        assert found[key][0]["count"] == n, (key, found[key][0]["count"], n)
    for key, n in late_accepted.items():
        assert len(found.get(key, [])) == 1, (key, found.get(key))
        assert found[key][0]["count"] >= n, (key, found[key][0]["count"], n)

    # Acknowledgements answered 200 survived.
    for alarm_id, key in acked.items():
        body = again.get(f"/api/orchestrator/alarms/{alarm_id}").json()
        assert key_of(body["alarm"]) == key
        assert body["alarm"]["state"] == "ACTIVE_ACK" and body["alarm"]["acked_by"] == "alice"
        assert [e["by"] for e in body["events"] if e["kind"] == "acked"] == ["alice"]

    # Plans owed at the kill are made after the restart: every active alarm is covered.
    active = {a["id"] for a in alarms if a["state"] in ("ACTIVE_UNACK", "ACTIVE_ACK")}
    assert set(found) <= set(phase1) | set(late_keys)
    assert len(active) >= len(phase1) + len(late_accepted)

    def uncovered() -> set[int]:
        covered = {i for d in all_decisions(again) for i in d["alarm_ids"]}
        return active - covered

    assert len(undecided_at_kill) > 10, "the kill should come while plans are owed"
    wait_until(lambda: not uncovered(), what="a decision for every active alarm")
    decisions = all_decisions(again)
    assert decided_before <= {d["id"] for d in decisions}

    # Each texted decision has its outbox row (recorded, not sent: no credentials).
    rows = {r["decision_id"]: r for r in outbox(again)}
    texted = [d for d in decisions if d["level"] in ("CRITICAL", "EMERGENCY")]
    assert texted
    for d in texted:
        assert d["id"] in rows, f"no outbox row for the {d['level']} decision {d['id']}"
        assert rows[d["id"]]["status"] == d["notified"]["status"]
        assert d["notified"]["status"] in ("not_configured", "cooldown")
    assert any(r["status"] == "not_configured" for r in rows.values())
    for d in decisions:
        if d["level"] not in ("CRITICAL", "EMERGENCY"):
            assert d["notified"] is None and d["id"] not in rows


# -- SMS through the real twilio client ----------------------------------------------------

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "s3cr3t-token-" + "9f8e7d6c5b4a"
FROM = "+15550001111"
TO = "+15550002222"


def test_a_critical_alarm_is_texted_once_through_twilio(server_factory):
    with FakeTwilio(SID, TOKEN) as fake:
        server = server_factory(
            {
                "TWILIO_ACCOUNT_SID": SID,
                "TWILIO_AUTH_TOKEN": TOKEN,
                "TWILIO_FROM_NUMBER": FROM,
                "TWILIO_TO_NUMBER": TO,
                "FACTORY_NOTIFY_TWILIO_BASE_URL": fake.base_url,
                "FACTORY_NOTIFY_RETRY_BASE_S": "0.2",
                # The most talkative logs: secrets must stay out of them all the same.
                "LOG_LEVEL": "debug",
            }
        )
        # Twilio's first answer is an error that echoes the numbers and the token, as
        # error texts do; it goes to the log, which must not repeat them.
        echo = f"Internal error sending from {FROM} to {TO} ({TO.lstrip('+')}) with {TOKEN}"
        fake.fail_next(1, 500, {"code": 20500, "message": echo, "status": 500})

        # LOW_RUL at CRITICAL is priority 3; at EMERGENCY priority 2: a new plan.
        worn = alert("pm-gateway", "LOW_RUL", 7, "CRITICAL", "bearing wear, 20 h left")
        assert server.post("/api/orchestrator/alert", worn).status_code == 202
        wait_until(lambda: fake.received, what="the text at the fake Twilio")
        wait_until(
            lambda: [r["status"] for r in outbox(server)] == ["sent"],
            what="the outbox row marked sent",
        )
        [text] = fake.received
        assert text.to == TO and text.from_ == FROM and text.account_sid == SID
        assert "Machine 7" in text.body and "schedule_maintenance" in text.body
        [row] = outbox(server)
        assert row["body"] == text.body and row["provider_id"].startswith("SM")
        assert row["attempts"] == 2 and row["to"] == "***22"
        [first] = all_decisions(server)
        assert row["decision_id"] == first["id"] and first["level"] == "CRITICAL"

        # The same alert again, then worse, within the cooldown: planned, not texted.
        for _ in range(5):
            assert server.post("/api/orchestrator/alert", worn).status_code == 202
        worse = {**worn, "level": "EMERGENCY", "details": "bearing seized"}
        assert server.post("/api/orchestrator/alert", worse).status_code == 202
        wait_until(lambda: len(all_decisions(server)) == 2, what="the escalation's decision")
        escalated = all_decisions(server)[0]
        assert escalated["level"] == "EMERGENCY" and escalated["plan"]["priority"] == 2
        assert escalated["notified"] == {"channel": "sms", "status": "cooldown"}
        [alarm] = all_alarms(server, machine_id=7)
        assert alarm["count"] == 7 and alarm["highest_level"] == "EMERGENCY"

        # A warning elsewhere is planned but not texted.
        bearing = alert("plc-4", "MECHANICAL_HAZARD", 8, "WARNING", "bearing noise")
        assert server.post("/api/orchestrator/alert", bearing).status_code == 202
        wait_until(lambda: len(all_decisions(server)) == 3, what="a decision about machine 8")
        warning = all_decisions(server)[0]
        assert warning["plan"]["machine_id"] == 8
        assert warning["level"] == "WARNING" and warning["notified"] is None

        # Nothing is queued, so nothing more can go out: one text in all.
        rows = outbox(server)
        assert sorted(r["status"] for r in rows) == ["cooldown", "sent"]
        assert len(fake.received) == 1 and fake.requests == 2
        server.stop()

    log = server.output()
    # The log was written, the failure included, so its silence below means something.
    assert "sent to the supervisor" in log and "HTTP 500" in log
    for secret in (TOKEN, SID, FROM, TO, FROM.lstrip("+"), TO.lstrip("+")):
        assert secret not in log, f"{secret!r} leaked into the server log"


# -- the WebSocket stream --------------------------------------------------------------------


def test_websocket_streams_alarm_decision_and_ack(server_factory):
    server = server_factory()
    ws_url = server.url.replace("http", "ws", 1) + "/api/orchestrator/ws"
    with connect(ws_url, open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello"
        assert {"alerts", "decisions", "alarm_counts", "flood", "last_update"} <= set(hello["data"])
        assert hello["data"]["alarm_counts"]["open"] == 0

        answer = server.post(
            "/api/orchestrator/alert", alert("plc-3", "FIRE_RISK", 7, "CRITICAL", "smoke")
        )
        assert answer.status_code == 202
        alarm_id = answer.json()["alarms"][0]["id"]

        def next_frame() -> dict:
            frame = json.loads(ws.recv(timeout=10))
            assert frame["type"] in ("alarm", "decision", "flood"), frame
            return frame

        first = next_frame()
        assert first["type"] == "alarm"
        assert first["data"]["id"] == alarm_id and first["data"]["state"] == "ACTIVE_UNACK"
        assert first["data"]["machine_id"] == 7 and first["data"]["level"] == "CRITICAL"
        second = next_frame()
        assert second["type"] == "decision"
        assert alarm_id in second["data"]["alarm_ids"]
        assert second["data"]["plan"]["action"] == "evacuate_area"

        acked = server.post(f"/api/orchestrator/alarms/{alarm_id}/ack", {"by": "alice"})
        assert acked.status_code == 200
        third = next_frame()
        assert third["type"] == "alarm" and third["data"]["id"] == alarm_id
        assert third["data"]["state"] == "ACTIVE_ACK" and third["data"]["acked_by"] == "alice"


# -- a real agent's alarm returns to normal --------------------------------------------------


def test_a_cyber_alarm_clears_when_the_agent_returns_to_normal(server_factory):
    records = attack_episode().records
    machine = records[0]["machine_id"]
    server = server_factory()

    def cyber_alarms() -> list[dict]:
        return all_alarms(server, source="cyber_agent", machine_id=machine)

    levels = []
    for raw in records:
        answer = server.post("/api/cyber/predict", raw)
        assert answer.status_code == 200, answer.text
        levels.append(answer.json()["level"])
        if levels[-1] == "CRITICAL" and levels.count("CRITICAL") == 1:
            # The attack at its worst: the alarm stands, nobody has seen it yet.
            wait_until(
                lambda: any(
                    a["state"] == "ACTIVE_UNACK" and a["highest_level"] == "CRITICAL"
                    for a in cyber_alarms()
                ),
                what="an active unacknowledged CRITICAL cyber alarm",
            )
    assert "CRITICAL" in levels and levels[-1] == "NORMAL"

    wait_until(
        lambda: (found := cyber_alarms()) and all(a["state"] == "CLEARED_UNACK" for a in found),
        what="the cyber alarms cleared by the return to normal",
    )
    for alarm in cyber_alarms():
        assert alarm["level"] == "NORMAL" and alarm["cleared_at"] is not None
        events = server.get(f"/api/orchestrator/alarms/{alarm['id']}").json()["events"]
        kinds = [(e["kind"], e["state"]) for e in events]
        assert kinds[0] == ("raised", "ACTIVE_UNACK")
        assert kinds[-1] == ("cleared", "CLEARED_UNACK")
        assert events[-1]["by"] == "cyber_agent"
        # Seen by an operator now: cleared and acknowledged closes it.
        answer = server.post(f"/api/orchestrator/alarms/{alarm['id']}/ack", {"by": "bob"})
        assert answer.status_code == 200 and answer.json()["state"] == "CLEARED_ACK"
    assert all_alarms(server, source="cyber_agent", open="true") == []
