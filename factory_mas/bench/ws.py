"""The client processes of `bench --http`: the plumbing they share, and the WebSocket
listeners.

Every client runs in a spawned process of its own, so the server being measured has its
process (and GIL) to itself. A child serves one command at a time: the parent sends
(name, kwargs), the child awaits its coroutine method `name(**kwargs)` and answers
(name, value), or ("failed", text) when it raised.

The listeners hold many WebSocket connections to an agent's prediction stream. Each
counts what it receives and, for every predictions frame, how long after the
predictions' `produced_at` it arrived.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from ..errors import FactoryError

READY_TIMEOUT_S = 120.0
# Handshakes in flight at once: a thousand at one go would overflow the listen backlog
# and measure SYN retries.
CONNECTING_AT_ONCE = 50


def raise_fd_limit() -> None:
    """Soft limit up to the hard one: a thousand sockets need more than the usual 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `uvicorn.run` would make (uvloop when it is installed)."""
    from uvicorn.loops.auto import auto_loop_factory

    return auto_loop_factory(use_subprocess=False)


def serve_commands(handler: Any, commands: Any, answers: Any) -> None:
    """The body of a child process: answer commands until told None."""
    raise_fd_limit()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(_command_loop(handler, commands, answers))


async def _command_loop(handler: Any, commands: Any, answers: Any) -> None:
    answers.put(("ready", None))
    while (command := await asyncio.to_thread(commands.get)) is not None:
        name, kwargs = command
        try:
            value = await getattr(handler, name)(**kwargs)
        except Exception as exc:  # the parent must hear of it, not wait for a dead child
            answers.put(("failed", f"{name}: {type(exc).__name__}: {exc}"))
        else:
            answers.put((name, value))
    await handler.close()


class Child:
    """A spawned process running `target(*args, commands, answers)`, on command."""

    def __init__(self, what: str, target: Callable[..., None], *args: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self.what = what
        self._commands = context.Queue()
        self._answers = context.Queue()
        self._proc = context.Process(
            target=target, args=(*args, self._commands, self._answers), daemon=True
        )

    def __enter__(self) -> Child:
        # Not waited for here: the children import while the server loads its models.
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._commands.put(None)
            self._proc.join(timeout=15)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    def send(self, name: str, **kwargs: Any) -> None:
        self._commands.put((name, kwargs))

    def expect(self, name: str, timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer, value = self._answers.get(timeout=1.0)
                break
            except queue.Empty:
                # A child that died answers nothing: say so now, not at the deadline.
                if not self._proc.is_alive() or time.monotonic() > deadline:
                    alive = "running" if self._proc.is_alive() else f"exit {self._proc.exitcode}"
                    raise FactoryError(
                        f"bench --http: the {self.what} did not answer {name!r} ({alive})"
                    ) from None
        if answer == "failed":
            raise FactoryError(f"bench --http: the {self.what} failed: {value}")
        if answer != name:
            raise FactoryError(f"bench --http: the {self.what} said {answer!r}, not {name!r}")
        return value

    async def answer(self, name: str, timeout_s: float) -> Any:
        return await asyncio.to_thread(self.expect, name, timeout_s)

    async def ask(self, name: str, timeout_s: float, **kwargs: Any) -> Any:
        self.send(name, **kwargs)
        return await self.answer(name, timeout_s)

    async def ready(self) -> None:
        await self.answer("ready", READY_TIMEOUT_S)


# -- the WebSocket listeners ---------------------------------------------------------------


class _Frame(msgspec.Struct):
    type: str
    data: msgspec.Raw  # left undecoded unless it holds predictions


class _Stamp(msgspec.Struct):
    produced_at: datetime


_frame_decoder = msgspec.json.Decoder(_Frame)
_stamps_decoder = msgspec.json.Decoder(list[_Stamp])


@dataclass
class Listener:
    """One WebSocket client: what it received, and how late."""

    hello: bool = False
    frames: int = 0  # after the hello: predictions and alerts
    predictions: int = 0
    lags_s: list[float] = field(default_factory=list)
    first_at: float = 0.0
    last_at: float = 0.0
    closed_early: str = ""
    expected: int | None = None  # frames, once the server has pushed them all
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False

    def take(self, message: str | bytes, now: float) -> None:
        frame = _frame_decoder.decode(message)
        if frame.type == "hello":
            # The server added this client to the agent's readers before sending it.
            self.hello = True
            self.connected.set()
            return
        self.frames += 1
        self.first_at = self.first_at or now
        self.last_at = now
        if frame.type != "predictions":
            self.check_done()
            return
        stamps = _stamps_decoder.decode(frame.data)
        self.predictions += len(stamps)
        if stamps:
            # One scoring call stamps its whole batch with one produced_at.
            self.lags_s.append(now - stamps[0].produced_at.timestamp())
        self.check_done()

    def check_done(self) -> None:
        if self.expected is not None and self.frames >= self.expected:
            self.done.set()

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.lags_s)
        return {
            "frames": self.frames,
            "predictions": self.predictions,
            "p99_lag_s": lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else None,
            "max_lag_s": lags[-1] if lags else None,
            "closed_early": self.closed_early,
        }


class Listeners:
    """The command handler of a listener process: `count` clients on `url`."""

    def __init__(self, url: str, count: int, deflate: bool = True) -> None:
        self.url = url
        self.compression = "deflate" if deflate else None
        self.listeners = [Listener() for _ in range(count)]
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task] = []
        self.connect_errors: list[str] = []
        self.cpu_mark = (0.0, 0.0)

    async def connect(self) -> dict[str, Any]:
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        self.tasks = [asyncio.create_task(self._listen(one, gate)) for one in self.listeners]
        waits = [asyncio.create_task(one.connected.wait()) for one in self.listeners]
        # Each is set by its hello, or by its failure to connect.
        _, pending = await asyncio.wait(waits, timeout=60)
        for task in pending:
            task.cancel()
        self.cpu_mark = (time.process_time(), time.perf_counter())
        return {
            "connected": sum(one.hello for one in self.listeners),
            "connect_errors": len(self.connect_errors),
            "first_error": self.connect_errors[0] if self.connect_errors else "",
            "still_connecting": len(pending),
        }

    async def _listen(self, one: Listener, gate: asyncio.Semaphore) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        try:
            async with gate:
                # As a browser connects (permessage-deflate offered unless told not to),
                # and straight to the loopback address, whatever proxy the environment names.
                ws = await connect(
                    self.url,
                    compression=self.compression,
                    proxy=None,
                    max_size=None,
                    open_timeout=30,
                )
        except Exception as exc:  # OSError, a timeout, websockets' InvalidHandshake and kin
            self.connect_errors.append(f"{type(exc).__name__}: {exc}")
            one.connected.set()
            return
        self.sockets.append(ws)
        try:
            async for message in ws:
                one.take(message, time.time())
        except ConnectionClosed as exc:
            if not one.stopping:
                one.closed_early = f"{exc.rcvd.code if exc.rcvd else 'no close frame'}"
        except msgspec.MsgspecError as exc:  # a frame not shaped as the streams send them
            one.closed_early = f"undecodable frame: {exc}"
            await ws.close()
        if not one.stopping and not one.closed_early:
            one.closed_early = "closed by the server"
        one.done.set()

    async def finish(self, expected: int, settle_s: float) -> dict[str, Any]:
        """Wait until every client has `expected` frames (or the time is up), then
        close them all and say what each received."""
        for one in self.listeners:
            one.expected = expected
            one.check_done()
        waits = [asyncio.create_task(one.done.wait()) for one in self.listeners]
        await asyncio.wait(waits, timeout=settle_s)
        for task in waits:
            task.cancel()
        cpu0, wall0 = self.cpu_mark
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        await self.close()
        clients = [one.summary() for one in self.listeners]
        return {
            "clients": clients,
            "lags_s": [lag for one in self.listeners for lag in one.lags_s],
            "first_at": min((one.first_at for one in self.listeners if one.first_at), default=0),
            "last_at": max((one.last_at for one in self.listeners), default=0),
            "connect_errors": len(self.connect_errors),
            # Cores this process kept busy from connected to done: near 1.0, the client
            # side may be what limits delivery.
            "client_cpu": cpu,
        }

    async def close(self) -> None:
        for one in self.listeners:
            one.stopping = True
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)
        self.sockets = []
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=15)
            for task in self.tasks:
                task.cancel()


def listeners_main(url: str, count: int, deflate: bool, commands: Any, answers: Any) -> None:
    serve_commands(Listeners(url, count, deflate), commands, answers)
