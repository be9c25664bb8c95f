"""Modbus TCP against the whole app in process: a pymodbus client reads the point table's
registers, writes settings, commands and agent switches back, and gets the Modbus exception
codes for what it must not do."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from factory_mas.bridges.scada.modbus import decode, encode
from factory_mas.bridges.scada.points import Point, build_points
from factory_mas.settings import Settings

from .conftest import free_port, record, running_app, with_scada

DEVICE = 3


def modbus_settings(settings: Settings, float32: bool, port: int | None = None) -> Settings:
    """Modbus only, writes open to this test's client with every right (the rights
    themselves are tested in tests/test_scada_security.py)."""
    return with_scada(
        settings,
        modbus_enabled=True,
        modbus_port=port or free_port(),
        modbus_device_id=DEVICE,
        modbus_float32=float32,
        writes_enabled=True,
        write_clients=["127.0.0.1"],
        write_clients_role="admin",
    )


@asynccontextmanager
async def plant(
    settings: Settings, float32: bool
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, AsyncModbusTcpClient, dict[str, Point]]]:
    s = modbus_settings(settings, float32)
    points = {p.name: p for p in build_points(s)}
    async with running_app(s) as (components, client):
        modbus = AsyncModbusTcpClient("127.0.0.1", port=s.scada.modbus_port, timeout=5)
        assert await modbus.connect()
        try:
            yield components, client, modbus, points
        finally:
            modbus.close()


async def until(predicate: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def read(modbus: AsyncModbusTcpClient, point: Point, float32: bool) -> float:
    fn = modbus.read_holding_registers if point.writable else modbus.read_input_registers
    response = await fn(point.modbus_address, count=2, device_id=DEVICE)
    assert not response.isError(), response
    if float32:
        value = modbus.convert_from_registers(response.registers, modbus.DATATYPE.FLOAT32)
        return float(value)  # type: ignore[arg-type]
    assert response.registers[1] == 0
    return response.registers[0] / point.scale


def registers(point: Point, value: float, float32: bool) -> list[int]:
    if float32:
        return AsyncModbusTcpClient.convert_to_registers(
            float(value), AsyncModbusTcpClient.DATATYPE.FLOAT32
        )
    return [round(value * point.scale)]


async def write(
    modbus: AsyncModbusTcpClient, point: Point, value: float, float32: bool
) -> ExceptionResponse | None:
    regs = registers(point, value, float32)
    if len(regs) == 1:
        response = await modbus.write_register(point.modbus_address, regs[0], device_id=DEVICE)
    else:
        response = await modbus.write_registers(point.modbus_address, regs, device_id=DEVICE)
    return response if response.isError() else None


async def changes(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/config/changes", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return response.json()["changes"]


def code(response: Any) -> int:
    assert isinstance(response, ExceptionResponse), response
    return response.exception_code


# -- encoding --------------------------------------------------------------------------


def test_encoding_scales_clamps_and_packs_floats(settings: Settings) -> None:
    points = {p.name: p for p in build_points(settings)}
    rul = points["pm_agent.worst_rul_hours"]
    assert encode(rul, 36.26, float32=False) == [363, 0]
    assert encode(rul, 1e6, float32=False) == [0xFFFF, 0]  # saturates, no wrap-around
    assert encode(rul, -5, float32=False) == [0, 0]
    assert encode(points["system.running"], True, float32=False) == [1, 0]
    assert encode(rul, 36.25, float32=True) == list(struct.unpack(">HH", struct.pack(">f", 36.25)))
    assert decode(rul, [363, 0], float32=False) == pytest.approx(36.3)
    assert decode(points["system.acknowledge_alarm"], [42, 0], float32=False) == 42
    assert decode(rul, encode(rul, 36.25, float32=True), float32=True) == 36.25


# -- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize("float32", [False, True], ids=["int", "float32"])
async def test_reads_live_values_and_thresholds(settings: Settings, float32: bool) -> None:
    async with plant(settings, float32) as (components, client, modbus, points):
        status = components.scada.status()["servers"]["modbus"]
        assert status["listening"] and status["error"] is None and status["float32"] is float32
        assert status["device_id"] == DEVICE
        running = points["system.running"]
        await until(lambda: _equals(read(modbus, running, float32), 1), "system.running = 1")

        # Thresholds are holding registers at their scale.
        pm = components.settings.agents.pm
        got = await read(modbus, points["pm_agent.rul_critical_hours"], float32)
        assert got == pytest.approx(pm.rul_critical_hours, abs=0.05)
        got = await read(modbus, points["pm_agent.failure_probability_emergency"], float32)
        assert got == pytest.approx(pm.failure_probability_emergency, abs=0.0005)
        assert await read(modbus, points["pm_agent.enabled"], float32) == 1

        # An alert makes an alarm; the count reaches the input registers.
        alert = {"level": "CRITICAL", "type": "FIRE_RISK", "source": "plc-9", "details": "smoke"}
        assert (await client.post("/api/orchestrator/alert", json=alert)).status_code == 202
        active = points["system.alarms_active"]
        await until(lambda: _equals(read(modbus, active, float32), 1), "alarms_active = 1")

        # Records scored by pm_agent: the worst RUL, decoded, is the agents' own.
        posted = await client.post("/api/pm/predict", json=[record(1), record(2)])
        assert posted.status_code == 200, posted.text
        body = posted.json()
        predictions = body["predictions"] if isinstance(body, dict) else body
        worst = min(p["result"]["rul_hours"] for p in predictions)
        tolerance = 1e-3 * worst if float32 else 0.05
        rul = points["pm_agent.worst_rul_hours"]
        await until(
            lambda: _close(read(modbus, rul, float32), min(worst, 6553.5), tolerance),
            "worst RUL on Modbus",
        )
        # A whole block in one request: every point of it decodes from its own pair.
        machine = points["machine_1.rul_hours"]
        block = await modbus.read_input_registers(active.modbus_address, count=8, device_id=DEVICE)
        assert not block.isError() and len(block.registers) == 8
        assert machine.modbus_address > active.modbus_address


async def _equals(value: Any, expected: float) -> bool:
    return await value == expected


async def _close(value: Any, expected: float, tolerance: float) -> bool:
    return abs(await value - expected) <= tolerance


# -- writing ---------------------------------------------------------------------------


@pytest.mark.parametrize("float32", [False, True], ids=["int", "float32"])
async def test_writes_a_setting_and_refuses_bad_writes(settings: Settings, float32: bool) -> None:
    async with plant(settings, float32) as (components, client, modbus, points):
        critical = points["pm_agent.rul_critical_hours"]
        assert await write(modbus, critical, 30.5, float32) is None
        status = (await client.get("/api/pm/status")).json()
        assert status["settings"]["rul_critical_hours"] == 30.5
        assert await read(modbus, critical, float32) == 30.5
        [row] = [
            c for c in await changes(client) if c["origin"].startswith("scada:modbus 127.0.0.1:")
        ]
        assert row["accepted"] and row["target"] == "pm_agent"

        # Unmapped address: beyond the holding table.
        holding = [p for p in points.values() if p.writable]
        beyond = max(p.modbus_address for p in holding) + 2
        assert code(await modbus.write_register(beyond, 1, device_id=DEVICE)) == 2
        assert code(await modbus.read_holding_registers(beyond, count=2, device_id=DEVICE)) == 2
        inputs = [p for p in points.values() if not p.writable]
        past = max(p.modbus_address for p in inputs) + 2
        assert code(await modbus.read_input_registers(past, count=1, device_id=DEVICE)) == 2
        # An input register's point written with FC6 (its address is no holding register).
        read_only = points["machine_1.rul_hours"]
        assert read_only.modbus_address >= beyond
        assert code(await modbus.write_register(read_only.modbus_address, 5, device_id=DEVICE)) == 2
        # The second register of a point, and half a float.
        assert (
            code(await modbus.write_register(critical.modbus_address + 1, 5, device_id=DEVICE)) == 2
        )
        if float32:
            assert (
                code(await modbus.write_register(critical.modbus_address, 0x4200, device_id=DEVICE))
                == 2
            )
        # Out of range, wrong type (2 to a Boolean), refused by the agent's own rules.
        emergency = points["pm_agent.failure_probability_emergency"]
        assert code(await write(modbus, emergency, 2.0, float32)) == 3
        assert code(await write(modbus, points["pm_agent.enabled"], 2, float32)) == 3
        assert code(await write(modbus, critical, 500.0, float32)) == 3  # above the warning
        # None of it took.
        status = (await client.get("/api/pm/status")).json()
        assert status["settings"]["rul_critical_hours"] == 30.5
        assert status["settings"]["failure_probability_emergency"] == 0.8
        assert await read(modbus, critical, float32) == 30.5

        refused = [
            c for c in await changes(client) if c["origin"].startswith("scada:modbus 127.0.0.1:")
        ]
        refused = [c for c in refused if not c["accepted"]]
        codes = {(c["result"] or {}).get("code") for c in refused}
        assert {"out_of_range", "wrong_type", "read_only", "not_found"} <= codes, refused
        writes = components.scada.status()["servers"]["modbus"]["writes"]
        assert writes["accepted"] == 1 and writes["refused"] >= 6


@pytest.mark.parametrize("float32", [False, True], ids=["int", "float32"])
async def test_enabled_register_stops_and_starts_an_agent(
    settings: Settings, float32: bool
) -> None:
    async with plant(settings, float32) as (_components, client, modbus, points):
        enabled = points["pm_agent.enabled"]
        assert await write(modbus, enabled, 0, float32) is None
        health = await client.get("/api/pm/health")
        assert health.json()["status"] != "running"
        await until(lambda: _equals(read(modbus, enabled, float32), 0), "enabled reads 0")
        assert await write(modbus, enabled, 1, float32) is None
        health = await client.get("/api/pm/health")
        assert health.status_code == 200 and health.json()["status"] == "running"
        assert await read(modbus, enabled, float32) == 1


async def test_acknowledges_an_alarm(settings: Settings) -> None:
    async with plant(settings, False) as (_components, client, modbus, points):
        alert = {"level": "WARNING", "type": "GAS", "source": "plc-4", "details": "CO high"}
        assert (await client.post("/api/orchestrator/alert", json=alert)).status_code == 202

        async def alarm() -> dict | None:
            alarms = (await client.get("/api/orchestrator/alarms")).json()["alarms"]
            return alarms[0] if alarms else None

        first = await until(alarm, "the alarm")
        assert first["state"] == "ACTIVE_UNACK"
        ack = points["system.acknowledge_alarm"]
        assert await write(modbus, ack, first["id"], False) is None
        now = await alarm()
        assert now is not None and now["state"] == "ACTIVE_ACK"
        assert await read(modbus, ack, False) == first["id"]
        # Acknowledging an alarm that does not exist is refused as a bad value.
        assert code(await write(modbus, ack, first["id"] + 1000, False)) == 3


async def test_other_device_id_gets_no_data(settings: Settings) -> None:
    async with plant(settings, False) as (_components, _client, modbus, points):
        running = points["system.running"]
        response = await modbus.read_input_registers(
            running.modbus_address, count=2, device_id=DEVICE + 1
        )
        assert code(response) == 0x0B  # GATEWAY TARGET DEVICE FAILED TO RESPOND


# -- binding ---------------------------------------------------------------------------


async def test_port_in_use_keeps_the_app_running(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = modbus_settings(settings, False, port=port)
        async with running_app(s) as (components, client):
            status = components.scada.status()["servers"]["modbus"]
            assert not status["listening"] and str(port) in status["error"]
            health = await client.get("/health")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded"
            [problem] = body["components"]["scada"]
            assert problem.startswith("modbus:") and str(port) in problem
            posted = await client.post("/api/pm/predict", json=record(1))
            assert posted.status_code == 200
