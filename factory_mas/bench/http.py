"""`bench --http`: the real app behind a real uvicorn on 127.0.0.1, under load from other
processes, in one run:

1. ingest: POST /api/ingest with arrays of records from several connections; records/s
   answered 202, and records/s scored by every telemetry agent.
2. /system-state against a bare Starlette route: the same uvicorn settings in the same
   event loop, the same client and concurrency, rounds alternating between the two, once
   with the app idle (its agents and orchestrator holding the state the ingest left) and
   once with ingest running at half the capacity measured in 1. The figure is the ratio.
3. WebSocket fan-out: many clients on the PM agent's prediction stream while records are
   posted: frames delivered per second, lag from the predictions' `produced_at` to receipt,
   and clients that fell behind (the server drops the oldest frames of a slow reader).

The servers (both uvicorns, the app's lifespan, agents and orchestrator) run in this
process, so the agents' counters are read directly; the clients run in spawned processes,
so they do not take this process's GIL. API keys are off and the rate limits raised far
above what the load reaches: the bench measures the app, not the limiter (whose
middleware still runs, and is part of the cost measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from ..agents.registry import AGENTS
from ..errors import FactoryError
from ..ml.inference import LatencyWindow
from ..settings import Settings
from .machine import machine_facts
from .targets import target
from .ws import Child, listeners_main, loop_factory, raise_fd_limit, serve_commands

STATE_RATIO_TARGET = 0.8  # /system-state >= 80 % of the bare route's requests/s
LOADED_SHARE = 0.5  # ingest during the loaded GET rounds: this share of the measured capacity
STREAM_IN_FLIGHT = 4  # posts a paced stream may have in flight before it falls behind
WS_AGENT = "pm"  # the stream the listeners read: /api/pm/ws
TIMEOUT_S = 180.0
POLL_S = 0.005
TELEMETRY_AGENTS = tuple(e.agent_id for e in AGENTS if e.reads_telemetry)
# The sides of the GET comparison: (server, path).
GET_SIDES = {
    "bare": ("bare", "/bare"),
    "bare_state": ("bare", "/bare-state"),
    "state": ("app", "/system-state"),
}


@dataclass(frozen=True)
class HttpSizes:
    ingest_records: int
    get_round_s: float
    get_rounds: int
    ws_clients: int
    ws_processes: int
    ws_inject_s: float
    ingest_batch: int = 500
    ingest_connections: int = 4
    get_connections: int = 16
    # One tick a second of the 50 simulated machines: the plant as the replay plays it.
    ws_records_per_s: float = 50.0
    ws_batch: int = 50
    ws_settle_s: float = 15.0  # after the last record is scored, for the last frames to land
    # Clients offer permessage-deflate, as browsers do (the server declines it).
    ws_deflate: bool = True


QUICK = HttpSizes(
    ingest_records=20_000,
    get_round_s=0.7,
    get_rounds=3,
    ws_clients=200,
    ws_processes=1,
    ws_inject_s=4.0,
)
FULL = HttpSizes(
    ingest_records=100_000,
    get_round_s=1.5,
    get_rounds=5,
    ws_clients=1_000,
    ws_processes=2,
    ws_inject_s=10.0,
)


# -- the driver: the HTTP client process ---------------------------------------------------


@dataclass
class Tally:
    """What a client saw: requests by status, records answered for, transport errors."""

    records_posted: int = 0
    records_accepted: int = 0
    records_rejected: int = 0
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    first_error: str = ""

    def error(self, exc: BaseException) -> None:
        self.errors += 1
        self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "statuses": dict(self.statuses), "non_2xx": self.non_2xx}

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not status.startswith("2"))


async def post_ingest(client: Any, body: bytes, records: int, tally: Tally) -> None:
    """POST one JSON array of `records` records to /api/ingest (an httpx.AsyncClient) and
    count what came of it."""
    import httpx

    tally.records_posted += records
    tally.requests += 1
    try:
        response = await client.post(
            "/api/ingest", content=body, headers={"content-type": "application/json"}
        )
    except httpx.HTTPError as exc:
        tally.error(exc)
        return
    tally.statuses[str(response.status_code)] += 1
    if response.status_code in (202, 422):
        answer = response.json()
        tally.records_accepted += answer.get("accepted", 0)
        tally.records_rejected += answer.get("rejected", 0)


class Driver:
    """The command handler of the driver process: ingest posts (httpx, as a gateway would
    post) and GET rounds (a minimal keep-alive HTTP/1.1 client: httpx spends a core on
    ~400 requests/s, which would measure httpx rather than the server)."""

    def __init__(self, ports: dict[str, int]) -> None:
        from ..sim.synthetic import FactorySimulator

        self.ports = ports
        # One simulator for the whole run: every machine's clock only moves forward.
        self.simulator = FactorySimulator(seed=11, machines=50)
        self.rows: list[dict[str, Any]] = []
        self.prepared: list[tuple[bytes, int]] = []  # JSON arrays and their lengths
        self.client: Any = None
        self.stream_task: asyncio.Task | None = None
        self.stopping = asyncio.Event()

    def take(self, n: int) -> list[dict[str, Any]]:
        while len(self.rows) < n:
            self.rows += self.simulator.run(max(20, -(-n // 50))).records()
        taken, self.rows = self.rows[:n], self.rows[n:]
        return taken

    def http(self) -> Any:
        import httpx

        if self.client is None:
            self.client = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{self.ports['app']}",
                timeout=60,
                limits=httpx.Limits(max_connections=32),
            )
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def prepare(self, records: int, batch: int) -> int:
        rows = self.take(records)
        encode = msgspec.json.encode
        chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
        self.prepared = [(encode(chunk), len(chunk)) for chunk in chunks]
        return len(self.prepared)

    async def ingest(self, connections: int) -> dict[str, Any]:
        """Post the prepared arrays over `connections` connections, as fast as answered."""
        tally = Tally()
        bodies = iter(self.prepared)
        began = time.perf_counter()

        async def worker() -> None:
            for body, records in bodies:
                await post_ingest(self.http(), body, records, tally)

        await asyncio.gather(*(worker() for _ in range(connections)))
        return {**tally.figures(), "elapsed_s": time.perf_counter() - began}

    async def stream_start(self, records_per_s: float, batch: int, seconds: float = 0) -> None:
        self.stopping.clear()
        self.stream_task = asyncio.create_task(self._stream(records_per_s, batch, seconds))

    async def stream_stop(self) -> dict[str, Any]:
        self.stopping.set()
        assert self.stream_task is not None
        return await self.stream_task

    async def _stream(self, records_per_s: float, batch: int, seconds: float) -> dict[str, Any]:
        """Post `batch` records on a fixed schedule until told to stop, or, given `seconds`,
        the posts that fit in them and no more (a stop then only collects the figures)."""
        tally = Tally()
        interval = batch / records_per_s
        posts = round(seconds / interval) if seconds else None
        gate = asyncio.Semaphore(STREAM_IN_FLIGHT)
        encode = msgspec.json.encode
        tasks: set[asyncio.Task] = set()
        starts: list[float] = []
        next_at = time.perf_counter()

        async def post(body: bytes) -> None:
            try:
                await post_ingest(self.http(), body, batch, tally)
            finally:
                gate.release()

        while not self.stopping.is_set() and (posts is None or len(starts) < posts):
            await gate.acquire()
            starts.append(time.perf_counter())
            task = asyncio.create_task(post(encode(self.take(batch))))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stopping.wait(), max(0.0, next_at - time.perf_counter())
                )
        if tasks:
            await asyncio.wait(tasks)
        # Over the schedule's own span: on time, this is exactly the rate asked for.
        span = starts[-1] - starts[0] + interval if starts else interval
        return {**tally.figures(), "posts": len(starts), "per_s": tally.records_posted / span}

    async def get(self, server: str, path: str, connections: int, seconds: float) -> dict[str, Any]:
        """GET `path` back to back on `connections` keep-alive connections for `seconds`."""
        port = self.ports[server]
        tally = Tally()
        latency = LatencyWindow(size=1 << 22)
        sizes: list[int] = []
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n\r\n"
        ).encode()
        cpu0, began = time.process_time(), time.perf_counter()
        deadline = began + seconds
        await asyncio.gather(
            *(_get_loop(port, request, deadline, tally, latency, sizes) for _ in range(connections))
        )
        elapsed = time.perf_counter() - began
        return {
            **tally.figures(),
            **latency.summary(),
            "per_s": latency.count / elapsed,
            "elapsed_s": elapsed,
            "response_bytes": sum(sizes) / len(sizes) if sizes else 0,
            "client_cpu": (time.process_time() - cpu0) / elapsed,
        }


async def _get_loop(
    port: int,
    request: bytes,
    deadline: float,
    tally: Tally,
    latency: LatencyWindow,
    sizes: list[int],
) -> None:
    """One connection's requests, one at a time; reconnects after an error."""
    while time.perf_counter() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            tally.error(exc)
            await asyncio.sleep(0.01)
            continue
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request)
                status, length = _head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(length)
                latency.add(time.perf_counter() - t0)
                tally.requests += 1
                tally.statuses[status] += 1
                if len(sizes) < 1000:
                    sizes.append(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            tally.error(e)
        finally:
            writer.close()


def _head(head: bytes) -> tuple[str, int]:
    """Status and Content-Length of a response head (Starlette always sends the length)."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)[1].decode()
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return status, int(value)
    raise ValueError(f"response without Content-Length: {lines[0]!r}")


def _driver_main(ports: dict[str, int], commands: Any, answers: Any) -> None:
    serve_commands(Driver(ports), commands, answers)


# -- the servers ---------------------------------------------------------------------------


def bench_settings(settings: Settings, data_dir: Path) -> Settings:
    """The user's settings with the load made ours: a private data dir, no replay, SCADA or
    MQTT, no API keys, and rate limits the load never reaches."""
    replace = msgspec.structs.replace
    return replace(
        settings,
        data=replace(settings.data, dir=str(data_dir)),
        replay=replace(settings.replay, enabled=False),
        scada=replace(settings.scada, enabled=False),
        mqtt=replace(settings.mqtt, broker=""),
        auth=replace(settings.auth, enabled=False),
        limits=replace(settings.limits, requests_per_s=1_000_000.0, burst=10_000_000),
    )


class BareApp:
    """The baseline: Starlette with no middleware. /bare answers a small JSON; /bare-state
    answers a copy of /system-state's bytes taken beforehand, which tells the cost of the
    answer's size apart from the cost of the app making it."""

    def __init__(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        self.small = msgspec.json.encode({"status": "ok", "alarms": 0})
        self.state = self.small
        self.app = Starlette(
            routes=[Route("/bare", self.bare), Route("/bare-state", self.bare_state)]
        )

    async def bare(self, _request: Any) -> Any:
        from starlette.responses import Response

        return Response(self.small, media_type="application/json")

    async def bare_state(self, _request: Any) -> Any:
        from starlette.responses import Response

        return Response(self.state, media_type="application/json")


def listening_socket() -> socket.socket:
    """A socket bound to a free loopback port, handed to uvicorn (no port race, no bind
    failure inside uvicorn, which would end the process with SystemExit)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def uvicorn_server(app: Any, settings: Settings) -> Any:
    import uvicorn

    from ..http.server import uvicorn_options

    # As `serve` runs it, but quieter and without the access log: a log line per request
    # would be measured too.
    options = {**uvicorn_options(settings), "log_level": "warning", "access_log": False}
    return uvicorn.Server(uvicorn.Config(app, **options))


@contextlib.asynccontextmanager
async def serving(server: Any, sock: socket.socket) -> Any:
    """`server` on `sock` while the block runs; up once its lifespan has started."""

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn's answer to a lifespan that failed
            raise FactoryError(f"bench --http: uvicorn exited with {exc.code}") from None

    task = asyncio.create_task(run())
    try:
        deadline = time.perf_counter() + TIMEOUT_S
        while not server.started:
            if task.done():
                task.result()
                raise FactoryError("bench --http: uvicorn stopped before it started")
            if time.perf_counter() > deadline:
                raise FactoryError("bench --http: uvicorn did not start")
            await asyncio.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        await task


@contextlib.contextmanager
def kept_signal_handlers() -> Iterator[None]:
    """uvicorn swaps SIGINT/SIGTERM handlers for each server; two servers nest, and end in
    any order: put back what was there."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


# -- the run -------------------------------------------------------------------------------


async def wait_until(reached: Callable[[], bool], what: str) -> float:
    """Poll until `reached()`; the perf_counter time it was first seen true."""
    deadline = time.perf_counter() + TIMEOUT_S
    while not reached():
        if time.perf_counter() > deadline:
            raise FactoryError(f"bench --http: timed out waiting for {what}")
        await asyncio.sleep(POLL_S)
    return time.perf_counter()


class Run:
    """One bench run against a started app: the three measurements and the bookkeeping."""

    def __init__(
        self, app: Any, bare: BareApp, sizes: HttpSizes, driver: Child, listeners: list[Child]
    ) -> None:
        self.c = app.state.components
        self.bare = bare
        self.sizes = sizes
        self.driver = driver
        self.listeners = listeners
        self.agents = [a for a in self.c.agents if a.agent_id in TELEMETRY_AGENTS]
        # Waiting for predictions from an agent that never started would only time out.
        down = [
            f"{a.agent_id} {a.status} {a.error or ''}" for a in self.agents if a.status != "running"
        ]
        if down or not self.agents:
            raise FactoryError(f"bench --http: telemetry agents not running: {down}")
        self.ws_agent = next(a for a in self.c.agents if a.slug == WS_AGENT)
        self.tallies: list[dict[str, Any]] = []
        self.accepted0 = self.accepted()
        self.scored0 = self.scored()

    def accepted(self) -> int:
        return int(self.c.intake.accepted["http"])

    def scored(self) -> dict[str, int]:
        return {a.agent_id: int(a.counters["predictions"]) for a in self.agents}

    def all_scored(self) -> bool:
        target = self.accepted() - self.accepted0
        return all(n - self.scored0[k] >= target for k, n in self.scored().items())

    async def caught_up(self, what: str) -> float:
        return await wait_until(self.all_scored, f"{what}: every agent to score")

    async def ingest(self, records: int) -> dict[str, Any]:
        s = self.sizes
        await self.driver.ask("prepare", TIMEOUT_S, records=records, batch=s.ingest_batch)
        target = self.accepted() + records
        began = time.perf_counter()
        self.driver.send("ingest", connections=s.ingest_connections)
        answer = asyncio.create_task(self.driver.answer("ingest", TIMEOUT_S))
        accepted_at = await wait_until(
            lambda: self.accepted() >= target or answer.done(), "ingest: records accepted"
        )
        tally = await answer
        self.tallies.append(tally)
        scored_at = await self.caught_up("ingest")
        return {
            "records": records,
            "batch": s.ingest_batch,
            "connections": s.ingest_connections,
            "accepted_per_s": tally["records_accepted"] / (accepted_at - began),
            "scored_per_s": tally["records_accepted"] / (scored_at - began),
            "client_s": tally["elapsed_s"],
        }

    async def get_round(self, server: str, path: str) -> dict[str, Any]:
        s = self.sizes
        cpu0, began = time.process_time(), time.perf_counter()
        figures = await self.driver.ask(
            "get",
            TIMEOUT_S,
            server=server,
            path=path,
            connections=s.get_connections,
            seconds=s.get_round_s,
        )
        figures["server_cpu"] = (time.process_time() - cpu0) / (time.perf_counter() - began)
        self.tallies.append(figures)
        return figures

    async def compare(self, loaded_per_s: float) -> dict[str, Any]:
        """Rounds alternating between the sides, so drift hits them all alike."""
        self.bare.state = msgspec.json.encode(self.c.orchestrator.system_state())
        stream = None
        if loaded_per_s:
            await self.driver.ask(
                "stream_start",
                TIMEOUT_S,
                records_per_s=loaded_per_s,
                batch=self.sizes.ingest_batch,
            )
        rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in GET_SIDES}
        try:
            for _ in range(self.sizes.get_rounds):
                for side, (server, path) in GET_SIDES.items():
                    rounds[side].append(await self.get_round(server, path))
        finally:
            if loaded_per_s:
                stream = await self.driver.ask("stream_stop", TIMEOUT_S)
                self.tallies.append(stream)
        await self.caught_up("GET rounds")
        sides = {side: _side(runs) for side, runs in rounds.items()}
        return {
            "ingest_per_s": stream["per_s"] if stream else 0.0,
            **sides,
            "ratio": sides["state"]["per_s"] / sides["bare"]["per_s"],
            # What the size of the answer costs, and what the app's own work costs.
            "size_ratio": sides["bare_state"]["per_s"] / sides["bare"]["per_s"],
            "app_ratio": sides["state"]["per_s"] / sides["bare_state"]["per_s"],
        }

    def state_facts(self) -> dict[str, Any]:
        state = self.c.orchestrator.system_state()
        return {
            "bytes": len(msgspec.json.encode(state)),
            "alarms": len(state["alarms"]),
            "alarm_groups": len(state["alarm_groups"]),
            "alerts": len(state["alerts"]),
            "decisions": len(state["decisions"]),
            "flood": bool(state["flood"].get("active")),
        }

    def frames_pushed(self) -> int:
        """Frames each reader of the whole stream gets: one per scored batch, one per alert
        (a return to normal is an alert too); see BaseAgent._fan_out."""
        n = self.ws_agent.counters
        return int(n["batches"] + n["alerts"] + n["returns_to_normal"])

    async def fan_out(self) -> dict[str, Any]:
        s = self.sizes
        connected = await asyncio.gather(*(c.ask("connect", TIMEOUT_S) for c in self.listeners))
        # The server's side of each connection (private, but this is the app's own bench):
        # its count of frames dropped for a slow reader outlives the connection.
        readers = self.ws_agent.ws_clients
        await wait_until(
            lambda: len(readers) >= sum(a["connected"] for a in connected),
            "the listeners to be registered",
        )
        server_clients = list(readers)
        frames0 = self.frames_pushed()
        began_wall, cpu0, began = time.time(), time.process_time(), time.perf_counter()
        await self.driver.ask(
            "stream_start",
            TIMEOUT_S,
            records_per_s=s.ws_records_per_s,
            batch=s.ws_batch,
            seconds=s.ws_inject_s,
        )
        await asyncio.sleep(s.ws_inject_s)
        stream = await self.driver.ask("stream_stop", TIMEOUT_S)
        self.tallies.append(stream)
        await self.caught_up("WebSocket fan-out")
        expected = self.frames_pushed() - frames0
        finished = await asyncio.gather(
            *(
                c.ask("finish", TIMEOUT_S, expected=expected, settle_s=s.ws_settle_s)
                for c in self.listeners
            )
        )
        return {
            "server_cpu": (time.process_time() - cpu0) / (time.perf_counter() - began),
            "client_cpu": [f["client_cpu"] for f in finished],
            "registered": len(server_clients),
            "server_dropped": sum(c.dropped for c in server_clients),
            "clients_dropped_at": sum(1 for c in server_clients if c.dropped),
            **_fan_out_figures(connected, finished, expected, began_wall, stream, s),
        }


def _side(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The best round's rate, and latencies over every round of one side."""
    best = max(rounds, key=lambda r: r["per_s"])
    return {
        "per_s": best["per_s"],
        "rounds_per_s": [r["per_s"] for r in rounds],
        "p50_ms": best["p50_ms"],
        "p99_ms": best["p99_ms"],
        "max_ms": max(r["max_ms"] for r in rounds),
        "response_bytes": best["response_bytes"],
        "requests": sum(r["requests"] for r in rounds),
        "client_cpu": best["client_cpu"],
        "server_cpu": best["server_cpu"],
    }


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def _fan_out_figures(
    connected: list[dict[str, Any]],
    finished: list[dict[str, Any]],
    expected: int,
    began_wall: float,
    stream: dict[str, Any],
    sizes: HttpSizes,
) -> dict[str, Any]:
    clients = [one for f in finished for one in f["clients"]]
    lags = sorted(lag for f in finished for lag in f["lags_s"])
    per_client_p99 = [one["p99_lag_s"] for one in clients if one["p99_lag_s"] is not None]
    last_at = max(f["last_at"] for f in finished)
    frames = sum(one["frames"] for one in clients)
    return {
        "clients": len(clients),
        "connected": sum(c["connected"] for c in connected),
        "connect_errors": sum(c["connect_errors"] for c in connected),
        "first_connect_error": next((c["first_error"] for c in connected if c["first_error"]), ""),
        "records": stream["records_accepted"],
        "records_per_s": stream["per_s"],
        "frames_per_client": expected,
        "frames_offered_per_s": expected * len(clients) / sizes.ws_inject_s,
        "frames": frames,
        # Over the injection, or longer when the last frame landed after it.
        "frames_per_s": frames / max(last_at - began_wall, sizes.ws_inject_s),
        "min_frames": min((one["frames"] for one in clients), default=0),
        "without_frames": sum(1 for one in clients if one["frames"] == 0),
        "behind": sum(1 for one in clients if one["frames"] < expected),
        "closed_early": sum(1 for one in clients if one["closed_early"]),
        "lag_ms": {
            "count": len(lags),
            "p50": _percentile(lags, 0.5) * 1000,
            "p99": _percentile(lags, 0.99) * 1000,
            "max": (lags[-1] if lags else float("nan")) * 1000,
            "slowest_client_p99": max(per_client_p99, default=float("nan")) * 1000,
        },
    }


async def _run(
    settings: Settings,
    sizes: HttpSizes,
    socks: dict[str, socket.socket],
    driver: Child,
    listeners: list[Child],
) -> dict[str, Any]:
    from ..app import build_app

    app, bare = build_app(settings), BareApp()
    async with (
        serving(uvicorn_server(bare.app, settings), socks["bare"]),
        serving(uvicorn_server(app, settings), socks["app"]),
    ):
        await asyncio.gather(driver.ready(), *(c.ready() for c in listeners))
        run = Run(app, bare, sizes, driver, listeners)
        # A first batch through every stage, so no first call is timed.
        await run.ingest(sizes.ingest_batch)
        ingest = await run.ingest(sizes.ingest_records)
        state = run.state_facts()
        idle = await run.compare(loaded_per_s=0.0)
        loaded = await run.compare(loaded_per_s=LOADED_SHARE * ingest["scored_per_s"])
        fan_out = await run.fan_out()
        return {
            "agents": [a.agent_id for a in run.agents],
            "ingest": ingest,
            "system_state": {"state": state, "idle": idle, "loaded": loaded},
            "websocket": fan_out,
            "consistency": _consistency(run, fan_out),
        }


def _consistency(run: Run, fan_out: dict[str, Any]) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(t[key] for t in run.tallies)

    statuses: Counter[str] = Counter()
    for t in run.tallies:
        statuses.update(t["statuses"])
    accepted = total("records_accepted")
    scored = {k: n - run.scored0[k] for k, n in run.scored().items()}
    errors = (
        total("errors")
        + sum(n for s, n in statuses.items() if not s.startswith("2"))
        + fan_out["connect_errors"]
        + fan_out["closed_early"]
        + sum(int(a.counters["errors"]) for a in run.agents)
    )
    return {
        "records_posted": total("records_posted"),
        "records_accepted": accepted,
        "records_rejected": total("records_rejected"),
        "server_accepted": run.accepted() - run.accepted0,
        "scored": scored,
        "all_scored": all(n == accepted for n in scored.values()),
        "requests": total("requests"),
        "statuses": dict(statuses),
        "non_2xx": sum(n for s, n in statuses.items() if not s.startswith("2")),
        "transport_errors": total("errors"),
        "first_error": next((t["first_error"] for t in run.tallies if t["first_error"]), ""),
        "agent_errors": sum(int(a.counters["errors"]) for a in run.agents),
        "ws_clients": fan_out["clients"],
        "ws_connected": fan_out["connected"],
        "ws_without_frames": fan_out["without_frames"],
        "ws_closed_early": fan_out["closed_early"],
        "errors": errors,
    }


def run_http_bench(
    settings: Settings, quick: bool, sizes: HttpSizes | None = None
) -> dict[str, Any]:
    """The three measurements in one run; `sizes` (default QUICK or FULL) lets a test run
    a smaller one."""
    sizes = sizes or (QUICK if quick else FULL)
    load_before = os.getloadavg()[0]
    raise_fd_limit()
    socks = {"app": listening_socket(), "bare": listening_socket()}
    ports = {name: sock.getsockname()[1] for name, sock in socks.items()}
    url = f"ws://127.0.0.1:{ports['app']}/api/{WS_AGENT}/ws"
    shares = [
        sizes.ws_clients // sizes.ws_processes + (i < sizes.ws_clients % sizes.ws_processes)
        for i in range(sizes.ws_processes)
    ]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="factory_mas-bench-http-") as data_dir,
            kept_signal_handlers(),
            Child("driver process", _driver_main, ports) as driver,
            contextlib.ExitStack() as stack,
        ):
            listeners = [
                stack.enter_context(
                    Child(f"listener {i}", listeners_main, url, n, sizes.ws_deflate)
                )
                for i, n in enumerate(shares)
            ]
            s = bench_settings(settings, Path(data_dir))
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                figures = runner.run(_run(s, sizes, socks, driver, listeners))
    finally:
        for sock in socks.values():
            sock.close()
    ratio = figures["system_state"]["loaded"]["ratio"]
    return {
        "machine": machine_facts(),
        "quick": quick,
        "sizes": asdict(sizes),
        # A shared machine's other work shows here; it slows every side alike.
        "load_average": {"before": load_before, "after": os.getloadavg()[0]},
        **figures,
        "targets": {"system_state_ratio": target(ratio, STATE_RATIO_TARGET, at_least=True)},
    }


# -- the report ----------------------------------------------------------------------------


def _get_rows(name: str, case: dict[str, Any]) -> list[str]:
    labels = {
        "bare": "bare /bare",
        "bare_state": "bare /bare-state (same bytes)",
        "state": "app /system-state",
    }
    rows = [f"  {name}"]
    for side, label in labels.items():
        r = case[side]
        rows.append(
            f"    {label:<32}{r['per_s']:>9,.0f}{r['p50_ms']:>9.2f}"
            f"{r['p99_ms']:>9.2f}{r['response_bytes']:>10,.0f}"
            f"{r['server_cpu']:>8.0%}{r['client_cpu']:>8.0%}"
        )
    rows.append(
        f"    state/bare {case['ratio']:.0%} = size (bare-state/bare) {case['size_ratio']:.0%}"
        f" x app (state/bare-state) {case['app_ratio']:.0%}"
    )
    return rows


def http_report(results: dict[str, Any]) -> str:
    m, sz, ing = results["machine"], results["sizes"], results["ingest"]
    st, ws, c = results["system_state"], results["websocket"], results["consistency"]
    t = results["targets"]["system_state_ratio"]
    lag = ws["lag_ms"]
    state = st["state"]
    lines = [
        f"http bench: real uvicorn on 127.0.0.1, {m['cores']} cores, Python "
        f"{m['python']}{' (quick)' if results['quick'] else ''}",
        "Both uvicorns (the app and a bare Starlette, same settings) in one event loop in this "
        "process; every client in a spawned process. API keys off and rate limits raised out "
        "of reach: this measures the app, not the limiter (its middleware still runs).",
        f"Load average {results['load_average']['before']:.1f} before, "
        f"{results['load_average']['after']:.1f} after (others' work on a shared machine "
        "slows every side alike; the ratios hold better than the rates).",
        "",
        f"POST /api/ingest: {ing['records']:,} records, arrays of {ing['batch']}, "
        f"{ing['connections']} connections (httpx)",
        f"  accepted (202) {ing['accepted_per_s']:,.0f} records/s; scored by every one of "
        f"{', '.join(results['agents'])}: {ing['scored_per_s']:,.0f} records/s "
        "(first post to last prediction)",
        "",
        f"GET, {sz['get_connections']} keep-alive connections, {sz['get_rounds']} rounds of "
        f"{sz['get_round_s']:g} s per side, alternating (best round shown)",
        f"  /system-state held {state['alarms']} alarms, {state['alarm_groups']} groups, "
        f"{state['alerts']} alerts, {state['decisions']} decisions "
        f"({state['bytes']:,} bytes{', flood' if state['flood'] else ''})",
        "  size: a bare route sending those bytes; app: middleware, routing, building and "
        "encoding the state",
        f"  {'':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'bytes':>10}{'server':>8}"
        f"{'client':>8}  (CPU: cores busy)",
        *_get_rows("idle (the state left by the ingest above)", st["idle"]),
        *_get_rows(
            f"under ingest at {st['loaded']['ingest_per_s']:,.0f} records/s (half the capacity)",
            st["loaded"],
        ),
        "",
        f"WebSocket /api/{WS_AGENT}/ws: {ws['clients']:,} clients "
        f"({sz['ws_processes']} process{'es' if sz['ws_processes'] > 1 else ''}, "
        f"permessage-deflate {'offered' if sz['ws_deflate'] else 'off'}), "
        f"{ws['records']:,} records posted at {ws['records_per_s']:,.0f}/s in arrays of "
        f"{sz['ws_batch']} for {sz['ws_inject_s']:g} s",
        f"  {ws['frames_per_client']:,} frames per client (a batch of predictions or an alert "
        f"each): {ws['frames_offered_per_s']:,.0f} frames/s offered in all",
        f"  delivered {ws['frames']:,} frames, {ws['frames_per_s']:,.0f} frames/s; "
        f"fewest per client {ws['min_frames']}; cores busy: server {ws['server_cpu']:.0%}, "
        f"clients {', '.join(f'{x:.0%}' for x in ws['client_cpu'])}",
        f"  lag produced_at -> received: p50 {lag['p50']:.1f} ms, p99 {lag['p99']:.1f} ms, "
        f"max {lag['max']:.1f} ms; slowest client's p99 {lag['slowest_client_p99']:.1f} ms",
        f"  behind (short of every frame {sz['ws_settle_s']:g} s after the last was made) "
        f"{ws['behind']}; frames the server dropped {ws['server_dropped']:,} (for "
        f"{ws['clients_dropped_at']} clients); closed early {ws['closed_early']}; connect "
        f"errors {ws['connect_errors']}",
        "",
        f"consistency: posted {c['records_posted']:,}, accepted {c['records_accepted']:,} "
        f"(server counted {c['server_accepted']:,}), scored "
        + ", ".join(f"{k} {v:,}" for k, v in c["scored"].items()),
        f"  {c['requests']:,} requests, non-2xx {c['non_2xx']}, transport errors "
        f"{c['transport_errors']}, agent errors {c['agent_errors']}, WebSocket clients "
        f"without frames {c['ws_without_frames']}"
        + (f"; first error: {c['first_error']}" if c["first_error"] else ""),
        f"target: /system-state under ingest >= {t['target']:.0%} of bare /bare requests/s: "
        f"{t['value']:.0%}, {'met' if t['met'] else 'MISSED'}",
    ]
    return "\n".join(lines)
