"""Shared fixtures: real servers on free loopback ports, real SQLite files in tmp folders."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from factory_mas.settings import Settings, load_settings
from tests.support.app import TEST_ENV, Server

# The PostgreSQL server and a fresh database per test (tests/support/postgres.py), and
# the store on each backend in turn (tests/support/databases.py).
from tests.support.databases import database, on_each_database, store  # noqa: F401 - fixtures
from tests.support.paths import REPO
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _fast_layer_stays_in_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test not marked `integration` opens no network socket and starts no process, so
    `pytest -m "not integration"` stays the fast layer; a test that does fails and says so."""
    if request.node.get_closest_marker("integration"):
        return

    def refused(what: str, original: Callable[..., Any], network_only: bool) -> Callable:
        def guard(self: Any, *args: Any, **kwargs: Any) -> Any:
            # The test's own thread only: a server thread an earlier test left winding down
            # is not this test's doing.
            ours = threading.current_thread() is threading.main_thread()
            if ours and (not network_only or self.family in (socket.AF_INET, socket.AF_INET6)):
                pytest.fail(f"{what} in a test not marked integration", pytrace=False)
            return original(self, *args, **kwargs)

        return guard

    for name in ("bind", "connect", "connect_ex"):
        original = getattr(socket.socket, name)
        monkeypatch.setattr(socket.socket, name, refused(f"socket.{name}", original, True))
    popen = subprocess.Popen.__init__
    monkeypatch.setattr(subprocess.Popen, "__init__", refused("a child process", popen, False))


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


@pytest.fixture
def broker(tmp_path: Path) -> Iterator:
    """A real mosquitto on a free loopback port, persistence on (a SIGKILL keeps queued
    QoS 1 messages), stopped at teardown. Its log is in `broker.log`."""
    from tests.support.mqtt_broker import INSTALL_HINT, Broker, mosquitto_path

    try:
        mosquitto_path()
    except RuntimeError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    b = Broker(tmp_path / "broker", persistence=True).start()
    yield b
    b.stop(signal.SIGKILL)
