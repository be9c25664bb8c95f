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
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from ...limits import ClientAllowList
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
    """pymodbus's SimCore for our one device, refusing other ids the way pymodbus's request
    handler understands (exception 0x0B GATEWAY TARGET NO RESPONSE), where SimCore itself
    fails with a KeyError (answered 0x04 with a logged traceback). Device id 0 takes all."""

    def __init__(self, core: Any, device_id: int) -> None:
        self.core, self.device_id = core, device_id

    def _check(self, device_id: int) -> None:
        if self.device_id and device_id != self.device_id:
            raise NoSuchIdException(f"device id {device_id}; this server is {self.device_id}")

    def device_ids(self) -> list[int]:
        return self.core.device_ids()

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> Any:  # fmt: skip
        self._check(device_id)
        return await self.core.async_getValues(device_id, func_code, address, count)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: list[int] | list[bool]) -> Any:  # fmt: skip
        self._check(device_id)
        return await self.core.async_setValues(device_id, func_code, address, values)


class ModbusServer:
    name = "modbus"

    def __init__(self, bridge: ScadaBridge) -> None:
        self.bridge = bridge
        s = bridge.settings
        self.host, self.port, self.device_id = s.host, s.modbus_port, s.modbus_device_id
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
        server.context = _OneDevice(server.context, self.device_id)  # type: ignore[assignment]
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
                whole = target is not None and (len(regs) == 2 or not self.float32)
                raw = decode(target, regs, self.float32) if whole else regs
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
