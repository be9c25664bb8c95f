"""The application under test: in this event loop (running_app, agent_context) or as a
child process (Server), with the settings every test server runs with."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec

from factory_mas.agents.base import AgentContext
from factory_mas.agents.registry import AGENTS, Registry
from factory_mas.app import Components, build_app
from factory_mas.hub import Hub
from factory_mas.ml.inference import Inference
from factory_mas.settings import Settings
from factory_mas.store import Store
from tests.support.net import free_port

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
async def running_app(
    settings: Settings, registry: Registry = AGENTS
) -> AsyncIterator[tuple[Components, httpx.AsyncClient]]:
    """The whole application in this event loop, started and stopped by its own lifespan,
    with an HTTP client that calls it in process (no socket). `registry`: the agents it
    knows, for tests that add one."""
    app = build_app(settings, registry=registry)
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
