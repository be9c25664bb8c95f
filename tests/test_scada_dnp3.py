"""The DNP3 outstation, driven by a master from another implementation (opendnp3/yadnp3).

The master runs its own threads; every wait here is an `await`, because the outstation's
commands are applied on this test's event loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import opendnp3 as o
import pytest

from factory_mas.bridges.scada.points import build_points
from factory_mas.settings import Settings

from .conftest import free_port, running_app, until, with_scada

OUTSTATION, MASTER = 10, 1


def dnp3_only(settings: Settings, **overrides: object) -> Settings:
    """DNP3 only, commands open to this test's master with every right (the rights
    themselves are tested in tests/test_scada_security.py)."""
    writes: dict[str, object] = {
        "writes_enabled": True,
        "write_clients": ["127.0.0.1"],
        "write_clients_role": "admin",
    }
    return with_scada(
        settings,
        dnp3_enabled=True,
        dnp3_port=free_port(),
        dnp3_outstation_address=OUTSTATION,
        dnp3_master_address=MASTER,
        **{**writes, **overrides},
    )


class Collector(o.ISOEHandler):
    """Every measurement the master receives: (kind, index, value, is_event)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.seen: list[tuple[str, int, Any, bool]] = []

    def BeginFragment(self, info: Any) -> None:
        pass

    def EndFragment(self, info: Any) -> None:
        pass

    def Process(self, info: Any, values: list) -> None:
        kinds = {o.Binary: "BI", o.Analog: "AI", o.BinaryOutputStatus: "BO",
                 o.AnalogOutputStatus: "AO"}  # fmt: skip
        with self.lock:
            for item in values:
                kind = kinds.get(type(item.value))
                if kind is not None:
                    self.seen.append((kind, item.index, item.value.value, info.isEventVariation))

    def take(self) -> list[tuple[str, int, Any, bool]]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen


class App(o.IMasterApplication):
    def __init__(self) -> None:
        super().__init__()
        self.user_tasks_done = 0

    def OnReceiveIIN(self, iin: Any) -> None:
        pass

    def OnTaskStart(self, type: Any, id: Any) -> None:
        pass

    def OnTaskComplete(self, info: Any) -> None:
        if info.type == o.MasterTaskType.USER_TASK:
            self.user_tasks_done += 1

    def OnOpen(self) -> None:
        pass

    def OnClose(self) -> None:
        pass

    def AssignClassDuringStartup(self) -> bool:
        return False

    def Now(self) -> Any:
        return o.UTCTimestamp(int(time.time() * 1000))


class Master:
    """An opendnp3 master on loopback; its calls return at once, answers come by polling."""

    def __init__(self, port: int) -> None:
        self.manager = o.DNP3Manager(1)
        self.channel = self.manager.AddTCPClient(
            "client", o.levels.NOTHING, o.ChannelRetry.Default(),
            [o.IPEndpoint("127.0.0.1", port)], "0.0.0.0", None,
        )  # fmt: skip
        self.soe = Collector()
        self.app = App()
        config = o.MasterStackConfig()
        config.master.disableUnsolOnStartup = True
        config.master.responseTimeout = o.TimeDuration.Seconds(15)
        config.link.LocalAddr = MASTER
        config.link.RemoteAddr = OUTSTATION
        self.master = self.channel.AddMaster("master", self.soe, self.app, config)
        self.master.Enable()

    def shutdown(self) -> None:
        self.master.Disable()
        self.manager.Shutdown()

    async def poll(self, classes: Any) -> list[tuple[str, int, Any, bool]]:
        """One class scan; what it returned once the task has completed."""
        self.soe.take()
        done = self.app.user_tasks_done
        self.master.ScanClasses(classes, self.soe)
        await until(lambda: self.app.user_tasks_done > done, "the scan to finish")
        return self.soe.take()

    async def operate(self, command: Any, index: int, *, select: bool = False) -> list:
        """The outstation's statuses for one command. A command issued before the link is
        up (a loaded machine connects late) fails with no answer from the outstation at
        all (FAILURE_NO_COMMS, status UNDEFINED); it is sent again until it is answered."""
        deadline = time.monotonic() + 20.0
        while True:
            answers: list = []
            if select:
                self.master.SelectAndOperate(command, index, answers.append)
            else:
                self.master.DirectOperate(command, index, answers.append)
            await until(lambda got=answers: got, f"an answer to the command on {index}")
            unanswered = answers[0].summary == o.TaskCompletion.FAILURE_NO_COMMS
            if not unanswered or time.monotonic() > deadline:
                return [r.status for r in answers[0].to_list()]
            await asyncio.sleep(0.1)


@contextmanager
def master(port: int) -> Iterator[Master]:
    m = Master(port)
    try:
        yield m
    finally:
        m.shutdown()


INTEGRITY = o.ClassField(True, True, True, True)
CLASS_1 = o.ClassField(False, True, False, False)


async def point_values(client) -> dict[str, Any]:
    points = (await client.get("/api/scada/points")).json()["points"]
    return {p["name"]: p["value"] for p in points}


async def test_integrity_poll_events_and_commands(settings):
    s = dnp3_only(settings)
    points = {p.name: p for p in build_points(s)}
    async with running_app(s) as (components, client):
        server = components.scada.servers[0]
        assert server.status()["listening"] and server.status()["error"] is None
        await until(lambda: components.scada.last.get("system.running"), "system.running")
        with master(s.scada.dnp3_port) as m:
            # Integrity poll: every input, matching what /api/scada/points says.
            seen = await m.poll(INTEGRITY)
            static = {(k, i): v for k, i, v, event in seen if not event}
            values = await point_values(client)
            running = points["system.running"]
            assert static[("BI", running.dnp3_input)] is True
            rul = points["pm_agent.rul_critical_hours"]
            assert static[("AI", rul.dnp3_input)] == round(values[rul.name] * rul.scale)
            assert static[("AO", rul.dnp3_output)] == round(values[rul.name] * rul.scale)
            enabled = points["pm_agent.enabled"]
            assert static[("BO", enabled.dnp3_output)] is True
            binary = [p for p in points.values() if p.type == "Boolean"]
            assert sum(k == "BI" for k, _ in static) == len(binary)
            assert sum(k == "AI" for k, _ in static) == len(points) - len(binary)

            # A change is a class 1 event.
            await m.poll(CLASS_1)  # drain whatever changed since startup
            alert = {"level": "CRITICAL", "type": "FIRE_RISK", "source": "plc", "details": "x",
                     "machine_id": 2}  # fmt: skip
            assert (await client.post("/api/orchestrator/alert", json=alert)).status_code == 202
            active = points["system.alarms_active"]

            events: list = []
            for _ in range(50):  # the next refresh (50 ms) turns the alarm into an event
                seen = await m.poll(CLASS_1)
                events = [v for k, i, v, ev in seen if ev and (k, i) == ("AI", active.dnp3_input)]
                if events:
                    break
                await asyncio.sleep(0.1)
            assert events and events[-1] == 1

            # CROB on pm_agent.enabled: LATCH_OFF stops the agent, LATCH_ON starts it.
            off = o.ControlRelayOutputBlock(o.OperationType.LATCH_OFF)
            assert await m.operate(off, enabled.dnp3_output) == [o.CommandStatus.SUCCESS]
            health = (await client.get("/api/pm/health")).json()
            assert health["status"] == "stopped"
            on = o.ControlRelayOutputBlock(o.OperationType.LATCH_ON)
            statuses = await m.operate(on, enabled.dnp3_output, select=True)
            assert statuses == [o.CommandStatus.SUCCESS]
            assert (await client.get("/api/pm/health")).json()["status"] == "running"

            # Analog output on a setting, in the table's scaled units (scale 10: 360 -> 36 h).
            ao = o.AnalogOutputInt32(360)
            assert await m.operate(ao, rul.dnp3_output) == [o.CommandStatus.SUCCESS]
            pm = (await client.get("/api/pm/status")).json()
            assert pm["settings"]["rul_critical_hours"] == 36
            await until(
                lambda: components.scada.last.get(rul.name) == 36, "the setting to read back"
            )

            # Refusals: out of range, wrong type, an unmapped index, a CROB we do not do.
            threshold = points["energy_agent.anomaly_score_threshold"]  # 0..1, scale 1000
            too_big = o.AnalogOutputInt32(1500)
            out = threshold.dnp3_output
            assert await m.operate(too_big, out) == [o.CommandStatus.OUT_OF_RANGE]
            assert await m.operate(too_big, out, select=True) == [o.CommandStatus.OUT_OF_RANGE]
            runs = points["cyber_agent.high_after_anomalies"]
            half = o.AnalogOutputFloat32(2.5)
            assert await m.operate(half, runs.dnp3_output) == [o.CommandStatus.FORMAT_ERROR]
            assert await m.operate(on, 999) == [o.CommandStatus.NOT_SUPPORTED]
            assert await m.operate(o.AnalogOutputInt32(1), 999) == [o.CommandStatus.NOT_SUPPORTED]
            nul = o.ControlRelayOutputBlock(o.OperationType.NUL)
            assert await m.operate(nul, enabled.dnp3_output) == [o.CommandStatus.NOT_SUPPORTED]
            assert (await client.get("/api/pm/status")).json()["settings"][
                "rul_critical_hours"
            ] == 36

        assert server.status()["commands"] == {"selected": 1, "operated": 3, "refused": 6}
        changes = (await client.get("/api/config/changes?limit=100")).json()["changes"]
    from_dnp3 = [c for c in changes if c["origin"].startswith("scada:dnp3 127.0.0.1:")]
    assert {c["by"] for c in from_dnp3} == {"dnp3 master"}
    # stop, start, the setting; two out of range, wrong type, two unmapped, a NUL CROB.
    assert sum(c["accepted"] for c in from_dnp3) == 3
    assert sum(not c["accepted"] for c in from_dnp3) == 6
    codes = sorted(c["result"]["code"] for c in from_dnp3 if not c["accepted"])
    assert codes == sorted(
        ["out_of_range", "out_of_range", "wrong_type", "not_found", "not_found", "wrong_type"]
    )


async def test_a_port_in_use_is_reported_and_the_app_keeps_running(settings):
    s = dnp3_only(settings)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", s.scada.dnp3_port))
        taken.listen()
        async with running_app(s) as (components, client):
            status = components.scada.servers[0].status()
            assert not status["listening"] and str(s.scada.dnp3_port) in status["error"]
            health = (await client.get("/health")).json()
            assert any(p.startswith("dnp3:") for p in health["components"]["scada"])
            assert (await client.get("/api/pm/health")).json()["status"] == "running"


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    stray = [t for t in set(threading.enumerate()) - before if t.name == "dnp3-outstation"]
    assert not stray, "the outstation's thread outlived the app"
