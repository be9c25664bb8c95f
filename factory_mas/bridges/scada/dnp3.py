"""DNP3 outstation (dnp3py) laid out by the SCADA point table.

Every number is an analog input (g30, class 1 events g32 on change) at the point's
`dnp3_input` index and every Boolean a binary input (g1, events g2). An analog value is
the point's value times its `scale` (the same scale as the Modbus table), an integer:
`pm_agent.rul_critical_hours` = 24 h reads 240. Reads are answered for the points and
in the variation asked for (`_Outstation`); events carry the time of the change and stay
buffered until the master confirms the response carrying them. Writable numbers are
analog outputs (g40 status, g41 commands in the same scaled units) at `dnp3_output`;
writable Booleans are binary outputs (g10 status, g12 CROB): LATCH_ON / PULSE_ON (or
CLOSE) writes true, LATCH_OFF / PULSE_OFF (or TRIP) false. Select-before-operate and
direct operate are both accepted. Every command goes through
the bridge's `Writes`, so it is checked and audited like an OPC UA or Modbus write, with
the master's address; a refusal comes back to the master as a command status (see
`STATUS`). DNP3 (without Secure Authentication) carries no user, so a master's role is
its address's: scada.write_clients_role for scada.write_clients, reads only for everyone
else (NOT_AUTHORIZED). A SELECT the master may not operate is refused at once.

dnp3py's outstation and its command handler are synchronous, and a write is a coroutine
on the application's loop, so the outstation runs its own asyncio loop in a thread: a
command blocks that thread (never the application's loop) until the write has been
applied, and `update` hands the new values to the outstation's loop to copy in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import struct
import threading
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dnp3.application.builder import build_response
from dnp3.application.fragment import ObjectBlock, RequestFragment, ResponseFragment
from dnp3.application.header import MAX_APP_SEQUENCE
from dnp3.application.qualifiers import ObjectHeader
from dnp3.core.enums import (
    CommandStatus,
    ControlCode,
    FunctionCode,
    OperationType,
    TripCloseCode,
)
from dnp3.core.flags import IIN, AnalogQuality, BinaryQuality
from dnp3.core.timestamp import DNP3Timestamp
from dnp3.database import (
    AnalogEvent,
    AnalogInputConfig,
    AnalogOutputConfig,
    BinaryEvent,
    BinaryInputConfig,
    BinaryOutputConfig,
    Database,
    DatabaseConfig,
    EventBufferConfig,
    EventClass,
)
from dnp3.outstation import (
    CommandResult,
    DefaultCommandHandler,
    Outstation,
    OutstationConfig,
    OutstationTcpRunner,
    UnsolicitedConfig,
)

# dnp3py's own block builders, so our reads frame exactly as its class 0 poll does.
from dnp3.outstation.outstation import (
    _build_start_stop_header,
    _build_static_blocks,
    _chunk_run,
    _contiguous_runs,
    _event_block_capacity,
    _split_response_objects,
    _static_block_capacity,
)
from dnp3.transport_io.tcp_server import TcpServerChannel

from ...http.limits import ClientAllowList
from .live import peer_text
from .points import Point

if TYPE_CHECKING:
    from .live import Value, WriteResult
    from .service import ScadaBridge

log = logging.getLogger(__name__)

ORIGIN = "scada:dnp3"
BY = "dnp3 master"
# A command waits this long for the application to apply it (an agent start included).
WRITE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
# The master (host, port) whose request the outstation is processing: dnp3py serves each
# connection in a task of its own and calls the command handler from it, peer untold.
_PEER: ContextVar[tuple[str, int] | None] = ContextVar("dnp3_peer", default=None)

# WriteResult.code -> the command status the master gets back.
STATUS = {
    "not_found": CommandStatus.NOT_SUPPORTED,  # no writable point at that output index
    "read_only": CommandStatus.NOT_SUPPORTED,
    "forbidden": CommandStatus.NOT_AUTHORIZED,  # not a write client, or its role too low
    "wrong_type": CommandStatus.FORMAT_ERROR,  # e.g. 2.5 to an Int32 point, a NUL CROB
    "out_of_range": CommandStatus.OUT_OF_RANGE,
    "rejected": CommandStatus.BLOCKED,  # the target refused it (a settings rule, an ack)
    "unavailable": CommandStatus.HARDWARE_ERROR,  # the store could not record it
}


def crob_value(code: ControlCode) -> bool | None:
    """What a CROB writes to a Boolean point, or None for a code we do not carry out."""
    if code.clear:
        return None
    op, tcc = code.op_type, code.tcc
    if op == OperationType.LATCH_ON and tcc == TripCloseCode.NUL:
        return True
    if op == OperationType.LATCH_OFF and tcc == TripCloseCode.NUL:
        return False
    if op == OperationType.PULSE_ON:
        return {TripCloseCode.NUL: True, TripCloseCode.CLOSE: True, TripCloseCode.TRIP: False}.get(
            tcc
        )
    if op == OperationType.PULSE_OFF and tcc == TripCloseCode.NUL:
        return False
    return None


def scaled(point: Point, value: Value) -> float:
    """The analog (input or output status) value the master reads for a number."""
    return float(round(float(value) * point.scale))


def _refusal(point: Point, value: float) -> str | None:
    """The code `Writes` will certainly refuse a number with, or None if it may pass.

    Only used to answer a SELECT without applying anything; the OPERATE goes through
    `Writes`, which decides.
    """
    if not math.isfinite(value):
        return "wrong_type"
    if point.type == "Int32" and not float(value).is_integer():
        return "wrong_type"
    if (point.lo is not None and value < point.lo) or (point.hi is not None and value > point.hi):
        return "out_of_range"
    return None


class _Commands(DefaultCommandHandler):
    """dnp3py's command handler: every method runs on the outstation's thread."""

    def __init__(self, server: Dnp3Server) -> None:
        self.server = server

    # dnp3py calls these with keyword arguments. Pulse counts and times are not used: a
    # write sets the point, it does not time it.
    def select_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> CommandResult:
        return self.server.crob(index, code, operate=False)

    def operate_binary_output(
        self,
        index: int,
        code: ControlCode,
        count: int,
        on_time: int,
        off_time: int,
        select_sequence: int,
    ) -> CommandResult:
        return self.server.crob(index, code, operate=True)

    def direct_operate_binary_output(
        self, index: int, code: ControlCode, count: int, on_time: int, off_time: int
    ) -> CommandResult:
        return self.server.crob(index, code, operate=True)

    def select_analog_output(self, index: int, value: float) -> CommandResult:
        return self.server.analog(index, value, operate=False)

    def operate_analog_output(
        self, index: int, value: float, select_sequence: int
    ) -> CommandResult:
        return self.server.analog(index, value, operate=True)

    def direct_operate_analog_output(self, index: int, value: float) -> CommandResult:
        return self.server.analog(index, value, operate=True)


# -- reads, events and IIN (IEEE 1815-2012) ------------------------------------------

# IIN2 bits (Table 4-4, 4.5.11): what a read gets back when it names something we lack.
UNKNOWN = IIN.OBJECT_UNKNOWN  # a group or variation this outstation does not serve
BAD = IIN.PARAMETER_ERROR  # a qualifier we do not take, or points that do not exist

# The variation a variation-0 read (or an event class poll) is answered with: events carry
# the time of the change (the bridge's timestamp), not the time the master polled.
BINARY_EVENT_DEFAULT = 2  # g2v2, with absolute time
ANALOG_EVENT_DEFAULT = 3  # g32v3, 32-bit with flag and absolute time
# (has flag, value format, has time) per variation, static g30 and event g32 (Tables
# A-29..A-33): the integer formats clamp to their range and set OVER_RANGE (11.6.1.1).
ANALOG_STATIC = {1: (True, "i", False), 2: (True, "h", False), 3: (False, "i", False),
                 4: (False, "h", False), 5: (True, "f", False), 6: (True, "d", False)}  # fmt: skip
ANALOG_EVENT = {1: (True, "i", False), 2: (True, "h", False), 3: (True, "i", True),
                4: (True, "h", True), 5: (True, "f", False), 6: (True, "d", False),
                7: (True, "f", True), 8: (True, "d", True)}  # fmt: skip
_INT_LIMITS = {"i": (-(2**31), 2**31 - 1), "h": (-(2**15), 2**15 - 1)}
_FLOAT32_MAX = struct.unpack("<f", b"\xff\xff\x7f\x7f")[0]
_CLASSES = {2: EventClass.CLASS_1, 3: EventClass.CLASS_2, 4: EventClass.CLASS_3}
_EventKey = tuple[EventClass, int]


def analog_bytes(form: tuple[bool, str, bool], value: float, quality: int, at: Any) -> bytes:
    """One analog input (static or event) in the variation `form` describes."""
    flag, fmt, timed = form
    if fmt in _INT_LIMITS:
        lo, hi = _INT_LIMITS[fmt]
        if not lo <= value <= hi:  # infinity too
            value, quality = (hi if value > 0 else lo), quality | AnalogQuality.OVER_RANGE
        raw = struct.pack("<" + fmt, int(value))
    else:
        if fmt == "f" and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
            value = math.copysign(_FLOAT32_MAX, value)
            quality |= AnalogQuality.OVER_RANGE
        raw = struct.pack("<" + fmt, value)
    out = (bytes([int(quality)]) if flag else b"") + raw
    if timed:
        out += (at if at is not None else DNP3Timestamp.now()).to_bytes()
    return out


def binary_flags(quality: int, state: bool) -> int:
    return (int(quality) & ~BinaryQuality.STATE) | (BinaryQuality.STATE if state else 0)


def requested_indices(block: ObjectBlock) -> range | list[int] | IIN | None:
    """The point indices a read's object header names: None for all, or IIN2.2 for a
    qualifier a static read cannot take (Table 4-5: a count names indices 0..count-1)."""
    qualifier, data = block.header.qualifier, block.data
    if qualifier == 0x06:
        return None
    if qualifier in (0x00, 0x01):
        width = qualifier + 1
        start = int.from_bytes(data[:width], "little")
        stop = int.from_bytes(data[width : 2 * width], "little")
        return BAD if start > stop else range(start, stop + 1)
    if qualifier in (0x07, 0x08):
        return range(int.from_bytes(data[: qualifier - 6], "little"))
    if qualifier in (0x17, 0x28):
        width = 1 if qualifier == 0x17 else 2
        count = int.from_bytes(data[:width], "little")
        body = data[width:]
        return [int.from_bytes(body[i * width : (i + 1) * width], "little") for i in range(count)]
    return BAD


def event_limit(block: ObjectBlock) -> int | IIN | None:
    """How many events a read asks for at most (None: all), or IIN2.2 (4.4.1.1)."""
    qualifier = block.header.qualifier
    if qualifier == 0x06:
        return None
    if qualifier in (0x07, 0x08):
        return int.from_bytes(block.data[: qualifier - 6], "little")
    return BAD


class _Outstation(Outstation):
    """dnp3py's outstation with reads, events and IIN bits as IEEE 1815 has them.

    dnp3py answers every read with every point in one fixed variation, sends events without
    time and forgets them once sent (a lost response loses them), never clears IIN2.3, and
    answers unsolicited enables it never acts on. Here a read gets the points and variation
    it names; events are sent with their time in a response asking for confirmation, and
    stay buffered (sent again) until that confirmation; IIN2.3 clears once a confirmation
    leaves room in the buffer; FC 20/21 get IIN2.0 (no unsolicited responses). Commands,
    writes, time and framing stay dnp3py's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        # (sequence of the response's last fragment, the events it carries) until confirmed.
        self._unconfirmed: tuple[int, frozenset[_EventKey]] | None = None

    def _process_request_fragment(
        self, request: RequestFragment, peer: Any, body: bytes
    ) -> list[ResponseFragment]:
        if request.header.function != FunctionCode.CONFIRM:
            # A new request ends the wait for the last confirmation (4.6.2): its events are
            # still buffered and go out again with the next event read.
            self._unconfirmed = None
        return super()._process_request_fragment(request, peer, body)

    def _executors(self, peer: Any) -> dict[FunctionCode, Any]:
        executors = dict(super()._executors(peer))
        # The runner has no way to send unsolicited responses, so enabling them must not be
        # answered as a success: without these the request gets IIN2.0 (4.5.9).
        del executors[FunctionCode.ENABLE_UNSOLICITED], executors[FunctionCode.DISABLE_UNSOLICITED]
        return executors

    def _handle_confirm(self, request: RequestFragment) -> None:
        control, pending = request.header.control, self._unconfirmed
        if pending is not None and not control.uns and control.seq == pending[0]:
            self._unconfirmed = None
            self._remove_events_by_key(pending[1])
            buffer = self.database.event_buffer
            for events in (buffer.class1, buffer.class2, buffer.class3):
                # The overflow is over once reported events were confirmed and made room.
                if events.has_overflow and events.count < events.max_size:
                    events.reset_overflow()

    def _update_event_iin(self) -> None:
        buffer = self.database.event_buffer
        reported = self._unconfirmed[1] if self._unconfirmed else frozenset()

        def waiting(event_class: EventClass, events: Any) -> bool:
            # Events in the response awaiting confirmation are not "still to be read".
            return any((event_class, s) not in reported for s, _ in events.read_with_serials())

        self._state.update_event_flags(
            class_1_events=waiting(EventClass.CLASS_1, buffer.class1),
            class_2_events=waiting(EventClass.CLASS_2, buffer.class2),
            class_3_events=waiting(EventClass.CLASS_3, buffer.class3),
        )
        if buffer.has_overflow:
            self._state.set_event_overflow()
        else:
            self._state.clear_event_overflow()

    def _handle_read(self, request: RequestFragment) -> list[ResponseFragment]:
        objects: list[ObjectBlock] = []
        keys: set[_EventKey] = set()
        error = IIN(0)
        for block in request.objects:
            blocks, iin = self._read(block, keys)
            objects.extend(blocks)
            error |= iin
        seq = request.header.control.seq
        size = self.config.max_fragment_size
        if not keys:
            return _split_response_objects(objects, self.iin | error, seq, size)
        count = len(_split_response_objects(objects, IIN(0), seq, size))
        self._unconfirmed = ((seq + count - 1) % (MAX_APP_SEQUENCE + 1), frozenset(keys))
        fragments = _split_response_objects(objects, self.iin | error, seq, size)
        # Events ask for an application confirmation (4.6.2.1); non-final fragments already
        # do (the runner waits for each).
        last = fragments[-1]
        fragments[-1] = build_response(
            tuple(last.objects), last.header.iin, last.header.control.seq,
            fir=len(fragments) == 1, fin=True, con=True,
        )  # fmt: skip
        return fragments

    def _read(self, block: ObjectBlock, keys: set[_EventKey]) -> tuple[list[ObjectBlock], IIN]:
        group, variation = block.header.group, block.header.variation
        if group == 60:
            if variation == 1:
                if block.header.qualifier != 0x06:
                    return [], BAD
                return self._read_all_static_data(), IIN(0)
            if variation not in _CLASSES:
                return [], UNKNOWN
            return self._events(block, keys, _CLASSES[variation], None)
        if group in (2, 32):
            return self._events(block, keys, None, group)
        db = self.database
        if group == 1 and variation in (0, 1, 2):
            points, iin = self._select(block, db.get_all_binary_inputs())
            if variation == 1:
                return self._packed(1, points), iin
            return self._build_binary_input_blocks(points) if points else [], iin
        if group == 10 and variation in (0, 1, 2):
            points, iin = self._select(block, db.get_all_binary_outputs())
            if variation == 1:
                return self._packed(10, points), iin
            return self._build_binary_output_blocks(points) if points else [], iin
        if group == 30 and (variation == 0 or variation in ANALOG_STATIC):
            points, iin = self._select(block, db.get_all_analog_inputs())
            form = ANALOG_STATIC[variation or 1]
            size = len(analog_bytes(form, 0, 0, None))
            blocks = _build_static_blocks(
                30, variation or 1, points,
                lambda p: analog_bytes(form, p.value, p.quality, None),
                _static_block_capacity(self.config.max_fragment_size, size),
            ) if points else []  # fmt: skip
            return blocks, iin
        if group == 40 and variation in (0, 1, 2, 3, 4):
            points, iin = self._select(block, db.get_all_analog_outputs())
            variation = variation or self.config.analog_output_static_variation
            return self._build_analog_output_blocks(points, variation) if points else [], iin
        return [], UNKNOWN

    @staticmethod
    def _select(block: ObjectBlock, points: list[Any]) -> tuple[list[Any], IIN]:
        wanted = requested_indices(block)
        if isinstance(wanted, IIN):
            return [], wanted
        if wanted is None:
            return points, IIN(0)
        chosen = [p for p in points if p.index in wanted]
        # Points asked for that do not exist: the rest is answered, with IIN2.2 (4.5.11).
        return chosen, IIN(0) if len(chosen) == len(set(wanted)) else BAD

    def _packed(self, group: int, points: list[Any]) -> list[ObjectBlock]:
        """Packed-format binaries (g1v1, g10v1): one bit a point, in start-stop runs."""
        blocks: list[ObjectBlock] = []
        cap = _static_block_capacity(self.config.max_fragment_size, 1) * 8
        for run in _contiguous_runs(points):
            for chunk in _chunk_run(run, cap):
                header, range_data = _build_start_stop_header(
                    group, 1, chunk[0].index, chunk[-1].index
                )
                bits = bytearray((len(chunk) + 7) // 8)
                for i, point in enumerate(chunk):
                    if point.value:
                        bits[i // 8] |= 1 << (i % 8)
                blocks.append(ObjectBlock(header=header, data=range_data + bytes(bits)))
        return blocks

    def _events(
        self, block: ObjectBlock, keys: set[_EventKey], of_class: EventClass | None,
        group: int | None,
    ) -> tuple[list[ObjectBlock], IIN]:  # fmt: skip
        """Buffered events of a class (g60v2..4) or a group (g2, g32), oldest first, in the
        variation asked for (the defaults with time for 0 and class polls)."""
        variation = 0 if of_class is not None else block.header.variation
        binary_variation = variation if group == 2 and variation else BINARY_EVENT_DEFAULT
        analog_variation = variation if group == 32 and variation else ANALOG_EVENT_DEFAULT
        if (group == 2 and variation not in (0, 1, 2)) or (
            group == 32 and variation != 0 and variation not in ANALOG_EVENT
        ):
            return [], UNKNOWN
        limit = event_limit(block)
        if isinstance(limit, IIN):
            return [], limit
        buffer = self.database.event_buffer
        found: list[tuple[int, EventClass, Any]] = []
        for event_class, events in (
            (EventClass.CLASS_1, buffer.class1),
            (EventClass.CLASS_2, buffer.class2),
            (EventClass.CLASS_3, buffer.class3),
        ):
            if of_class is None or event_class == of_class:
                found.extend((s, event_class, e) for s, e in events.read_with_serials())
        found.sort(key=lambda item: item[0])
        kinds = {2: BinaryEvent, 32: AnalogEvent}
        chosen = [
            (s, c, e)
            for s, c, e in found
            if (c, s) not in keys
            and isinstance(e, (BinaryEvent, AnalogEvent))
            and (group is None or isinstance(e, kinds[group]))
        ][:limit]
        keys.update((c, s) for s, c, _ in chosen)
        binary = [e for _, _, e in chosen if isinstance(e, BinaryEvent)]
        analog = [e for _, _, e in chosen if isinstance(e, AnalogEvent)]
        form = ANALOG_EVENT[analog_variation]

        def binary_bytes(e: Any) -> bytes:
            out = bytes([binary_flags(e.quality, e.value)])
            if binary_variation == 2:
                out += (e.timestamp or DNP3Timestamp.now()).to_bytes()
            return out

        def analog_event(e: Any) -> bytes:
            return analog_bytes(form, e.value, e.quality, e.timestamp)

        blocks = self._event_blocks(2, binary_variation, binary, binary_bytes)
        blocks += self._event_blocks(32, analog_variation, analog, analog_event)
        return blocks, IIN(0)

    def _event_blocks(
        self, group: int, variation: int, events: list[Any], encode: Any
    ) -> list[ObjectBlock]:
        if not events:
            return []
        size = 2 + len(encode(events[0]))  # a 2-octet index at most
        blocks = []
        for chunk in _chunk_run(events, _event_block_capacity(self.config.max_fragment_size, size)):
            index_size, count_data, qualifier = self._event_framing(chunk)
            data = bytearray(count_data)
            for event in chunk:
                data += event.index.to_bytes(index_size, "little") + encode(event)
            header = ObjectHeader(group=group, variation=variation, qualifier=qualifier)
            blocks.append(ObjectBlock(header=header, data=bytes(data)))
        return blocks


class _GuardedRunner(OutstationTcpRunner):
    """dnp3py's connection protocol behind a listener of our own.

    The listener refuses clients not in scada.allowed_clients before they reach the
    runner (which keeps one master and drops it for every newcomer). It is ours, not
    dnp3py's TcpServer, because that one could leave a transport open at stop (a
    connection accepted or refused while it stopped), which surfaced as an unclosed
    transport warning once the thread's loop had gone: here every accepted socket is
    tracked from the moment asyncio makes its protocol, and `run` returns only once each
    one's connection is lost. Each connection's task is told its peer (`_PEER`)."""

    def __init__(self, *args: Any, allow: ClientAllowList, **kwargs: Any) -> None:
        self._allow = allow
        super().__init__(*args, **kwargs)
        self._listener: asyncio.Server | None = None
        self._protocols: set[_Protocol] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def is_running(self) -> bool:
        return self._listener is not None and self._listener.is_serving()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._shutdown.clear()
        self._listener = await loop.create_server(
            lambda: _Protocol(self), self.host, self.port, reuse_address=True
        )
        try:
            await self._shutdown.wait()
        finally:
            await self._close()

    async def stop(self) -> None:
        self._shutdown.set()

    async def _close(self) -> None:
        self._shutdown.set()
        listener = self._listener
        if listener is not None:
            # asyncio makes the transport of a socket it has just accepted in a task of its
            # own, which fails (Python 3.11: an assertion in Server._attach) if the server
            # closed meanwhile, leaving that socket open. So: no new accepts first, one turn
            # of the loop for those tasks (each protocol then aborts itself), then close.
            loop = asyncio.get_running_loop()
            for sock in listener.sockets:
                loop.remove_reader(sock.fileno())
            await asyncio.sleep(0)
            listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=STOP_TIMEOUT_S)
        while self._protocols:
            for protocol in list(self._protocols):
                protocol.abort()
            lost = [p.lost for p in self._protocols]
            done, _ = await asyncio.wait(lost, timeout=STOP_TIMEOUT_S)
            if not done:
                log.error("dnp3: %d connections did not close", len(lost))
                break

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = writer.get_extra_info("peername")
        if self._shutdown.is_set() or not self._allow.allows(remote[0] if remote else None):
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        previous, self._connection_task = self._connection_task, task
        self._tasks.add(task)
        try:
            if previous is not None and not previous.done():
                previous.cancel()  # DNP3 over TCP is point to point: the newcomer wins
                await asyncio.wait([previous])
            await self._handle_connection(TcpServerChannel(reader=reader, writer=writer))
        finally:
            self._tasks.discard(task)
            writer.transport.abort()  # closed already unless cancelled mid-close

    async def _handle_connection(self, channel: Any) -> None:
        # Its own task: the peer set here is what every command of this connection sees.
        _PEER.set(getattr(channel, "remote_address", None))
        await super()._handle_connection(channel)


class _Protocol(asyncio.StreamReaderProtocol):
    """A stream protocol the runner can abort and wait for, from its very creation."""

    def __init__(self, runner: _GuardedRunner) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(asyncio.StreamReader(), runner._accepted)
        self.runner = runner
        self.transport: asyncio.BaseTransport | None = None
        self.lost: asyncio.Future[None] = loop.create_future()
        runner._protocols.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        super().connection_made(transport)
        if self.runner._shutdown.is_set():
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.runner._protocols.discard(self)
        if not self.lost.done():
            self.lost.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


class Dnp3Server:
    name = "dnp3"

    def __init__(self, bridge: ScadaBridge) -> None:
        self.bridge = bridge
        s = bridge.settings
        self.host, self.port = s.host, s.dnp3_port
        self.address, self.master_address = s.dnp3_outstation_address, s.dnp3_master_address
        self.points = {p.name: p for p in bridge.points}
        self.analog_outputs = {
            p.dnp3_output: p
            for p in bridge.points
            if p.writable and p.type != "Boolean" and p.dnp3_output is not None
        }
        self.binary_outputs = {
            p.dnp3_output: p
            for p in bridge.points
            if p.writable and p.type == "Boolean" and p.dnp3_output is not None
        }
        self.error: str | None = None
        self.commands = {"selected": 0, "operated": 0, "refused": 0}
        self.allow = ClientAllowList(s.allowed_clients, "dnp3")
        self._lock = threading.Lock()
        self._app_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: OutstationTcpRunner | None = None
        self._task: asyncio.Task | None = None
        self._loaded = False
        self.outstation = _Outstation(
            config=OutstationConfig(
                address=self.address,
                master_address=self.master_address,
                # No unsolicited responses (FC 20/21 get IIN2.0): masters poll events.
                unsolicited=UnsolicitedConfig(enabled=False),
                time_sync_required=False,  # events carry our own clock; no time sync asked
                database=self._database_config(),
            ),
            database=self._database(),
            handler=_Commands(self),
        )

    # -- the data model ----------------------------------------------------------------

    def _database_config(self) -> DatabaseConfig:
        points = list(self.points.values())
        binary = sum(p.type == "Boolean" for p in points)
        analog = len(points) - binary
        return DatabaseConfig(
            max_binary_inputs=max(binary, 1),
            max_analog_inputs=max(analog, 1),
            max_binary_outputs=max(len(self.binary_outputs), 1),
            max_analog_outputs=max(len(self.analog_outputs), 1),
            max_counters=1,
            max_frozen_counters=1,
            # Room for every point to change a few times between two polls.
            event_buffer_config=EventBufferConfig(
                max_binary_events=max(100, 4 * binary), max_analog_events=max(100, 4 * analog)
            ),
        )

    def _database(self) -> Database:
        db = Database(config=self._database_config())
        for p in self.points.values():
            if p.type == "Boolean":
                db.add_binary_input(p.dnp3_input, BinaryInputConfig(EventClass.CLASS_1))
            else:
                db.add_analog_input(p.dnp3_input, AnalogInputConfig(EventClass.CLASS_1))
        for index in self.binary_outputs:
            db.add_binary_output(index, BinaryOutputConfig(EventClass.NONE))
        for index in self.analog_outputs:
            # Its status follows the point's value, not the last command.
            db.add_analog_output(index, AnalogOutputConfig(track_commands=False))
        return db

    def update(self, values: dict[str, Value], changed: set[str], at: datetime) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        names = changed if self._loaded else values.keys()
        items = [(self.points[n], values[n]) for n in names if n in self.points]
        with contextlib.suppress(RuntimeError):  # the outstation's loop closed meanwhile
            loop.call_soon_threadsafe(self._apply, items, DNP3Timestamp.from_datetime(at))

    def _apply(self, items: list[tuple[Point, Value]], at: DNP3Timestamp) -> None:
        """On the outstation's thread: copy values in; a change is a class 1 event."""
        db = self.outstation.database
        for p, value in items:
            if p.type == "Boolean":
                binary = db.binary_inputs[p.dnp3_input]
                if binary.value != bool(value) or not binary.is_online:
                    db.update_binary_input(p.dnp3_input, bool(value), timestamp=at)
                if p.dnp3_output is not None:
                    db.update_binary_output(p.dnp3_output, bool(value), timestamp=at)
            else:
                number = scaled(p, value)
                analog = db.analog_inputs[p.dnp3_input]
                if analog.value != number or not analog.is_online:
                    db.update_analog_input(p.dnp3_input, number, timestamp=at)
                if p.dnp3_output is not None:
                    db.update_analog_output(p.dnp3_output, number, timestamp=at)
        if not self._loaded:
            # The first values are the initial state, not changes a master missed.
            db.clear_events()
            self._loaded = True

    # -- commands (on the outstation's thread) -----------------------------------------

    def crob(self, index: int, code: ControlCode, *, operate: bool) -> CommandResult:
        point = self.binary_outputs.get(index)
        value = crob_value(code)
        if point is None:  # audited as not_found
            result = self._write(f"dnp3.crob.{index}", value)
            return self._result(result, index, "crob")
        if value is None:  # audited as wrong_type: a control code we do not carry out
            raw = f"crob {code.op_type.name} tcc={code.tcc.name} clear={code.clear}"
            self._write(point.name, raw)
            return self._refused("not_supported", index, "crob", f"{raw} is not supported")
        if not operate and self._may_write(point):
            return self._selected()
        return self._result(self._write(point.name, value), index, "crob")

    def analog(self, index: int, value: float, *, operate: bool) -> CommandResult:
        point = self.analog_outputs.get(index)
        if point is None:
            result = self._write(f"dnp3.ao.{index}", value)
            return self._result(result, index, "analog output")
        real = value / point.scale if math.isfinite(value) else value
        if not operate:
            if _refusal(point, real) is not None or not self._may_write(point):
                # Certainly refused: audit the attempt the master will never operate.
                return self._result(self._write(point.name, real), index, "analog output")
            return self._selected()
        return self._result(self._write(point.name, real), index, "analog output")

    def _may_write(self, point: Point) -> bool:
        peer = _PEER.get()
        writes = self.bridge.writes
        return writes.may_write(point, writes.client_role(peer[0] if peer else None))

    def _write(self, name: str, raw: Any) -> WriteResult:
        from .live import WriteResult

        loop = self._app_loop
        if loop is None or loop.is_closed():
            return WriteResult(False, "unavailable", "the application is stopping")
        peer = _PEER.get()
        writes = self.bridge.writes
        role = writes.client_role(peer[0] if peer else None)
        write = writes.write(name, raw, ORIGIN, peer=peer_text(peer), role=role, by=BY)
        try:
            future = asyncio.run_coroutine_threadsafe(write, loop)
        except RuntimeError:  # the loop closed meanwhile
            write.close()
            return WriteResult(False, "unavailable", "the application is stopping")
        try:
            return future.result(timeout=WRITE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return WriteResult(False, "unavailable", f"{name}: not applied in time")
        except Exception as exc:  # the master gets a status, never a dropped request
            log.exception("dnp3: writing %s failed", name)
            return WriteResult(False, "unavailable", str(exc))

    def _result(self, result: WriteResult, index: int, kind: str) -> CommandResult:
        if result.ok:
            with self._lock:
                self.commands["operated"] += 1
            return CommandResult.success()
        return self._refused(result.code or "rejected", index, kind, result.error)

    def _refused(self, code: str, index: int, kind: str, error: str = "") -> CommandResult:
        with self._lock:
            self.commands["refused"] += 1
        status = CommandStatus.NOT_SUPPORTED if code == "not_supported" else STATUS.get(
            code, CommandStatus.BLOCKED
        )  # fmt: skip
        return CommandResult(status, error or f"{kind} {index}: {code}")

    def _selected(self) -> CommandResult:
        with self._lock:
            self.commands["selected"] += 1
        return CommandResult.success()

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Dnp3Server:
        self._app_loop = asyncio.get_running_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._thread_main, args=(started,), name="dnp3-outstation", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.wrap_future(started), START_TIMEOUT_S)
        except Exception as exc:  # a port in use, no permission, a bad host
            self.error = f"cannot listen on {self.host}:{self.port}: {exc}"
            log.error("dnp3: %s", self.error)
            if started.done():
                # The outstation failed by itself and its loop is ending on its own: a stop
                # sent into that loop now could be left pending as it closes (a "coroutine
                # never awaited" seen under load). Wait for the thread instead.
                await asyncio.to_thread(self._thread.join, STOP_TIMEOUT_S)
                if not self._thread.is_alive():
                    self._thread = self._runner = None
            await self._stop()
        else:
            log.info("dnp3: outstation %d listening on %s:%d", self.address, self.host, self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    def _thread_main(self, started: concurrent.futures.Future[None]) -> None:
        try:
            asyncio.run(self._serve(started))
        except Exception as exc:
            log.exception("dnp3: the outstation stopped")
            if not started.done():
                started.set_exception(exc)
            else:
                self.error = f"the outstation stopped: {exc}"

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._runner = _GuardedRunner(
            self.outstation, host=self.host, port=self.port, allow=self.allow
        )
        self._task = asyncio.create_task(self._runner.run())
        while not self._runner.is_running and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            exc = self._task.exception() or RuntimeError("the outstation did not start")
            started.set_exception(exc)
            return
        started.set_result(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _stop(self) -> None:
        loop, thread = self._loop, self._thread
        runner = self._runner
        if loop is not None and runner is not None:
            # The stop coroutine is made inside the outstation's loop: if that loop has
            # ended meanwhile (a failed start), nothing is left un-awaited.
            with contextlib.suppress(RuntimeError):  # its loop closed already
                loop.call_soon_threadsafe(lambda: loop.create_task(runner.stop()))
        if thread is not None:
            await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
            if thread.is_alive() and loop is not None and self._task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._task.cancel)
                await asyncio.to_thread(thread.join, STOP_TIMEOUT_S)
        self._thread = None

    def status(self) -> dict[str, Any]:
        runner = self._runner
        with self._lock:
            commands = dict(self.commands)
        return {
            "listening": bool(runner is not None and runner.is_running and self._thread),
            "port": self.port,
            "outstation_address": self.address,
            "master_address": self.master_address,
            "error": self.error,
            "commands": commands,
            "writes_enabled": self.bridge.settings.writes_enabled,
            "connections_refused": self.allow.refused,
        }
