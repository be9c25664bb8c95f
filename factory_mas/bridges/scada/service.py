"""The SCADA bridge: the point table, the live values, and the three protocol servers.

Every `update_interval_s` the live values are computed once and handed to each server;
the servers only copy them into their own data model, so a slow client never touches
scoring. A server whose port cannot be bound is reported (on /health and /status) and
the rest of the process keeps running.

With `background=True` the servers start after the bridge has been entered instead of
before: importing asyncua, pymodbus and dnp3 and building OPC UA's address space take
seconds, which `python -m factory_mas` should not wait for before it answers HTTP. Until
they are up, /health says so ("scada: starting", status degraded).

The bridge reads and steers the plant only through the two ports of ports.py; the hub
brings it the predictions, the store the API keys OPC UA users log in with and the audit
trail of every write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...agents.registry import AGENTS, Registry
from ...http.api import json_response
from ...hub import Hub
from ...settings import Settings
from ...store import Store
from ...tasks import cancel
from .live import LiveValues, Value, Writes
from .points import Point, build_points, rows
from .ports import PlantControl, PlantView

log = logging.getLogger(__name__)
# On shutdown, how long a background start still in progress may take to finish, so that
# every server that bound its port is stopped in order rather than cut off half-way.
START_GRACE_S = 5.0


class ProtocolServer(Protocol):
    """What the bridge needs of an OPC UA, Modbus or DNP3 server."""

    name: str

    async def __aenter__(self) -> Any:
        """Bind and serve. Never raises for a port that cannot be bound: `error` says why."""

    async def __aexit__(self, *exc: object) -> None: ...

    def update(self, values: dict[str, Value], changed: set[str], at: datetime) -> None:
        """Copy the new values into the server's data model (called on the event loop)."""

    def status(self) -> dict[str, Any]:
        """{"listening": bool, "port": int, "error": str | None, ...}"""


class ScadaBridge:
    def __init__(
        self,
        settings: Settings,
        view: PlantView,
        control: PlantControl,
        hub: Hub,
        store: Store,
        *,
        background: bool = False,
        registry: Registry = AGENTS,
    ) -> None:
        self.background = background
        self.settings = settings.scada
        self.data_dir = settings.data_dir
        self.store = store
        self.points: list[Point] = build_points(settings, registry)
        self.live = LiveValues(settings, view, hub, self.points, registry)
        self.writes = Writes(settings, control, hub, store, self.live)
        self.servers: list[ProtocolServer] = []
        self.last: dict[str, Value] = {}
        self.updated_at: datetime | None = None
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task | None = None
        self._start_task: asyncio.Task | None = None
        self.starting = False
        self.start_error: str | None = None
        # Set once the servers' start is over, whether they listen or not.
        self.started = asyncio.Event()

    def _server_types(self) -> list[Callable[[ScadaBridge], ProtocolServer]]:
        """The enabled servers' classes. Importing them loads their protocol libraries,
        which only a bridge that runs those servers needs."""
        s = self.settings
        types: list[Callable[[ScadaBridge], ProtocolServer]] = []
        if s.opcua_enabled:
            from .opcua import OpcUaServer

            types.append(OpcUaServer)
        if s.modbus_enabled:
            from .modbus import ModbusServer

            types.append(ModbusServer)
        if s.dnp3_enabled:
            from .dnp3 import Dnp3Server

            types.append(Dnp3Server)
        return types

    async def __aenter__(self) -> ScadaBridge:
        if not self.settings.enabled:
            self.started.set()
            return self
        self._stack = AsyncExitStack()
        # Entered now in either case: predictions made while the servers start are kept.
        await self._stack.enter_async_context(self.live)
        if self.background:
            self.starting = True
            self._start_task = asyncio.create_task(self._start_later(), name="scada-start")
        else:
            try:
                await self._start_servers(self._server_types())
            finally:
                self.started.set()
        return self

    async def _start_servers(self, types: list[Callable[[ScadaBridge], ProtocolServer]]) -> None:
        assert self._stack is not None
        self.servers = [make(self) for make in types]
        for server in self.servers:
            await self._stack.enter_async_context(server)
        self.refresh()
        self._task = asyncio.create_task(self._tick(), name="scada-tick")

    async def _start_later(self) -> None:
        try:
            # The protocol libraries take most of a second to import: in a thread, so the
            # event loop keeps answering requests meanwhile.
            await self._start_servers(await asyncio.to_thread(self._server_types))
        except Exception as exc:  # a missing package, a bug: reported, not swallowed
            self.start_error = f"start failed: {type(exc).__name__}: {exc}"
            log.exception("scada: starting the servers failed")
        else:
            log.info("scada: servers started")
        finally:
            self.starting = False
            self.started.set()

    async def __aexit__(self, *exc: object) -> None:
        if self._start_task is not None:
            await asyncio.wait([self._start_task], timeout=START_GRACE_S)
            await cancel(self._start_task)
        await cancel(self._task)
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._task = self._start_task = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.update_interval_s)
            try:
                self.refresh()
            except Exception:  # a bad value must not stop every later update
                log.exception("scada: refreshing the points failed")

    def refresh(self) -> None:
        values = self.live.values()
        changed = {k for k, v in values.items() if self.last.get(k) != v}
        at = datetime.now(UTC)
        for server in self.servers:
            server.update(values, changed, at)
        self.last, self.updated_at = values, at

    # -- views -------------------------------------------------------------------------

    @property
    def problems(self) -> list[str]:
        found = [f"{s.name}: {s.status()['error']}" for s in self.servers if s.status()["error"]]
        if self.starting:
            found.append("scada: starting")
        if self.start_error:
            found.append(f"scada: {self.start_error}")
        return found

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.enabled,
            "starting": self.starting,
            "error": self.start_error,
            "points": len(self.points),
            "updated_at": self.updated_at,
            "servers": {s.name: s.status() for s in self.servers},
        }

    def routes(self) -> list[Route]:
        return [Route("/api/scada/points", self.points_route)]

    async def points_route(self, _request: Request) -> Response:
        current = self.last
        return json_response(
            {
                "count": len(self.points),
                "points": [
                    {**row, "value": current.get(str(row["name"]))} for row in rows(self.points)
                ],
            }
        )
