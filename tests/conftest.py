"""Shared fixtures: real servers on free loopback ports, real SQLite files in tmp folders."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from factory_mas.agents.base import AgentContext
from factory_mas.app import Components, build_app
from factory_mas.hub import Hub
from factory_mas.ml.inference import Inference
from factory_mas.settings import Settings, load_settings
from factory_mas.store import Store

# The PostgreSQL server and a fresh database per test (tests/postgres.py).
from .postgres import postgres, postgres_url  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"


# What every test server runs with unless the test is about it: no replay, no SCADA
# servers on fixed ports (tests that want them ask with free ones), no API keys (tested on
# their own), and rate limits no test run reaches (tested on their own).
TEST_ENV = {
    "FACTORY_REPLAY_ENABLED": "false",
    "FACTORY_SCADA_ENABLED": "false",
    "FACTORY_AUTH_ENABLED": "false",
    "FACTORY_LIMITS_REQUESTS_PER_S": "100000",
    "FACTORY_LIMITS_BURST": "1000000",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(machine_id: int = 1, **overrides: object) -> dict:
    """A valid telemetry record in snake_case, as a gateway would post it."""
    base = {
        "timestamp": "2025-01-01T00:00:00Z",
        "machine_id": machine_id,
        "operation_mode": "Active",
        "temperature_c": 65.0,
        "vibration_hz": 1.5,
        "power_consumption_kw": 6.0,
        "network_latency_ms": 12.0,
        "packet_loss_pct": 0.5,
        "defect_rate_pct": 2.0,
        "production_speed": 300.0,
        "maintenance_score": 0.3,
        "error_rate_pct": 2.0,
    }
    base.update(overrides)
    return base


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for in-process tests: a private data dir, no replay, quick checkpoints."""
    return load_settings(
        path=REPO / "settings.toml",
        env={
            "FACTORY_DATA_DIR": str(tmp_path / "data"),
            "FACTORY_AGENTS_PM_CHECKPOINT_INTERVAL_S": "0.1",
            **TEST_ENV,
        },
    )


def without_off_delay(settings: Settings, *agents: str) -> Settings:
    """`settings` with these agents' off-delays at 0: the return to normal is told at the
    first NORMAL record (tests of other things feed records faster than real time)."""
    replace = msgspec.structs.replace
    changed = {name: replace(getattr(settings.agents, name), off_delay_s=0.0) for name in agents}
    return replace(settings, agents=replace(settings.agents, **changed))


@asynccontextmanager
async def agent_context(settings: Settings) -> AsyncIterator[AgentContext]:
    """The real shared services an agent needs, started and stopped around the block."""
    hub = Hub(queue_size=settings.hub.queue_size)
    async with Store.in_data_dir(settings.data_dir) as store, Inference(2) as inference:
        yield AgentContext(
            hub=hub, store=store, inference=inference, models_dir=settings.models_dir
        )
        hub.close()


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Components, httpx.AsyncClient]]:
    """The whole application in this event loop, started and stopped by its own lifespan,
    with an HTTP client that calls it in process (no socket)."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://factory.test") as client:
            yield app.state.components, client


class Server:
    """`python -m factory_mas` in a child process: real uvicorn on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = data_dir
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "FACTORY_SERVER_HOST": "127.0.0.1",
            "FACTORY_DATA_DIR": str(data_dir),
            **TEST_ENV,
            "LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    # The command line after `python -m factory_mas`.
    args: tuple[str, ...] = ()

    def ready(self, health: dict) -> bool:
        """Whether /health's body says the server is ready for the test."""
        return bool(health.get("ready"))

    def start(self, timeout_s: float = 60.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log_fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factory_mas", *self.args],
            cwd=self.data_dir.parent,
            env=self.env,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.ready(httpx.get(self.url + "/health", timeout=1).json()):
                    return self
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout_s}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout_s)
        self._log_fh.close()
        return code

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, body: object = None, **kw) -> httpx.Response:
        if body is not None:
            kw["content"] = msgspec.json.encode(body)
            kw.setdefault("headers", {"content-type": "application/json"})
        return httpx.post(self.url + path, timeout=10, **kw)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator:
    servers: list[Server] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        s = Server(data_dir or tmp_path / "data", env)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.stop(signal.SIGKILL)


def with_scada(settings: Settings, **scada: object) -> Settings:
    """SCADA on, loopback only, every protocol off unless named, refreshed quickly."""
    defaults: dict[str, object] = {
        "enabled": True,
        "host": "127.0.0.1",
        "opcua_enabled": False,
        "modbus_enabled": False,
        "dnp3_enabled": False,
        "update_interval_s": 0.05,
    }
    return msgspec.structs.replace(
        settings, scada=msgspec.structs.replace(settings.scada, **{**defaults, **scada})
    )


async def add_key(settings: Settings, name: str, role: str) -> str:
    """An API key made in the app's store as `python -m factory_mas keys add` makes it:
    before the app starts, so every server already knows it."""
    from factory_mas.auth import keys

    async with Store.from_settings(settings) as store:
        _id, key = await store.write(keys.add, name, role, "test", "test")
    return key


async def until(predicate: Callable[[], Any], what: str, timeout_s: float = 20.0) -> Any:
    """Wait for what another task makes true; the timeout is only a hang guard."""
    try:
        async with asyncio.timeout(timeout_s):
            while not (value := predicate()):
                await asyncio.sleep(0.01)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def wait_until(
    predicate, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition"
):
    """Poll a condition that another process makes true; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator:
    """A real mosquitto on a free loopback port, persistence on (a SIGKILL keeps queued
    QoS 1 messages), stopped at teardown. Its log is in `broker.log`."""
    from .mqtt_broker import INSTALL_HINT, Broker, mosquitto_path

    try:
        mosquitto_path()
    except RuntimeError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    b = Broker(tmp_path / "broker", persistence=True).start()
    yield b
    b.stop(signal.SIGKILL)
