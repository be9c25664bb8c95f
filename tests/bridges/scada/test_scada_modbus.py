"""Modbus TCP against the whole app in process: a pymodbus client reads the point table's
registers, writes settings, commands and agent switches back, and gets the Modbus exception
codes for what it must not do."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ExceptionResponse

from factory_mas.bridges.scada.modbus import decode, encode
from factory_mas.bridges.scada.points import Point, build_points
from factory_mas.settings import Settings
from tests.support.app import running_app, with_scada
from tests.support.net import free_port
from tests.support.records import record
from tests.support.waiting import until

DEVICE = 3


def modbus_settings(settings: Settings, float32: bool, port: int | None = None) -> Settings:
    """Modbus only, writes open to this test's client with every right (the rights
    themselves are tested in tests/bridges/scada/test_scada_security.py)."""
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
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


@pytest.mark.integration
async def test_other_device_id_gets_no_data(settings: Settings) -> None:
    async with plant(settings, False) as (_components, _client, modbus, points):
        running = points["system.running"]
        response = await modbus.read_input_registers(
            running.modbus_address, count=2, device_id=DEVICE + 1
        )
        assert code(response) == 0x0B  # GATEWAY TARGET DEVICE FAILED TO RESPOND


# -- binding ---------------------------------------------------------------------------


@pytest.mark.integration
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


# -- conformance -------------------------------------------------------------------------


class RawModbus:
    """One Modbus/TCP connection spoken byte by byte: for requests no client library will
    build (a quantity of 0, a byte count that lies, a function code nobody implements)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tid = 0

    def close(self) -> None:
        self.sock.close()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    def ask(self, pdu: bytes, unit: int = DEVICE) -> bytes:
        """The answer's PDU to one request's, the MBAP header checked and stripped."""
        self.tid += 1
        head = self.tid.to_bytes(2, "big") + b"\0\0" + (len(pdu) + 1).to_bytes(2, "big")
        self.sock.sendall(head + bytes([unit]) + pdu)
        answer = self._exactly(7)
        assert answer[:4] == head[:4] and answer[6] == unit, answer
        return self._exactly(int.from_bytes(answer[4:6], "big") - 1)


def _pdu(function_code: int, *words: int, tail: bytes = b"") -> bytes:
    return bytes([function_code]) + b"".join(w.to_bytes(2, "big") for w in words) + tail


# (request PDU, answer PDU): quantities, byte counts and lengths each function forbids are
# 03 ILLEGAL DATA VALUE, unknown functions 01, both with the request's function code.
BAD_REQUESTS = [
    (_pdu(3, 0, 0), b"\x83\x03"),
    (_pdu(3, 0, 126), b"\x83\x03"),
    (_pdu(3, 0, 2, tail=b"\x00"), b"\x83\x03"),  # a byte more than FC3 has
    (_pdu(3, 0), b"\x83\x03"),  # no quantity at all
    (_pdu(4, 0, 0), b"\x84\x03"),
    (_pdu(4, 0, 126), b"\x84\x03"),
    (_pdu(1, 0, 0), b"\x81\x03"),
    (_pdu(1, 0, 2001), b"\x81\x03"),
    (_pdu(2, 0, 0), b"\x82\x03"),
    (_pdu(2, 0, 2001), b"\x82\x03"),
    (_pdu(5, 0, 0x1234), b"\x85\x03"),  # a coil is 0x0000 or 0xFF00
    (_pdu(6, 0, tail=b"\x01"), b"\x86\x03"),  # half a register value
    (_pdu(15, 0, 0, tail=b"\x00"), b"\x8f\x03"),
    (_pdu(15, 0, 1969, tail=b"\xf7" + b"\x00" * 247), b"\x8f\x03"),
    (_pdu(15, 0, 9, tail=b"\x01\x00"), b"\x8f\x03"),  # 9 bits take 2 bytes, not 1
    (_pdu(16, 0, 0, tail=b"\x00"), b"\x90\x03"),
    (_pdu(16, 0, 124, tail=b"\xf8" + b"\x00" * 248), b"\x90\x03"),
    (_pdu(16, 0, 2, tail=b"\x03\x00\x01\x00"), b"\x90\x03"),  # byte count is not 2 x 2
    (_pdu(16, 0, 2, tail=b"\x04\x00\x01"), b"\x90\x03"),  # fewer bytes than it says
    (_pdu(23, 0, 0, 0, 1, tail=b"\x02\x00\x01"), b"\x97\x03"),
    (_pdu(23, 0, 1, 0, 122, tail=b"\xf4" + b"\x00" * 244), b"\x97\x03"),
    (_pdu(0x41, 0, 1), b"\xc1\x01"),  # a function code this server does not implement
    # Serial line only (pymodbus would answer them, FC17 naming itself), no files, no FIFO.
    (bytes([8, 0, 0, 0x12, 0x34]), b"\x88\x01"),
    (bytes([17]), b"\x91\x01"),
    (bytes([20, 7, 6, 0, 1, 0, 0, 0, 1]), b"\x94\x01"),
    (_pdu(24, 0), b"\x98\x01"),
    (bytes([0x2B, 0x0D, 0x00, 0x00]), b"\xab\x01"),  # MEI 13 (CANopen) is not offered
    (bytes([0x2B, 0x0E, 0x05, 0x00]), b"\xab\x03"),  # Read Device ID code 5 does not exist
    (bytes([0x2B, 0x0E, 0x01]), b"\xab\x03"),  # no object id
    (bytes([0x2B]), b"\xab\x03"),  # no MEI type
    (bytes([0x2B, 0x0E, 0x04, 0x03]), b"\xab\x02"),  # individual access to an absent object
]


@pytest.mark.integration
async def test_malformed_requests_get_the_standards_exception_codes(settings: Settings) -> None:
    s = modbus_settings(settings, False)
    points = {p.name: p for p in build_points(s)}
    running = points["system.running"]
    inputs = 2 * sum(not p.writable for p in points.values())

    def session() -> list[tuple[bytes, bytes]]:
        raw = RawModbus(s.scada.modbus_port)
        try:
            got = [(request, raw.ask(request)) for request, _want in BAD_REQUESTS]
            # The largest legal quantities pass the checks and meet the table's end (02).
            assert inputs < 125
            got.append((_pdu(4, 0, 125), raw.ask(_pdu(4, 0, 125))))
            # The connection is still served after all of it.
            ok = raw.ask(_pdu(4, running.modbus_address, 2))
            return [*got, (b"read", ok)]
        finally:
            raw.close()

    async with running_app(s) as (_components, _client):
        answers = await asyncio.to_thread(session)
    want = [*BAD_REQUESTS, (_pdu(4, 0, 125), b"\x84\x02")]
    assert answers[:-1] == want
    assert answers[-1][1][:2] == b"\x04\x04"  # FC4, four bytes of registers follow


def pymodbustcp(port: int, unit: int) -> Any:
    from pyModbusTCP.client import ModbusClient

    return ModbusClient("127.0.0.1", port, unit_id=unit, timeout=10)


@pytest.mark.integration
@pytest.mark.parametrize("extra", [None, []], ids=["default", "none"])
async def test_unit_ids_0_and_255_address_this_device(
    settings: Settings, extra: list[int] | None
) -> None:
    s = modbus_settings(settings, False)
    if extra is not None:
        scada = msgspec.structs.replace(s.scada, modbus_extra_unit_ids=extra)
        s = msgspec.structs.replace(s, scada=scada)
    running = {p.name: p for p in build_points(s)}["system.running"]

    def read_as(unit: int) -> list[int] | int:
        client = pymodbustcp(s.scada.modbus_port, unit)
        try:
            regs = client.read_input_registers(running.modbus_address, 2)
            return regs if regs is not None else client.last_except
        finally:
            client.close()

    async def running_read() -> bool:
        return await asyncio.to_thread(read_as, DEVICE) == [1, 0]

    async with running_app(s) as (components, _client):
        await until(running_read, "system.running = 1")
        answers = {unit: await asyncio.to_thread(read_as, unit) for unit in (0, 255, 4, 254)}
        unit_ids = components.scada.status()["servers"]["modbus"]["unit_ids"]
    if extra is None:
        assert answers[0] == answers[255] == [1, 0]
        assert unit_ids == [0, DEVICE, 255]
    else:
        assert answers[0] == answers[255] == 0x0B
        assert unit_ids == [DEVICE]
    assert answers[4] == answers[254] == 0x0B  # GATEWAY TARGET DEVICE FAILED TO RESPOND


@pytest.mark.integration
async def test_read_device_identification(settings: Settings) -> None:
    from factory_mas import __version__

    s = modbus_settings(settings, False)
    basic = {0: b"factory_mas project", 1: b"factory_mas", 2: __version__.encode()}
    regular = {**basic, 4: b"factory_mas smart-factory monitoring backend",
               5: b"SCADA bridge (Modbus TCP)"}  # fmt: skip

    def identify(read_code: int, object_id: int = 0, unit: int = DEVICE) -> Any:
        client = pymodbustcp(s.scada.modbus_port, unit)
        try:
            answer = client.read_device_identification(read_code, object_id)
            if answer is None:
                return client.last_except
            return (answer.conformity_level, answer.more_follows, answer.next_object_id,
                    answer.objects_by_id)  # fmt: skip
        finally:
            client.close()

    asks = [(1,), (2,), (3,), (2, 4), (1, 0x40), (4, 2), (4, 5), (4, 3), (4, 0x80), (1, 0, 255)]
    async with running_app(s):
        got = {args: await asyncio.to_thread(identify, *args) for args in asks}
    assert got[(1,)] == (0x82, 0, 0, basic)  # stream access, basic objects
    assert got[(2,)] == got[(3,)] == (0x82, 0, 0, regular)  # no extended objects exist
    assert got[(2, 4)] == (0x82, 0, 0, {4: regular[4], 5: regular[5]})  # from object 4 on
    assert got[(1, 0x40)] == got[(1,)]  # an unknown first object starts the stream over
    assert got[(4, 2)] == (0x82, 0, 0, {2: basic[2]})  # individual access
    assert got[(4, 5)] == (0x82, 0, 0, {5: regular[5]})
    assert got[(4, 3)] == got[(4, 0x80)] == 2  # ILLEGAL DATA ADDRESS: no such object
    assert got[(1, 0, 255)] == got[(1,)]
