"""What start-up loads and what it waits for.

Importing the app must not load the libraries of optional components (SCADA protocols,
Gemini, Twilio, MQTT): they cost seconds and most installations run without some of them.
`python -m factory_mas` starts the SCADA servers once it is ready, and /health says so
meanwhile. No timings are asserted here: only what is loaded, and what is reported.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from factory_mas.app import Components, build_app
from factory_mas.bridges.scada import service as scada_service
from factory_mas.settings import Settings
from tests.support.app import with_scada
from tests.support.net import free_port
from tests.support.paths import REPO

# Fresh interpreters, and SCADA servers on loopback ports.
pytestmark = pytest.mark.integration

# Hang guard only.
TIMEOUT_S = 120

# Import names: dnp3py installs `dnp3`, google-genai `google.genai`.
HEAVY = ["asyncua", "pymodbus", "dnp3", "google.genai", "twilio", "aiomqtt", "paho"]

PROBE = """
import asyncio, json, sys
import factory_mas.app
loaded = {"import": [m for m in HEAVY if m in sys.modules]}
if RUN:
    from factory_mas.app import build_app
    from factory_mas.settings import load_settings

    async def run():
        app = build_app(load_settings(path=SETTINGS))
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0.2)  # let the components' first tasks run

    asyncio.run(run())
    loaded["lifespan"] = [m for m in HEAVY if m in sys.modules]
print(json.dumps(loaded))
"""


def probe(tmp_path: Path, run_lifespan: bool) -> dict[str, list[str]]:
    """Which of HEAVY a fresh interpreter has loaded after importing the app (and after
    running its lifespan with SCADA, MQTT, Gemini and Twilio unconfigured)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "TWILIO_"))}
    for name in ("PORT", "MQTT_BROKER", "GEMINI_API_KEY", "PLANNER_URL"):
        env.pop(name, None)
    env.update(
        FACTORY_DATA_DIR=str(tmp_path / "data"),
        FACTORY_SCADA_ENABLED="false",
        FACTORY_REPLAY_ENABLED="false",
    )
    code = (
        f"HEAVY = {HEAVY!r}\nRUN = {run_lifespan!r}\nSETTINGS = {str(REPO / 'settings.toml')!r}\n"
        + PROBE
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_app_loads_no_optional_library(tmp_path: Path) -> None:
    assert probe(tmp_path, run_lifespan=False) == {"import": []}


def test_running_without_scada_mqtt_gemini_or_twilio_loads_none_of_them(tmp_path: Path) -> None:
    assert probe(tmp_path, run_lifespan=True) == {"import": [], "lifespan": []}


# -- SCADA started in the background ---------------------------------------------------------


def opcua_settings(settings: Settings) -> Settings:
    return with_scada(settings, opcua_enabled=True, opcua_port=free_port())


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Components, httpx.AsyncClient]]:
    """tests.support.app's running_app, with the SCADA servers started as `serve` starts them."""
    app = build_app(settings, scada_in_background=True)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://factory.test") as client:
            yield app.state.components, client


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch):
    """Holds the background start before it imports the protocol servers until set."""
    event = threading.Event()
    types = scada_service.ScadaBridge._server_types

    def held(self):
        event.wait(TIMEOUT_S)
        return types(self)

    monkeypatch.setattr(scada_service.ScadaBridge, "_server_types", held)
    yield event
    event.set()  # never leave the import thread waiting


async def started(c) -> None:
    await asyncio.wait_for(c.scada.started.wait(), TIMEOUT_S)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_health_says_scada_is_starting_until_its_servers_listen(settings, gate) -> None:
    s = opcua_settings(settings)
    async with serving(s) as (c, http):
        r = await http.get("/health")
        assert r.status_code == 200
        health = r.json()
        assert health["ready"] is True
        assert health["status"] == "degraded"
        assert health["components"]["scada"] == ["scada: starting"]
        assert c.scada.status()["starting"] is True

        gate.set()
        await started(c)
        health = (await http.get("/health")).json()
        assert health["components"]["scada"] == "ok"
        status = c.scada.status()
        assert status["starting"] is False and status["error"] is None
        assert status["servers"]["opcua"]["listening"] is True
    assert port_is_free(s.scada.opcua_port)


async def test_a_failed_background_start_is_reported(settings, monkeypatch) -> None:
    def missing(self):
        raise ModuleNotFoundError("No module named 'asyncua'")

    monkeypatch.setattr(scada_service.ScadaBridge, "_server_types", missing)
    async with serving(opcua_settings(settings)) as (c, http):
        await started(c)
        r = await http.get("/health")
        assert r.status_code == 200
        health = r.json()
        assert health["status"] == "degraded"
        assert health["components"]["scada"] == [
            "scada: start failed: ModuleNotFoundError: No module named 'asyncua'"
        ]


async def test_stopping_while_scada_starts_stops_what_started(settings, gate, monkeypatch) -> None:
    monkeypatch.setattr(scada_service, "START_GRACE_S", TIMEOUT_S)
    s = opcua_settings(settings)
    async with serving(s) as (c, _http):
        # The start goes on while shutdown has begun; shutdown waits for it, then stops it.
        asyncio.get_running_loop().call_soon(gate.set)
    assert c.scada.started.is_set()
    assert not any(server.status()["listening"] for server in c.scada.servers)
    assert port_is_free(s.scada.opcua_port)


async def test_stopping_while_scada_is_held_up_does_not_wait_forever(
    settings, gate, monkeypatch
) -> None:
    monkeypatch.setattr(scada_service, "START_GRACE_S", 0.1)
    async with serving(opcua_settings(settings)) as (c, _http):
        pass
    assert c.scada.started.is_set()
    assert c.scada.servers == []
    gate.set()  # the import thread may finish now, before the loop closes
