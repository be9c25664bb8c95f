"""An independent DNP3 master (the opendnp3 bindings) against our outstation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import opendnp3 as o

from tests.support.waiting import until

OUTSTATION, MASTER = 10, 1


class Collector(o.ISOEHandler):
    """Every measurement the master receives: (kind, index, value, is_event), and in
    `details` (group variation, index, value, time in ms or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.seen: list[tuple[str, int, Any, bool]] = []
        self.details: list[tuple[Any, int, Any, int | None]] = []

    def BeginFragment(self, info: Any) -> None:
        pass

    def EndFragment(self, info: Any) -> None:
        pass

    def Process(self, info: Any, values: list) -> None:
        kinds = {o.Binary: "BI", o.Analog: "AI", o.BinaryOutputStatus: "BO",
                 o.AnalogOutputStatus: "AO"}  # fmt: skip
        timed = info.tsquality != o.TimestampQuality.INVALID
        with self.lock:
            for item in values:
                kind = kinds.get(type(item.value))
                if kind is not None:
                    value = item.value.value
                    self.seen.append((kind, item.index, value, info.isEventVariation))
                    at = item.value.time.value if timed else None
                    self.details.append((info.gv, item.index, value, at))

    def take(self) -> list[tuple[str, int, Any, bool]]:
        with self.lock:
            seen, self.seen = self.seen, []
        return seen

    def take_details(self) -> list[tuple[Any, int, Any, int | None]]:
        with self.lock:
            details, self.details = self.details, []
        return details


IIN_BITS = ("EVENT_BUFFER_OVERFLOW", "FUNC_NOT_SUPPORTED", "OBJECT_UNKNOWN", "PARAM_ERROR")


class App(o.IMasterApplication):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.user_tasks_done = 0
        self.started: dict[Any, int] = {}
        self.completed: list[tuple[Any, Any]] = []  # (task type, result)
        self.iins: list[frozenset[str]] = []  # the IIN2 bits of IIN_BITS each response had

    def OnReceiveIIN(self, iin: Any) -> None:
        bits = frozenset(b for b in IIN_BITS if iin.IsSet(getattr(o.IINBit, b)))
        with self.lock:
            self.iins.append(bits)

    def OnTaskStart(self, type: Any, id: Any) -> None:
        with self.lock:
            self.started[type] = self.started.get(type, 0) + 1

    def OnTaskComplete(self, info: Any) -> None:
        with self.lock:
            self.completed.append((info.type, info.result))
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
        return await self.run(lambda: self.master.ScanClasses(classes, self.soe))

    async def run(self, start: Any) -> list[tuple[str, int, Any, bool]]:
        """One user task (`start` issues it); what it returned once it has completed."""
        self.soe.take()
        self.soe.take_details()
        done = self.app.user_tasks_done
        start()
        await until(lambda: self.app.user_tasks_done > done, "the scan to finish")
        return self.soe.take()

    async def scan(self, *headers: Any) -> tuple[list[tuple[Any, int, Any, int | None]], Any]:
        """One scan of these object headers: (details, the IIN2 bits of its response)."""
        await self.run(lambda: self.master.Scan(list(headers), self.soe))
        with self.app.lock:
            iin = self.app.iins[-1]
        return self.soe.take_details(), iin

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
