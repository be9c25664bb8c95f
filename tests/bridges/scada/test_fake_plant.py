"""The three SCADA servers against a fake plant, without the application around them.

The bridge reads the plant through ports.PlantView and steers it through
ports.PlantControl; here both are a small fake whose state the test sets and whose
control records what it was asked. Everything else is real: the hub that brings the
predictions, the SQLite store with the API keys and the audit trail, our OPC UA, Modbus
and DNP3 servers, and clients from other authors (python-opcua, pyModbusTCP, opendnp3).
The whole-app SCADA tests next to this file are the integration layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import opendnp3 as o
import pytest
from opcua import ua

from factory_mas.bridges.scada.ports import Refused, Value
from factory_mas.bridges.scada.service import ScadaBridge
from factory_mas.configure import records
from factory_mas.configure.requests import ConfigResult
from factory_mas.hub import Hub
from factory_mas.messages import Prediction
from factory_mas.settings import Settings
from factory_mas.store import Store
from factory_mas.topics import predictions
from tests.support.app import add_key
from tests.support.dnp3 import INTEGRITY, master
from tests.support.opcua import opcua_session, opcua_write
from tests.support.scada import all_protocols, crob, dnp3_commands, modbus_read, modbus_write
from tests.support.waiting import until

# The three protocol servers listen on loopback ports.
pytestmark = pytest.mark.integration

SETTING = "pm_agent.rul_critical_hours"  # Float, scale 10
ENABLED = "safety_agent.enabled"
ACK = "system.acknowledge_alarm"
OPEN_ALARM = 7


@dataclass
class FakeAgent:
    agent_id: str
    settings: Any
    status: str = "running"
    healthy: bool = True

    def health(self) -> dict[str, Any]:
        return {"status": self.status, "healthy": self.healthy}


@dataclass
class FakePlant:
    """A PlantView whose state the test sets, and a PlantControl that records each call
    and applies it to that state."""

    agents: list[FakeAgent]
    ready: bool = True
    broker_connected: bool = False
    alarm_flood: bool = False
    counts: dict[str, Any] = field(
        default_factory=lambda: {"active": 0, "unacknowledged": 0, "by_level": {}}
    )
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def alarm_counts(self) -> Mapping[str, Any]:
        return self.counts

    def agent(self, agent_id: str) -> FakeAgent:
        found = next((a for a in self.agents if a.agent_id == agent_id), None)
        if found is None:
            raise Refused(f"{agent_id} does not run here")
        return found

    async def change_setting(
        self, agent_id: str, key: str, value: Value, *, by: str, origin: str
    ) -> ConfigResult:
        self.calls.append(("setting", agent_id, key, value, by, origin))
        agent = self.agent(agent_id)
        agent.settings = msgspec.structs.replace(agent.settings, **{key: value})
        return ConfigResult(
            target=agent_id, accepted=True, at=datetime.now(UTC), origin=origin, by=by
        )

    async def set_running(self, agent_id: str, running: bool) -> None:
        self.calls.append(("running", agent_id, running))
        self.agent(agent_id).status = "running" if running else "stopped"

    async def ack_alarm(self, alarm_id: int, *, by: str, note: str) -> None:
        self.calls.append(("ack", alarm_id, by, note))
        if alarm_id != OPEN_ALARM:
            raise Refused(f"no open alarm {alarm_id}")


def fake_plant(settings: Settings) -> FakePlant:
    return FakePlant(
        [
            FakeAgent("pm_agent", settings.agents.pm),
            FakeAgent("safety_agent", settings.agents.safety),
        ]
    )


@asynccontextmanager
async def bridge_on(settings: Settings, plant: FakePlant) -> AsyncIterator[tuple[ScadaBridge, Hub]]:
    hub = Hub(queue_size=settings.hub.queue_size)
    async with Store.from_settings(settings) as store:
        async with ScadaBridge(settings, plant, plant, hub, store) as bridge:
            assert all(s.status()["listening"] for s in bridge.servers), bridge.status()
            yield bridge, hub
        hub.close()


async def trail(bridge: ScadaBridge) -> list[dict[str, Any]]:
    """The SCADA writes in the audit trail, newest first (making a key is in it too)."""
    rows = await bridge.store.read(records.changes, None, None, 100)
    return [r for r in rows if r["origin"].startswith("scada:")]


def opcua_read(settings: Settings, *names: str) -> list[Any]:
    def work(client: Any, idx: int) -> list[Any]:
        return [client.get_node(ua.NodeId(name, idx)).get_value() for name in names]

    return opcua_session(settings, None, work)


def pm_prediction(machine_id: int, failure_probability: float, rul_hours: float) -> Prediction:
    now = datetime.now(UTC)
    return Prediction(
        agent_id="pm_agent",
        machine_id=machine_id,
        record_ts=now,
        produced_at=now,
        model_version="fake",
        level="WARNING",
        # Every field pm_agent's result has, as it would send it.
        result={
            "failure_probability": failure_probability,
            "rul_hours": rul_hours,
            "failure_probability_raw": failure_probability,
            "rul_hours_raw": rul_hours,
            "health_score": 100 * (1 - failure_probability),
            "confidence": 0.9,
            "action": "schedule maintenance",
        },
    )


async def test_the_plant_state_is_served_at_every_protocols_addresses(settings: Settings) -> None:
    s = all_protocols(settings, machines=[1])
    plant = fake_plant(s)
    plant.broker_connected = True
    plant.alarm_flood = True
    plant.counts = {"active": 3, "unacknowledged": 2, "by_level": {"WARNING": 2, "CRITICAL": 1}}
    plant.agent("safety_agent").status = "stopped"
    async with bridge_on(s, plant) as (bridge, hub):
        points = {p.name: p for p in bridge.points}
        await hub.publish(predictions("pm_agent"), pm_prediction(1, 0.42, 123.5), origin="test")
        await until(lambda: bridge.last.get("machine_1.rul_hours") == 123.5, "the prediction")
        rul = s.agents.pm.rul_critical_hours

        # Modbus: one value per two registers, at the point's scale.
        for name, want in [
            ("system.alarms_active", 3),
            ("system.alarms_unacknowledged", 2),
            ("system.alarms_warning", 2),
            ("system.alarms_critical", 1),
            ("system.flood", 1),
            ("system.mqtt_connected", 1),
            ("system.running", 1),
            ("pm_agent.enabled", 1),
            (ENABLED, 0),
            (SETTING, round(rul * points[SETTING].scale)),
            ("machine_1.rul_hours", round(123.5 * points["machine_1.rul_hours"].scale)),
        ]:
            got = await asyncio.to_thread(modbus_read, s, points[name])
            assert got == [want, 0], name

        # OPC UA: the values themselves, typed.
        got = await asyncio.to_thread(
            opcua_read, s, "system.alarms_active", "system.flood", ENABLED, SETTING,
            "machine_1.failure_probability",
        )  # fmt: skip
        assert got[:4] == [3, True, False, pytest.approx(rul)]
        assert got[4] == pytest.approx(42.0)

        # DNP3: an integrity poll, binary and scaled analog inputs.
        with master(s.scada.dnp3_port) as m:
            static = {(k, i): v for k, i, v, event in await m.poll(INTEGRITY) if not event}
        assert static[("AI", points["system.alarms_active"].dnp3_input)] == 3
        assert static[("BI", points["system.flood"].dnp3_input)] is True
        assert static[("BI", points[ENABLED].dnp3_input)] is False
        assert static[("AI", points[SETTING].dnp3_input)] == round(rul * points[SETTING].scale)

        # What the plant says next is what the servers serve next.
        plant.counts = {"active": 0, "unacknowledged": 0, "by_level": {}}
        plant.ready = False
        await until(lambda: bridge.last.get("system.running") is False, "the next refresh")
        for name in ("system.alarms_active", "system.running", "system.alarms_critical"):
            assert await asyncio.to_thread(modbus_read, s, points[name]) == [0, 0], name
    assert plant.calls == []


async def test_writes_reach_the_plants_control_as_their_caller(settings: Settings) -> None:
    s = all_protocols(
        settings, writes_enabled=True, write_clients=["127.0.0.0/8"], write_clients_role="admin"
    )
    operator = await add_key(s, "night-shift", "operator")
    plant = fake_plant(s)
    async with bridge_on(s, plant) as (bridge, _hub):
        points = {p.name: p for p in bridge.points}

        # Modbus, an admin by its address: a setting, through the configurator's port.
        assert await asyncio.to_thread(modbus_write, s, points[SETTING], 300) is None
        [(kind, agent_id, key, value, by, origin)] = plant.calls
        assert (kind, agent_id, key, value) == ("setting", "pm_agent", "rul_critical_hours", 30.0)
        assert origin.startswith("scada:modbus 127.0.0.1:") and by == origin
        # What the plant has in force now is read back.
        await until(lambda: bridge.last.get(SETTING) == 30.0, "the new setting")
        assert await asyncio.to_thread(modbus_read, s, points[SETTING]) == [300, 0]

        # DNP3: a CROB stops an agent; an acknowledgement the plant refuses is blocked.
        plant.calls.clear()
        statuses = await dnp3_commands(
            s, (crob(False), points[ENABLED], False), (o.AnalogOutputInt32(99), points[ACK], True)
        )
        assert statuses == [o.CommandStatus.SUCCESS, o.CommandStatus.BLOCKED]
        assert plant.calls[0] == ("running", "safety_agent", False)
        assert plant.agent("safety_agent").status == "stopped"
        [(kind, alarm_id, by, note)] = plant.calls[1:]
        assert (kind, alarm_id, by) == ("ack", 99, "dnp3 master")
        assert note.startswith("from scada:dnp3 127.0.0.1:")

        # OPC UA: the key's name is who acknowledges; an operator changes no setting.
        plant.calls.clear()
        int32, double = ua.VariantType.Int32, ua.VariantType.Double
        assert await asyncio.to_thread(opcua_write, s, operator, ACK, OPEN_ALARM, int32) == "Good"
        denied = await asyncio.to_thread(opcua_write, s, operator, SETTING, 1.0, double)
        assert denied == "BadUserAccessDenied"
        [(kind, alarm_id, by, note)] = plant.calls
        assert (kind, alarm_id, by) == ("ack", OPEN_ALARM, "night-shift")
        assert note.startswith("from scada:opcua 127.0.0.1:")

        # The audit trail, in the real store: what the configurator did not record (it
        # records settings itself), each with its caller, its role and its peer.
        rows = await trail(bridge)
    seen = [
        (r["origin"].split(" ")[0], r["by"], r["request"]["point"], r["request"]["role"],
         r["accepted"], (r["result"] or {}).get("code"))
        for r in reversed(rows)
    ]  # fmt: skip
    assert seen == [
        ("scada:dnp3", "dnp3 master", ENABLED, "admin", True, None),
        ("scada:dnp3", "dnp3 master", ACK, "admin", False, "rejected"),
        ("scada:opcua", "night-shift", ACK, "operator", True, None),
        ("scada:opcua", "night-shift", SETTING, "operator", False, "forbidden"),
    ]
    assert "no open alarm 99" in rows[-2]["result"]["error"]


async def test_writes_are_refused_while_writes_are_disabled(settings: Settings) -> None:
    s = all_protocols(settings, write_clients=["127.0.0.0/8"], write_clients_role="admin")
    assert not s.scada.writes_enabled
    admin = await add_key(s, "process-engineer", "admin")
    plant = fake_plant(s)
    async with bridge_on(s, plant) as (bridge, _hub):
        points = {p.name: p for p in bridge.points}
        for name, value, vt in [
            (SETTING, 30.0, ua.VariantType.Double),
            (ENABLED, False, ua.VariantType.Boolean),
            (ACK, OPEN_ALARM, ua.VariantType.Int32),
        ]:
            got = await asyncio.to_thread(opcua_write, s, admin, name, value, vt)
            assert got == "BadNotWritable", name
        for name, register in [(SETTING, 300), (ENABLED, 0), (ACK, OPEN_ALARM)]:
            assert await asyncio.to_thread(modbus_write, s, points[name], register) == 2, name
        statuses = await dnp3_commands(
            s,
            (crob(False), points[ENABLED], False),
            (o.AnalogOutputInt32(300), points[SETTING], True),
        )
        assert statuses == [o.CommandStatus.NOT_SUPPORTED] * 2
        rows = await trail(bridge)
    assert plant.calls == []
    assert plant.agent("safety_agent").status == "running"
    assert len(rows) == 8 and not any(r["accepted"] for r in rows)
    assert {r["result"]["code"] for r in rows} == {"read_only"}
    assert {r["origin"].split(" ")[0] for r in rows} == {
        "scada:opcua",
        "scada:modbus",
        "scada:dnp3",
    }
