"""Modbus TCP server for the point table (pymodbus 3.x simulator datastore).

Layout: every point takes two registers at its `modbus_address`; read-only points are input
registers (FC4), writable ones holding registers (FC3 read, FC6/FC16 write). In the default
int mode a value is `round(value * scale)` as an unsigned 16-bit integer (clamped to
0..65535) in the first register and the second register reads 0; with `modbus_float32` the
value is an IEEE 754 float32, big-endian, high word first, over both registers.

Writes go through the bridge's `Writes` (validated, applied, audited with the client's
address) from the simulator's async `action` hook. Modbus carries no user, so a client's
role is its address's: scada.write_clients_role for scada.write_clients, reads only for
everyone else. The hook can refuse a request with a Modbus exception code:

- 0x01 ILLEGAL FUNCTION: the client may not write that point (not in write_clients, or
  its role is too low for it). The standard gives 01 for a function "not an allowable
  action for the server", also when "the server is in the wrong state to process a
  request of this type": masters take it as final and do not retry, where 0x04 would be
  alarmed as a device fault and retried, and 0x02/0x03 would blame the address or value.

- 0x02 ILLEGAL DATA ADDRESS: not a writable point's register, a write starting on a point's
  second register, a float32 point only half covered, coils and discrete inputs (none exist),
  reads outside the table.
- 0x03 ILLEGAL DATA VALUE: out of range, wrong type (e.g. 2 to a Boolean), refused by the
  target (e.g. rul_critical_hours >= rul_warning_hours).
- 0x04 SERVER DEVICE FAILURE: the change could not be stored.

A write of several points (FC16) applies them in address order and stops at the first one
refused; the ones before it stay applied.

Requests are checked as the Modbus Application Protocol (1.1b3, section 6) orders it before
any register is touched: a function code this server does not implement is answered 01
ILLEGAL FUNCTION, and a quantity, byte count or length its function does not allow (FC1/FC2
1..2000 bits, FC3/FC4 1..125 registers, FC5 0x0000 or 0xFF00, FC15 1..1968 bits, FC16
1..123 registers, FC23 1..125 read and 1..121 written) 03 ILLEGAL DATA VALUE, each with the
request's function code and its high bit set (pymodbus answers a request it cannot decode
`80 01`, which no master can place).

Unit ids: `modbus_device_id` and `modbus_extra_unit_ids` (by default 0 and 255, the ids the
Modbus/TCP implementation guide has a client use for a device on its own IP) are answered,
as the same device; other ids get 0x0B GATEWAY TARGET DEVICE FAILED TO RESPOND.

FC43 / MEI 14 Read Device Identification answers basic and regular objects (conformity
0x82: stream and individual access): 0x00 vendor, 0x01 product code, 0x02 version, 0x04
product name, 0x05 model name, from `identity`.
"""

from __future__ import annotations

import logging
import math
import struct
from collections import Counter
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ...http.limits import ClientAllowList
from . import identity
from .live import Value, peer_text
from .points import Point

if TYPE_CHECKING:
    from .live import WriteResult
    from .service import ScadaBridge

log = logging.getLogger(__name__)
ORIGIN = "scada:modbus"
# The peer (host, port) of the connection whose request is being served: pymodbus runs
# each request in a task of its own and tells the datastore nothing of who sent it.
_PEER: ContextVar[tuple[str, int] | None] = ContextVar("modbus_peer", default=None)

READ_HOLDING, READ_INPUT = 3, 4
WRITE_FCS = {6, 16, 22, 23}  # single, multiple, mask write, read/write multiple
BIT_FCS = {1, 2, 5, 15}  # coils and discrete inputs: this device has none
_CODES = {
    "not_found": ExcCodes.ILLEGAL_ADDRESS,
    "read_only": ExcCodes.ILLEGAL_ADDRESS,
    "forbidden": ExcCodes.ILLEGAL_FUNCTION,  # see the module doc
    "wrong_type": ExcCodes.ILLEGAL_VALUE,
    "out_of_range": ExcCodes.ILLEGAL_VALUE,
    "rejected": ExcCodes.ILLEGAL_VALUE,
    "unavailable": ExcCodes.DEVICE_FAILURE,
}


READ_DEVICE_IDENTIFICATION, MEI_DEVICE_IDENTIFICATION = 0x2B, 0x0E
# The function codes served; pymodbus knows more, none of which belongs here: 07, 08, 11, 12
# and 17 are serial line only (Modbus Application Protocol 1.1b3, 5.1; pymodbus's 17 names
# pymodbus), and this device has no file records (20, 21) nor FIFO queue (24), which
# pymodbus answers with made-up data.
FUNCTIONS = {1, 2, 3, 4, 5, 6, 15, 16, 22, 23, READ_DEVICE_IDENTIFICATION}
# Object id -> value, basic (0x00-0x02) and regular (0x03-0x7F) objects.
DEVICE_OBJECTS = {
    0x00: identity.VENDOR,
    0x01: identity.PRODUCT_CODE,
    0x02: identity.VERSION,
    0x04: identity.PRODUCT_NAME,
    0x05: "SCADA bridge (Modbus TCP)",
}
CONFORMITY = 0x82  # regular identification, stream and individual access
# Read Device ID code -> the highest object id its stream reaches; 4 is individual access.
STREAM_END = {1: 0x02, 2: 0x7F, 3: 0xFF}
INDIVIDUAL = 4
MAX_PDU = 253  # bytes, function code included (Modbus Application Protocol 4.1)


def illegal_value(function_code: int, data: bytes) -> bool:
    """Whether a request's quantity, byte count or length (`data` is the PDU after the
    function code) is one its function does not allow: answered 03 ILLEGAL DATA VALUE."""
    n = len(data)

    def word(at: int) -> int:
        return int.from_bytes(data[at : at + 2], "big")

    if function_code in (1, 2, 3, 4):
        most = 2000 if function_code in (1, 2) else 125
        return n != 4 or not 1 <= word(2) <= most
    if function_code == 5:
        return n != 4 or word(2) not in (0x0000, 0xFF00)
    if function_code == 6:
        return n != 4
    if function_code in (15, 16):
        if n < 5:
            return True
        count, byte_count = word(2), data[4]
        most, need = (1968, (count + 7) // 8) if function_code == 15 else (123, 2 * count)
        return not 1 <= count <= most or byte_count != need or n != 5 + byte_count
    if function_code == 22:
        return n != 6
    if function_code == 23:
        if n < 9:
            return True
        written, byte_count = word(6), data[8]
        return (
            not 1 <= word(2) <= 125
            or not 1 <= written <= 121
            or byte_count != 2 * written
            or n != 9 + byte_count
        )
    if function_code == READ_DEVICE_IDENTIFICATION:  # MEI type, Read Device ID code, object id
        return n != 3 or not 1 <= data[1] <= INDIVIDUAL
    return False


def device_identification(read_code: int, object_id: int) -> bytes | None:
    """The MEI 14 answer after the function code, or None when individual access asks for
    an object there is none of (02 ILLEGAL DATA ADDRESS). A stream starting at an object
    it does not hold starts over at object 0, as the standard says; one that does not fit
    in a PDU says "more follows" and where to go on."""
    if read_code == INDIVIDUAL:
        if object_id not in DEVICE_OBJECTS:
            return None
        ids = [object_id]
    else:
        end = STREAM_END[read_code]
        if object_id not in DEVICE_OBJECTS or object_id > end:
            object_id = 0
        ids = [i for i in sorted(DEVICE_OBJECTS) if object_id <= i <= end]
    objects, sent, more, next_id = b"", 0, 0x00, 0x00
    for i in ids:
        item = bytes([i, len(value := DEVICE_OBJECTS[i].encode())]) + value
        if 7 + len(objects) + len(item) > MAX_PDU:
            more, next_id = 0xFF, i
            break
        objects, sent = objects + item, sent + 1
    head = bytes([MEI_DEVICE_IDENTIFICATION, read_code, CONFORMITY, more, next_id, sent])
    return head + objects


def encode(point: Point, value: Value, float32: bool) -> list[int]:
    """A point's value as its two registers."""
    if float32:
        raw = struct.pack(">f", float(value))
        return [int.from_bytes(raw[:2], "big"), int.from_bytes(raw[2:], "big")]
    number = float(value) * point.scale
    scaled = 0 if not math.isfinite(number) else round(number)
    return [min(max(scaled, 0), 0xFFFF), 0]


def decode(point: Point, registers: list[int], float32: bool) -> int | float:
    """What a control system wrote to a point, before any checking."""
    if float32:
        return struct.unpack(">f", struct.pack(">HH", *registers[:2]))[0]
    if point.scale == 1 and point.type != "Float":
        return registers[0]
    return registers[0] / point.scale


class _OneDevice:
    """pymodbus's SimCore for our one device, answering each of `unit_ids` as that device
    and refusing other ids the way pymodbus's request handler understands (exception 0x0B
    GATEWAY TARGET NO RESPONSE), where SimCore itself fails with a KeyError (answered 0x04
    with a logged traceback). Device id 0 takes all."""

    def __init__(self, core: Any, device_id: int, unit_ids: set[int]) -> None:
        self.core, self.device_id, self.unit_ids = core, device_id, unit_ids

    def check(self, device_id: int) -> None:
        if self.device_id and device_id not in self.unit_ids:
            raise NoSuchIdException(f"device id {device_id}; this server is {self.device_id}")

    def device_ids(self) -> list[int]:
        return self.core.device_ids()

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> Any:  # fmt: skip
        self.check(device_id)
        return await self.core.async_getValues(self.device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> Any:  # fmt: skip
        self.check(device_id)
        return await self.core.async_setValues(self.device_id, func_code, address, values)


class _Answer(ModbusPDU):
    """A request this module answers itself, before pymodbus's datastore: with an exception
    `code`, or (`code` None) with `reply`'s bytes. The unit id is checked first, as for
    every other request."""

    def __init__(self, function_code: int, code: ExcCodes | None, reply: bytes = b"") -> None:
        super().__init__()
        self.function_code, self.code, self.reply = function_code, code, reply

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        if isinstance(context, _OneDevice):
            context.check(device_id)
        if self.code is not None:
            return ExceptionResponse(self.function_code, self.code)
        return _Reply(self.function_code, self.reply)


class _Reply(ModbusPDU):
    def __init__(self, function_code: int, data: bytes) -> None:
        super().__init__()
        self.function_code, self.data = function_code, data

    def encode(self) -> bytes:
        return self.data


class _Requests(DecodePDU):
    """pymodbus's request decoder, with the checks of the module doc before it and Read
    Device Identification answered here (pymodbus's keeps one identity per process and
    claims extended conformity)."""

    def __init__(self) -> None:
        super().__init__(is_server=True)

    def decode(self, frame: bytes) -> ModbusPDU | None:
        function_code, data = frame[0], frame[1:]
        if function_code not in FUNCTIONS:
            return _Answer(function_code, ExcCodes.ILLEGAL_FUNCTION)
        mei = data[0] if data else MEI_DEVICE_IDENTIFICATION  # none: 03, as for FC43's length
        if function_code == READ_DEVICE_IDENTIFICATION and mei != MEI_DEVICE_IDENTIFICATION:
            return _Answer(function_code, ExcCodes.ILLEGAL_FUNCTION)  # MEI 13 (CANopen), ...
        if illegal_value(function_code, data):
            return _Answer(function_code, ExcCodes.ILLEGAL_VALUE)
        if function_code == READ_DEVICE_IDENTIFICATION:
            reply = device_identification(data[1], data[2])
            if reply is None:
                return _Answer(function_code, ExcCodes.ILLEGAL_ADDRESS)
            return _Answer(function_code, None, reply)
        pdu = super().decode(frame)
        return pdu if pdu is not None else _Answer(function_code, ExcCodes.ILLEGAL_VALUE)


class ModbusServer:
    name = "modbus"

    def __init__(self, bridge: ScadaBridge) -> None:
        self.bridge = bridge
        s = bridge.settings
        self.host, self.port, self.device_id = s.host, s.modbus_port, s.modbus_device_id
        self.unit_ids = {s.modbus_device_id, *s.modbus_extra_unit_ids}
        self.float32 = s.modbus_float32
        self.points = {
            t: {p.modbus_address: p for p in bridge.points if p.modbus_table == t}
            for t in ("input", "holding")
        }
        # Our copy of each table; the action hook copies it into pymodbus's on every request.
        # pymodbus's tables are both as long as the longer one, so that a write to an input
        # register's address reaches the hook (and the audit trail) instead of being refused
        # unseen; reads past a table's own end are refused by the hook.
        self.size = {t: 2 * len(ps) for t, ps in self.points.items()}
        span = max(2, *self.size.values())
        self.registers = {t: [0] * span for t in self.points}
        self.counts: Counter[str] = Counter()
        self.allow = ClientAllowList(s.allowed_clients, "modbus")
        self.error: str | None = None
        self._server: ModbusTcpServer | None = None
        self._listening = False
        self._seeded = False

    # -- life cycle ------------------------------------------------------------------

    def _device(self) -> SimDevice:
        def block(table: str) -> list[SimData]:
            regs = self.registers[table]
            return [SimData(0, values=list(regs), datatype=DataType.REGISTERS)]

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            id=self.device_id,
            simdata=(bits, list(bits), block("holding"), block("input")),
            action=self._action,
        )

    async def __aenter__(self) -> ModbusServer:
        try:
            server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        except Exception as exc:  # a bad setup must not take the process down
            self.error = f"cannot start: {exc}"
            log.error("modbus: %s", self.error)
            return self
        server.context = _OneDevice(server.context, self.device_id, self.unit_ids)  # type: ignore[assignment]
        server.decoder = _Requests()  # each connection's framer is made with it
        create = server.call_create

        async def create_and_remember_why() -> Any:
            try:
                return await create()
            except OSError as exc:
                self.error = f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
                raise

        server.call_create = create_and_remember_why
        self._guard_connections(server)
        self._server = server
        if await server.listen():
            self._listening = True
            log.info("modbus: listening on %s:%s (device id %s)", self.host, self.port,
                     self.device_id)  # fmt: skip
        else:
            self.error = self.error or f"cannot listen on {self.host}:{self.port}"
            log.error("modbus: %s", self.error)
        return self

    def _guard_connections(self, server: ModbusTcpServer) -> None:
        """Close connections from clients not in scada.allowed_clients before they are
        served: each new connection's handler checks its peer when the socket is handed to
        it, and a refused one never sees a byte of its request answered. The handler of
        an accepted one serves each request knowing its peer (`_PEER`), for the write
        rights and the audit trail."""
        allow = self.allow
        new_handler = server.callback_new_connection

        def guarded_handler() -> Any:
            handler = new_handler()
            made = handler.connection_made
            handle_request = handler.handle_request

            def connection_made(transport: Any) -> None:
                peer = transport.get_extra_info("peername")
                if allow.allows(peer[0] if peer else None):
                    made(transport)

                    async def handle_request_from_peer() -> None:
                        # Runs as a task of its own (handle_later), so this is its context.
                        _PEER.set(peer)
                        await handle_request()

                    handler.handle_request = handle_request_from_peer
                    return
                transport.abort()
                handler.close()  # also forgets it in the server's list of connections

            handler.connection_made = connection_made
            return handler

        server.callback_new_connection = guarded_handler  # type: ignore[method-assign]

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            await self._server.shutdown()
        self._server, self._listening = None, False

    # -- values ----------------------------------------------------------------------

    def update(self, values: dict[str, Value], changed: set[str], at: datetime) -> None:
        names = changed if self._seeded else values.keys()
        for name in names:
            point = self.bridge.live.points.get(name)
            if point is None or name not in values:
                continue
            regs = self.registers[point.modbus_table]
            a = point.modbus_address
            regs[a : a + 2] = encode(point, values[name], self.float32)
        self._seeded = True

    def status(self) -> dict[str, Any]:
        return {
            "listening": self._listening,
            "host": self.host,
            "port": self.port,
            "device_id": self.device_id,
            "unit_ids": sorted(self.unit_ids),
            "float32": self.float32,
            "error": self.error,
            "writes": {"accepted": self.counts["accepted"], "refused": self.counts["refused"]},
            "writes_enabled": self.bridge.settings.writes_enabled,
            "connections_refused": self.allow.refused,
        }

    # -- requests --------------------------------------------------------------------

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code in BIT_FCS:
            if set_values is not None:  # a coil write: there are none, but it is an attempt
                await self._write_as_peer(f"modbus:coil:{address}", list(set_values))
                self.counts["refused"] += 1
            return ExcCodes.ILLEGAL_ADDRESS
        table = "input" if function_code == READ_INPUT else "holding"
        if set_values is None and address + count > self.size[table]:
            return ExcCodes.ILLEGAL_ADDRESS
        # Bring pymodbus's copy of the requested range up to date (reads and read-backs).
        lo, hi = address - start_address, address - start_address + count
        current[lo:hi] = self.registers[table][lo:hi]
        if set_values is None or function_code not in WRITE_FCS:
            return None
        return await self._write(address, [int(v) for v in set_values], set_values)

    async def _write(self, address: int, values: list[int], out: list[Any]) -> ExcCodes | None:
        """Check the request covers whole writable points, then write them one by one.

        Every attempt reaches `Writes` (and so the audit trail): one the table cannot place
        is written to a name that is no point ("modbus:holding:<address>") or, for an input
        register's address, to that read-only point."""
        holding = self.points["holding"]
        end = address + len(values)
        plan: list[tuple[Point, list[int]]] = []
        a = address
        while a < end:
            point = holding.get(a)
            regs = values[a - address : a - address + 2]
            if point is None or (self.float32 and len(regs) < 2):
                # Unmapped, a point's second register, or half a float.
                target = self.points["input"].get(a)
                name = target.name if target is not None else f"modbus:holding:{a}"
                whole = len(regs) == 2 or not self.float32
                raw = decode(target, regs, self.float32) if target is not None and whole else regs
                await self._write_as_peer(name, raw)  # refused: not_found or read_only
                return self._refuse(ExcCodes.ILLEGAL_ADDRESS)
            plan.append((point, regs))
            a += 2
        for point, regs in plan:
            raw = decode(point, regs, self.float32)
            result = await self._write_as_peer(point.name, raw)
            if not result.ok:
                return self._refuse(_CODES.get(result.code or "", ExcCodes.ILLEGAL_VALUE))
            self.counts["accepted"] += 1
            now = encode(point, result.value if result.value is not None else raw, self.float32)
            a = point.modbus_address
            self.registers["holding"][a : a + 2] = now
            for i, reg in enumerate(now):  # what is in force is what pymodbus stores
                if 0 <= a - address + i < len(out):
                    out[a - address + i] = reg
        return None

    async def _write_as_peer(self, name: str, raw: Any) -> WriteResult:
        peer = _PEER.get()
        writes = self.bridge.writes
        role = writes.client_role(peer[0] if peer else None)
        return await writes.write(name, raw, ORIGIN, peer=peer_text(peer), role=role)

    def _refuse(self, code: ExcCodes) -> ExcCodes:
        self.counts["refused"] += 1
        return code
