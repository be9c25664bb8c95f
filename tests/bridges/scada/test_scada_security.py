"""Who may write over SCADA: nobody out of the box; when writes are opened, OPC UA users
with an API key of the role HTTP asks for the same change, Modbus and DNP3 clients in
scada.write_clients with scada.write_clients_role; every attempt audited with its peer.

The clients are from other authors than our servers' libraries: python-opcua (FreeOpcUa's
older synchronous stack, not asyncua), pyModbusTCP (not pymodbus) and opendnp3 (not
dnp3py). The synchronous ones run in a thread, since the servers run on this test's loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import msgspec
import opendnp3 as o
import pytest
from opcua import ua

from factory_mas.auth.keys import ROLES, role_allows
from factory_mas.auth.roles import role_for
from factory_mas.bridges.scada.live import role_for_point
from factory_mas.bridges.scada.points import Point, build_points
from factory_mas.settings import Settings
from tests.support.app import add_key, running_app
from tests.support.opcua import opcua_session, opcua_write
from tests.support.scada import all_protocols, crob, dnp3_commands, modbus_read, modbus_write

SETTING = "pm_agent.rul_critical_hours"
ENABLED = "safety_agent.enabled"
ACK = "system.acknowledge_alarm"
PEER = re.compile(r"127\.0\.0\.1:\d+")


def points(settings: Settings) -> dict[str, Point]:
    return {p.name: p for p in build_points(settings)}


# -- the rule, no server -----------------------------------------------------------------


def test_a_point_needs_the_role_of_its_http_route(settings: Settings) -> None:
    table = points(settings)
    want = {"setting": "admin", "enabled": "admin", "command": "operator"}
    for point in table.values():
        if point.writable:
            kind = point.target.partition(":")[0]
            assert role_for_point(point) == want[kind], point.name
    # The same routes, as the HTTP API decides them.
    assert role_for("POST", "/api/config/pm_agent") == "admin"
    assert role_for("POST", "/api/safety/start") == role_for("POST", "/api/safety/stop") == "admin"
    assert role_for("POST", "/api/orchestrator/alarms/7/ack") == "operator"
    # A target no one has decided about is closed to all but admins, as an unknown POST.
    unknown = msgspec.structs.replace(table[ACK], target="command:reset_plant")
    assert role_for_point(unknown) == "admin"
    allowed = {(r, n) for r in ROLES for n in ("operator", "admin") if role_allows(r, n)}
    assert allowed == {("operator", "operator"), ("admin", "operator"), ("admin", "admin")}


# -- clients ---------------------------------------------------------------------------


def opcua_access(settings: Settings, key: str | None, name: str) -> tuple[bool, bool]:
    """Whether AccessLevel and UserAccessLevel of a point say CurrentWrite."""

    def work(client: Any, idx: int) -> tuple[bool, bool]:
        node = client.get_node(ua.NodeId(name, idx))
        levels = [node.get_attribute(a).Value.Value for a in
                  (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel)]  # fmt: skip
        return tuple(bool(v & ua.AccessLevel.CurrentWrite.mask) for v in levels)  # type: ignore[return-value]

    return opcua_session(settings, key, work)


# -- the plant, as HTTP shows it ---------------------------------------------------------


async def raise_alarm(http: httpx.AsyncClient, kind: str = "TEST") -> int:
    alert = {"level": "WARNING", "type": kind, "source": "plc", "details": "scada security"}
    r = await http.post("/api/orchestrator/alert", json=alert)
    assert r.status_code < 300, r.text
    return r.json()["alarms"][0]["id"]


async def alarm_state(http: httpx.AsyncClient, alarm_id: int) -> str:
    return (await http.get(f"/api/orchestrator/alarms/{alarm_id}")).json()["alarm"]["state"]


async def agent_status(http: httpx.AsyncClient, slug: str) -> str:
    return (await http.get(f"/api/{slug}/health")).json()["status"]


async def pm_setting(http: httpx.AsyncClient) -> float:
    return (await http.get("/api/pm/status")).json()["settings"]["rul_critical_hours"]


async def scada_changes(http: httpx.AsyncClient, protocol: str) -> list[dict]:
    changes = (await http.get("/api/config/changes?limit=1000")).json()["changes"]
    mine = [c for c in changes if c["origin"].startswith(f"scada:{protocol} ")]
    for change in mine:  # every one names the peer it came from
        assert PEER.fullmatch(change["origin"].removeprefix(f"scada:{protocol} ")), change
    return mine


# -- out of the box ----------------------------------------------------------------------


@pytest.mark.integration
async def test_out_of_the_box_every_write_is_refused(settings: Settings) -> None:
    s = all_protocols(settings)
    assert not s.scada.writes_enabled and s.scada.write_clients == []
    table = points(s)
    admin = await add_key(s, "scada-admin", "admin")
    async with running_app(s) as (_c, http):
        alarm = await raise_alarm(http)
        before = await pm_setting(http)
        # OPC UA: anonymous or logged in as admin, nothing is writable.
        for key in (None, admin):
            assert await asyncio.to_thread(opcua_access, s, key, SETTING) == (False, False)
            for name, value, vt in [
                (SETTING, 1.0, ua.VariantType.Double),
                (ENABLED, False, ua.VariantType.Boolean),
                (ACK, alarm, ua.VariantType.Int32),
            ]:
                got = await asyncio.to_thread(opcua_write, s, key, name, value, vt)
                assert got == "BadNotWritable", (key, name)
        # Modbus: a register write is refused as to a read-only device (02).
        for name, register in [(SETTING, 10), (ENABLED, 0), ("pm_agent.enabled", 0), (ACK, alarm)]:
            assert await asyncio.to_thread(modbus_write, s, table[name], register) == 2
        assert await asyncio.to_thread(modbus_read, s, table[SETTING]) == [round(before * 10), 0]
        # DNP3: CROBs and analog outputs, direct or select-before-operate.
        statuses = await dnp3_commands(
            s,
            (crob(False), table[ENABLED], False),
            (crob(False), table["pm_agent.enabled"], True),
            (o.AnalogOutputInt32(10), table[SETTING], False),
            (o.AnalogOutputInt32(alarm), table[ACK], True),
        )
        assert statuses == [o.CommandStatus.NOT_SUPPORTED] * 4

        # The plant is as it was.
        assert await agent_status(http, "pm") == await agent_status(http, "safety") == "running"
        assert await pm_setting(http) == before
        assert await alarm_state(http, alarm) == "ACTIVE_UNACK"
        # Every attempt is in the trail, refused, with the peer it came from.
        for protocol, attempts in [("opcua", 6), ("modbus", 4), ("dnp3", 4)]:
            changes = await scada_changes(http, protocol)
            assert len(changes) == attempts, (protocol, changes)
            assert not any(c["accepted"] for c in changes)
            assert {c["result"]["code"] for c in changes} == {"read_only"}


# -- OPC UA users ------------------------------------------------------------------------


@pytest.mark.integration
async def test_opcua_writes_need_a_key_of_the_right_role(settings: Settings) -> None:
    s = all_protocols(settings, writes_enabled=True)
    operator = await add_key(s, "night-shift", "operator")
    admin = await add_key(s, "process-engineer", "admin")
    async with running_app(s) as (_c, http):
        alarm = await raise_alarm(http)
        before = await pm_setting(http)
        double, boolean, int32 = ua.VariantType.Double, ua.VariantType.Boolean, ua.VariantType.Int32

        # A wrong key is refused at login.
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await asyncio.to_thread(opcua_access, s, "fmk_not-a-key", SETTING)
        assert ua.StatusCode(refused.value.code).name == "BadUserAccessDenied"

        # Anonymous reads, and may write nothing.
        assert await asyncio.to_thread(opcua_access, s, None, ACK) == (True, False)
        for name, value, vt in [(ACK, alarm, int32), (SETTING, 30.0, double),
                                (ENABLED, False, boolean)]:  # fmt: skip
            got = await asyncio.to_thread(opcua_write, s, None, name, value, vt)
            assert got == "BadUserAccessDenied", name

        # An operator acknowledges, and changes no setting and no agent.
        assert await asyncio.to_thread(opcua_access, s, operator, ACK) == (True, True)
        assert await asyncio.to_thread(opcua_access, s, operator, SETTING) == (True, False)
        for name, value, vt in [(SETTING, 30.0, double), (ENABLED, False, boolean)]:
            got = await asyncio.to_thread(opcua_write, s, operator, name, value, vt)
            assert got == "BadUserAccessDenied", name
        assert await asyncio.to_thread(opcua_write, s, operator, ACK, alarm, int32) == "Good"
        assert await alarm_state(http, alarm) == "ACTIVE_ACK"
        assert await pm_setting(http) == before
        assert await agent_status(http, "safety") == "running"

        # An admin changes settings and stops agents.
        assert await asyncio.to_thread(opcua_access, s, admin, SETTING) == (True, True)
        assert await asyncio.to_thread(opcua_write, s, admin, SETTING, 30.0, double) == "Good"
        assert await asyncio.to_thread(opcua_write, s, admin, ENABLED, False, boolean) == "Good"
        assert await pm_setting(http) == 30.0
        assert await agent_status(http, "safety") == "stopped"

        changes = await scada_changes(http, "opcua")
        acked = (await http.get(f"/api/orchestrator/alarms/{alarm}")).json()["alarm"]
    # The key's name is who did it, whatever user name the client sent.
    assert acked["acked_by"] == "night-shift"
    by = {(c["by"], c["accepted"]) for c in changes}
    assert by == {("anonymous", False), ("night-shift", False), ("night-shift", True),
                  ("process-engineer", True)}  # fmt: skip
    forbidden = [c for c in changes if (c["result"] or {}).get("code") == "forbidden"]
    assert len(forbidden) == 5
    assert {c["request"]["role"] for c in forbidden} == {"viewer", "operator"}


# -- Modbus and DNP3 write clients -----------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("role", ["operator", "admin"])
async def test_write_clients_act_with_their_role(settings: Settings, role: str) -> None:
    s = all_protocols(
        settings, writes_enabled=True, write_clients=["127.0.0.0/8"], write_clients_role=role
    )
    table = points(s)
    admin = role == "admin"
    # What an operator may not do is refused as "not permitted", and changes nothing.
    modbus_refused = None if admin else 1
    dnp3_refused = o.CommandStatus.SUCCESS if admin else o.CommandStatus.NOT_AUTHORIZED
    async with running_app(s) as (_c, http):
        first, second = await raise_alarm(http, "FIRST"), await raise_alarm(http, "SECOND")
        before = await pm_setting(http)

        assert await asyncio.to_thread(modbus_write, s, table[ACK], first) is None
        assert await asyncio.to_thread(modbus_write, s, table[SETTING], 300) == modbus_refused
        assert await asyncio.to_thread(modbus_write, s, table[ENABLED], 0) == modbus_refused
        assert await alarm_state(http, first) == "ACTIVE_ACK"
        assert await pm_setting(http) == (30.0 if admin else before)
        assert await agent_status(http, "safety") == ("stopped" if admin else "running")

        statuses = await dnp3_commands(
            s,
            (o.AnalogOutputInt32(second), table[ACK], True),
            (o.AnalogOutputInt32(320), table[SETTING], True),
            (crob(False), table["pm_agent.enabled"], False),
        )
        assert statuses == [o.CommandStatus.SUCCESS, dnp3_refused, dnp3_refused]
        assert await alarm_state(http, second) == "ACTIVE_ACK"
        assert await pm_setting(http) == (32.0 if admin else before)
        assert await agent_status(http, "pm") == ("stopped" if admin else "running")

        for protocol in ("modbus", "dnp3"):
            changes = await scada_changes(http, protocol)
            assert len(changes) == 3
            assert sum(c["accepted"] for c in changes) == (3 if admin else 1)
            if not admin:
                refused = [c for c in changes if not c["accepted"]]
                assert {c["result"]["code"] for c in refused} == {"forbidden"}
                assert {c["request"]["role"] for c in refused} == {"operator"}


@pytest.mark.integration
async def test_clients_not_listed_only_read(settings: Settings) -> None:
    s = all_protocols(settings, writes_enabled=True, write_clients=["192.0.2.0/24"],
              write_clients_role="admin")  # fmt: skip
    table = points(s)
    async with running_app(s) as (_c, http):
        alarm = await raise_alarm(http)
        before = await pm_setting(http)
        assert await asyncio.to_thread(modbus_read, s, table[SETTING]) == [round(before * 10), 0]
        for name, register in [(ACK, alarm), (SETTING, 300), (ENABLED, 0)]:
            assert await asyncio.to_thread(modbus_write, s, table[name], register) == 1, name
        statuses = await dnp3_commands(
            s,
            (o.AnalogOutputInt32(alarm), table[ACK], False),
            (o.AnalogOutputInt32(300), table[SETTING], True),
            (crob(False), table[ENABLED], True),
        )
        assert statuses == [o.CommandStatus.NOT_AUTHORIZED] * 3
        assert await alarm_state(http, alarm) == "ACTIVE_UNACK"
        assert await pm_setting(http) == before
        assert await agent_status(http, "safety") == "running"
        for protocol in ("modbus", "dnp3"):
            changes = await scada_changes(http, protocol)
            assert len(changes) == 3 and not any(c["accepted"] for c in changes)
            assert {c["result"]["code"] for c in changes} == {"forbidden"}
            assert {c["request"]["role"] for c in changes} == {"viewer"}
        # The admin's trail shows where each attempt came from.
        audit = (await http.get("/api/audit?limit=100")).json()["events"]
    origins = {e["origin"].split(" ")[0] for e in audit if (e["origin"] or "").startswith("scada")}
    assert origins == {"scada:modbus", "scada:dnp3"}


# -- HTTP start and stop -----------------------------------------------------------------


async def test_http_start_and_stop_need_admin_and_are_audited(settings: Settings) -> None:
    s = msgspec.structs.replace(settings, auth=msgspec.structs.replace(settings.auth, enabled=True))
    operator = await add_key(s, "night-shift", "operator")
    admin = await add_key(s, "process-engineer", "admin")

    def as_(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async with running_app(s) as (_c, http):
        assert (await http.post("/api/safety/stop")).status_code == 401
        assert (await http.post("/api/safety/stop", headers=as_(operator))).status_code == 403
        assert await agent_status_as(http, admin) == "running"
        stopped = await http.post("/api/safety/stop", headers=as_(admin))
        assert stopped.status_code == 200, stopped.text
        assert stopped.json() == {"agent_id": "safety_agent", "status": "stopped"}
        assert await agent_status_as(http, admin) == "stopped"
        started = await http.post("/api/safety/start", headers=as_(admin))
        assert started.json() == {"agent_id": "safety_agent", "status": "running"}
        audit = (await http.get("/api/audit", headers=as_(admin))).json()["events"]
    switches = [e for e in audit if e["source"] == "config:safety_agent"]
    assert [(e["actor"], e["origin"], e["accepted"], e["detail"]["request"]) for e in switches] == [
        ("process-engineer", "http", True, {"action": "start"}),
        ("process-engineer", "http", True, {"action": "stop"}),
    ]


async def agent_status_as(http: httpx.AsyncClient, key: str) -> str:
    health = await http.get("/api/safety/health", headers={"Authorization": f"Bearer {key}"})
    return health.json()["status"]


async def test_http_start_of_a_disabled_agent_is_refused(settings: Settings) -> None:
    agents = msgspec.structs.replace(
        settings.agents, safety=msgspec.structs.replace(settings.agents.safety, enabled=False)
    )
    async with running_app(msgspec.structs.replace(settings, agents=agents)) as (_c, http):
        r = await http.post("/api/safety/start")
        assert r.status_code == 409, r.text
        assert "agents.safety.enabled is false" in r.text
        changes = (await http.get("/api/config/changes")).json()["changes"]
    [change] = [c for c in changes if c["target"] == "safety_agent"]
    assert not change["accepted"] and change["request"] == {"action": "start"}
