"""DNP3 outstation (dnp3py) laid out by the SCADA point table.

Every number is an analog input (g30v1, with class 1 events g32v1 on change) at the
point's `dnp3_input` index and every Boolean a binary input (g1v2, events g2v1). dnp3py
serves analog values as 32-bit integers, so an analog value is the point's value times
its `scale` (the same scale as the Modbus table): `pm_agent.rul_critical_hours` = 24 h
reads 240. Writable numbers are analog outputs (g40 status, g41 commands in the same
scaled units) at `dnp3_output`; writable Booleans are binary outputs (g10 status, g12
CROB): LATCH_ON / PULSE_ON (or CLOSE) writes true, LATCH_OFF / PULSE_OFF (or TRIP) false.
Select-before-operate and direct operate are both accepted. Every command goes through
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
import threading
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dnp3.core.enums import CommandStatus, ControlCode, OperationType, TripCloseCode
from dnp3.core.timestamp import DNP3Timestamp
from dnp3.database import (
    AnalogInputConfig,
    AnalogOutputConfig,
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

from ...limits import ClientAllowList
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


class _GuardedRunner(OutstationTcpRunner):
    """dnp3py's TCP runner, refusing clients not in scada.allowed_clients.

    The runner accepts one master at a time and drops the current one for every newcomer,
    so a refused client must never reach it: the TCP server's `accept` is wrapped the
    moment the runner stores it (before its first call), and closes such connections
    itself. Only that runner attribute is intercepted, and each connection's task is
    told its peer (`_PEER`); the rest is dnp3py's."""

    def __init__(self, *args: Any, allow: ClientAllowList, **kwargs: Any) -> None:
        self._allow = allow
        super().__init__(*args, **kwargs)

    async def _handle_connection(self, channel: Any) -> None:
        # Its own task: the peer set here is what every command of this connection sees.
        _PEER.set(getattr(channel, "remote_address", None))
        await super()._handle_connection(channel)

    @property  # type: ignore[override]
    def _server(self) -> Any:
        return self.__dict__.get("_guarded_server")

    @_server.setter
    def _server(self, server: Any) -> None:
        if server is not None and self._allow.networks:
            server.accept = self._guarded_accept(server, server.accept)
        self.__dict__["_guarded_server"] = server

    def _guarded_accept(self, server: Any, accept: Any) -> Any:
        allow = self._allow

        async def guarded_accept() -> Any:
            while True:
                channel = await accept()
                remote = channel.remote_address
                if allow.allows(remote[0] if remote else None):
                    return channel
                server.remove_connection(channel)
                channel.writer.transport.abort()
                await channel.close()

        return guarded_accept


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
        self.outstation = Outstation(
            config=OutstationConfig(
                address=self.address,
                master_address=self.master_address,
                # dnp3py's TCP runner sends no unsolicited responses: masters poll events.
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
                point = db.binary_inputs[p.dnp3_input]
                if point.value != bool(value) or not point.is_online:
                    db.update_binary_input(p.dnp3_input, bool(value), timestamp=at)
                if p.dnp3_output is not None:
                    db.update_binary_output(p.dnp3_output, bool(value), timestamp=at)
            else:
                number = scaled(p, value)
                point = db.analog_inputs[p.dnp3_input]
                if point.value != number or not point.is_online:
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
