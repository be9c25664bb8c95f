"""The DNP3 outstation, driven by a master from another implementation (opendnp3/yadnp3).

The master runs its own threads; every wait here is an `await`, because the outstation's
commands are applied on this test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import opendnp3 as o
import pytest

from factory_mas.bridges.scada.points import Point, build_points
from factory_mas.settings import Settings
from tests.support.app import running_app, with_scada
from tests.support.dnp3 import (
    INTEGRITY,
    MASTER,
    OUTSTATION,
    Master,
    master,
)
from tests.support.net import free_port
from tests.support.waiting import until

# A real DNP3 master talks to the outstation over TCP.
pytestmark = pytest.mark.integration


def dnp3_only(settings: Settings, **overrides: object) -> Settings:
    """DNP3 only, commands open to this test's master with every right (the rights
    themselves are tested in tests/bridges/scada/test_scada_security.py)."""
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


# -- conformance (IEEE 1815-2012) --------------------------------------------------------


def at_ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


async def loaded(m: Master, points: dict[str, Point]) -> None:
    """The outstation holds the application's values: its first poll says running."""
    running = points["system.running"].dnp3_input
    for _ in range(100):
        seen = await m.poll(INTEGRITY)
        if ("BI", running, True, False) in seen:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the outstation never reported system.running")


async def test_reads_honour_range_and_variation(settings):
    s = dnp3_only(settings)
    points = {p.name: p for p in build_points(s)}
    analog = sorted((p for p in points.values() if p.type != "Boolean"), key=lambda p: p.dnp3_input)
    binary = sorted((p for p in points.values() if p.type == "Boolean"), key=lambda p: p.dnp3_input)
    async with running_app(s) as (_, client):
        with master(s.scada.dnp3_port) as m:
            await loaded(m, points)
            values = await point_values(client)

            def expected(p: Point) -> float:
                return round(values[p.name] * p.scale)

            # A start-stop range in float (g30v5): those points and no others.
            seen, iin = await m.scan(o.Header.Range8(30, 5, 1, 3))
            assert iin == frozenset()
            assert [(gv, i) for gv, i, _, _ in seen] == [(o.GroupVariation.Group30Var5, i)
                                                         for i in (1, 2, 3)]  # fmt: skip
            stable = {p.dnp3_input: p for p in analog if p.writable}
            for _, index, value, _ in seen:
                if index in stable:
                    assert value == expected(stable[index])
            for variation in (1, 2, 3, 4, 6):
                seen, iin = await m.scan(o.Header.Range16(30, variation, 0, 1))
                gv = getattr(o.GroupVariation, f"Group30Var{variation}")
                assert [(g, i) for g, i, _, _ in seen] == [(gv, 0), (gv, 1)] and iin == frozenset()
            # Count-limited (the first n points), all points, index lists.
            seen, _ = await m.scan(o.Header.Count8(30, 1, 2))
            assert [i for _, i, _, _ in seen] == [0, 1]
            seen, _ = await m.scan(o.Header.AllObjects(30, 0))
            assert len(seen) == len(analog)
            assert {gv for gv, *_ in seen} == {o.GroupVariation.Group30Var1}
            # Binary inputs, packed (g1v1) and with flags (g1v2).
            last = binary[-1].dnp3_input
            seen, iin = await m.scan(o.Header.Range8(1, 1, 0, last))
            assert [(gv, i) for gv, i, _, _ in seen] == [(o.GroupVariation.Group1Var1, i)
                                                         for i in range(last + 1)]  # fmt: skip
            running = points["system.running"].dnp3_input
            assert [v for _, i, v, _ in seen if i == running] == [True]
            seen, _ = await m.scan(o.Header.Range8(1, 2, running, running))
            assert [(gv, i, v) for gv, i, v, _ in seen] == [(o.GroupVariation.Group1Var2, running,
                                                             True)]  # fmt: skip

            # Points that do not exist: the ones that do, and IIN2.2.
            seen, iin = await m.scan(o.Header.Range16(30, 1, len(analog) - 1, 400))
            assert [i for _, i, _, _ in seen] == [len(analog) - 1]
            assert iin == {"PARAM_ERROR"}
            # A variation or group we do not serve: IIN2.1.
            for group, variation in ((30, 9), (1, 3), (20, 1), (32, 9)):
                seen, iin = await m.scan(o.Header.AllObjects(group, variation))
                assert seen == [] and iin == {"OBJECT_UNKNOWN"}, (group, variation)


async def test_events_carry_their_time(settings):
    s = dnp3_only(settings)
    points = {p.name: p for p in build_points(s)}
    rul, enabled = points["pm_agent.rul_critical_hours"], points["pm_agent.enabled"]
    async with running_app(s) as (components, _client):
        server = components.scada.servers[0]
        with master(s.scada.dnp3_port) as m:
            await loaded(m, points)
            first = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
            second = first + timedelta(seconds=1.5)
            server.update({rul.name: 77.7}, {rul.name}, first)
            server.update({enabled.name: False}, {enabled.name}, first)
            server.update({rul.name: 88.8}, {rul.name}, second)

            events: list = []
            for _ in range(100):  # the updates reach the outstation's loop in their order
                await m.poll(CLASS_1)
                mine = (rul.dnp3_input, enabled.dnp3_input)
                events += [d for d in m.soe.take_details() if d[1] in mine]
                if len(events) >= 3:
                    break
                await asyncio.sleep(0.05)
            assert (o.GroupVariation.Group32Var3, rul.dnp3_input, 777, at_ms(first)) in events
            assert (o.GroupVariation.Group32Var3, rul.dnp3_input, 888, at_ms(second)) in events
            assert (o.GroupVariation.Group2Var2, enabled.dnp3_input, False, at_ms(first)) in events

            # Other event variations on request: float with time, and without time.
            server.update({rul.name: 99.9}, {rul.name}, second)
            found: list = []
            for _ in range(100):
                seen, _ = await m.scan(o.Header.AllObjects(32, 7))
                found += [d for d in seen if d[1] == rul.dnp3_input]
                if found:
                    break
                await asyncio.sleep(0.05)
            assert found == [(o.GroupVariation.Group32Var7, rul.dnp3_input, 999, at_ms(second))]


async def test_overflow_clears_and_the_master_stops_integrity_polling(settings):
    s = dnp3_only(settings)
    points = {p.name: p for p in build_points(s)}
    rul = points["pm_agent.rul_critical_hours"]
    integrity = o.MasterTaskType.STARTUP_INTEGRITY_POLL
    async with running_app(s) as (components, _client):
        server = components.scada.servers[0]
        room = server.outstation.database.event_buffer.class1.max_size
        with master(s.scada.dnp3_port) as m:  # opendnp3's defaults: integrity poll on IIN2.3
            await loaded(m, points)
            now = datetime.now(UTC)
            buffer = server.outstation.database.event_buffer
            for n in range(room + 20):
                server.update({rul.name: 1000 + n}, {rul.name}, now)
            await until(lambda: buffer.has_overflow, "the event buffer to overflow")
            with m.app.lock:
                before = len(m.app.iins)
            await m.poll(CLASS_1)

            def overflow_cleared() -> bool:
                with m.app.lock:
                    iins = m.app.iins[before:]
                flagged = [i for i, bits in enumerate(iins) if "EVENT_BUFFER_OVERFLOW" in bits]
                return bool(flagged) and any(
                    "EVENT_BUFFER_OVERFLOW" not in bits for bits in iins[flagged[0] :]
                )

            await until(overflow_cleared, "IIN2.3 to be reported, then cleared")
            # The integrity poll the overflow asked for has run (its response was the clear
            # one): three polls later the master has started no other, and no response
            # carries IIN2.3 any more.
            with m.app.lock:
                polls, seen = m.app.started.get(integrity, 0), len(m.app.iins)
            for _ in range(3):
                await m.poll(CLASS_1)
            with m.app.lock:
                assert m.app.started.get(integrity, 0) == polls
                assert not any("EVENT_BUFFER_OVERFLOW" in bits for bits in m.app.iins[seen:])


def crc(data: bytes) -> bytes:
    """DNP3's link CRC (IEEE 1815-2012 9.2.5), written here so the framing under test is
    checked by another implementation than the outstation's own."""
    value = 0
    for octet in data:
        value ^= octet
        for _ in range(8):
            value = (value >> 1) ^ 0xA6BC if value & 1 else value >> 1
    return (~value & 0xFFFF).to_bytes(2, "little")


class RawMaster:
    """A master that sends application fragments as they are given and never confirms
    on its own, to see what the outstation does with an unconfirmed response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.transport_seq = 0

    async def send(self, apdu: bytes) -> None:
        user = bytes([0xC0 | self.transport_seq]) + apdu  # FIR FIN, one segment
        self.transport_seq = (self.transport_seq + 1) % 64
        # DIR PRM, unconfirmed user data, from MASTER to OUTSTATION.
        header = bytes([0x05, 0x64, 5 + len(user), 0xC4]) + OUTSTATION.to_bytes(2, "little")
        frame = header + MASTER.to_bytes(2, "little")
        frame += crc(frame)
        for i in range(0, len(user), 16):
            frame += user[i : i + 16] + crc(user[i : i + 16])
        self.writer.write(frame)
        await self.writer.drain()

    async def response(self) -> bytes:
        """The next whole application fragment (link and transport headers off)."""
        apdu = b""
        while True:
            header = await asyncio.wait_for(self.reader.readexactly(10), 20)
            assert header[:2] == b"\x05\x64" and crc(header[:8]) == header[8:]
            left, user = header[2] - 5, b""
            while left:
                block = await self.reader.readexactly(min(left, 16) + 2)
                assert crc(block[:-2]) == block[-2:]
                user, left = user + block[:-2], left - len(block) + 2
            apdu += user[1:]
            if user[0] & 0x80:  # FIN
                return apdu

    async def request(self, seq: int, function: int, objects: bytes = b"") -> bytes:
        await self.send(bytes([0xC0 | seq, function]) + objects)
        return await self.response()


def iin2(response: bytes) -> int:
    return response[3]


def analog_events_with_time(response: bytes, index: int) -> list[tuple[int, int]]:
    """(value, time in ms) of every g32v3 event at `index` in a response."""
    found, at = [], 4
    while at < len(response):
        group, variation, qualifier = response[at : at + 3]
        assert qualifier in (0x17, 0x28), f"unexpected qualifier {qualifier:#x}"
        width = 1 if qualifier == 0x17 else 2
        count = int.from_bytes(response[at + 3 : at + 3 + width], "little")
        at += 3 + width
        size = {(2, 2): 7, (32, 3): 11}[(group, variation)]
        for _ in range(count):
            point = int.from_bytes(response[at : at + width], "little")
            body = response[at + width : at + width + size]
            if (group, variation, point) == (32, 3, index):
                value = int.from_bytes(body[1:5], "little", signed=True)
                found.append((value, int.from_bytes(body[5:], "little")))
            at += width + size
    return found


@contextlib.asynccontextmanager
async def raw_master(port: int) -> AsyncIterator[RawMaster]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield RawMaster(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


CLASS_1_READ = bytes([60, 2, 0x06])
READ, CONFIRM, ENABLE_UNSOLICITED, DISABLE_UNSOLICITED = 1, 0, 20, 21


async def test_events_stay_until_confirmed(settings):
    s = dnp3_only(settings)
    points = {p.name: p for p in build_points(s)}
    rul = points["pm_agent.rul_critical_hours"]
    async with running_app(s) as (components, _client):
        server = components.scada.servers[0]
        with master(s.scada.dnp3_port) as m:
            await loaded(m, points)
        async with raw_master(s.scada.dnp3_port) as raw:
            at = datetime(2031, 5, 6, 7, 8, 9, 10000, tzinfo=UTC)
            server.update({rul.name: 42.5}, {rul.name}, at)
            seq, first = 0, b""
            for seq in range(1, 100):  # until the update is on the outstation's loop
                first = await raw.request(seq % 16, READ, CLASS_1_READ)
                if analog_events_with_time(first, rul.dnp3_input):
                    break
                await asyncio.sleep(0.05)
            assert analog_events_with_time(first, rul.dnp3_input) == [(425, at_ms(at))]
            assert first[0] & 0x20, "an event response asks for confirmation (CON)"

            # Not confirmed: the next read sends it again; a confirm of another response
            # (wrong sequence) does not count.
            seq = (seq + 1) % 16
            again = await raw.request(seq, READ, CLASS_1_READ)
            assert (425, at_ms(at)) in analog_events_with_time(again, rul.dnp3_input)
            assert again[0] & 0x20
            await raw.send(bytes([0xC0 | ((seq + 1) % 16), CONFIRM]))
            seq = (seq + 1) % 16
            again = await raw.request(seq, READ, CLASS_1_READ)
            assert (425, at_ms(at)) in analog_events_with_time(again, rul.dnp3_input)

            # Confirmed: gone.
            await raw.send(bytes([0xC0 | seq, CONFIRM]))
            seq = (seq + 1) % 16
            after = await raw.request(seq, READ, CLASS_1_READ)
            assert analog_events_with_time(after, rul.dnp3_input) == []


async def test_unsolicited_responses_are_refused(settings):
    s = dnp3_only(settings)
    async with running_app(s) as _, raw_master(s.scada.dnp3_port) as raw:
        classes = bytes([60, 2, 0x06, 60, 3, 0x06, 60, 4, 0x06])
        for seq, function in enumerate((ENABLE_UNSOLICITED, DISABLE_UNSOLICITED)):
            response = await raw.request(seq, function, classes)
            assert response[1] == 0x81  # a solicited RESPONSE
            assert iin2(response) & 0x01, "IIN2.0: function code not supported"
        # A read still works, without the error bit.
        response = await raw.request(2, READ, bytes([30, 1, 0x00, 0, 0]))
        assert response[1] == 0x81 and iin2(response) & 0x07 == 0


async def test_stop_closes_every_connection_even_while_masters_connect(settings):
    """Allowed and refused clients keep connecting while the outstation stops, so some
    are being accepted or refused just then: the stop ends every connection and leaves
    no socket to the garbage collector (it would warn, an error here)."""
    s = dnp3_only(settings, allowed_clients=["127.0.0.1"])
    port = s.scada.dnp3_port
    connected = {"127.0.0.1": 0, "127.0.0.2": 0}
    kept: list[socket.socket] = []  # the first few stay open until the outstation stops
    stopped = threading.Event()

    def keep_connecting(host: str) -> None:
        while not stopped.is_set():
            try:
                client = socket.create_connection(("127.0.0.1", port), 20, (host, 0))
            except OSError:  # the listener has gone
                return
            connected[host] += 1
            if len(kept) < 10:
                kept.append(client)
            else:
                client.close()

    # 127.0.0.2 is loopback too, but not in allowed_clients.
    threads = [threading.Thread(target=keep_connecting, args=(h,)) for h in connected]
    try:
        async with running_app(s) as (components, _):
            server = components.scada.servers[0]
            for thread in threads:
                thread.start()
            await until(lambda: server.status()["connections_refused"] > 2, "refusals")
            await until(lambda: min(connected.values()) > 20, "connections while running")
        stopped.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)

        def ended(client: socket.socket) -> bool:
            try:
                return client.recv(1) == b""
            except ConnectionResetError:
                return True

        assert all([await asyncio.to_thread(ended, c) for c in kept])
    finally:
        stopped.set()
        for thread in threads:
            if thread.is_alive():
                await asyncio.to_thread(thread.join)
        for client in kept:
            client.close()
    gc.collect()  # a transport or socket the outstation left open warns here
