"""The SCADA bridge: the point table, the live values, and the three protocol servers.

Every `update_interval_s` the live values are computed once and handed to each server;
the servers only copy them into their own data model, so a slow client never touches
scoring. A server whose port cannot be bound is reported (on /health and /status) and
the rest of the process keeps running.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...api import json_response
from ...tasks import cancel
from .live import LiveValues, Value, Writes
from .points import Point, build_points, rows

if TYPE_CHECKING:
    from ...app import Components

log = logging.getLogger(__name__)


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
    def __init__(self, components: Components) -> None:
        self.c = components
        self.settings = components.settings.scada
        self.points: list[Point] = build_points(components.settings)
        self.live = LiveValues(components, self.points)
        self.writes = Writes(components, self.live)
        self.servers: list[ProtocolServer] = []
        self.last: dict[str, Value] = {}
        self.updated_at: datetime | None = None
        self._stack: AsyncExitStack | None = None
        self._task: asyncio.Task | None = None

    def _make_servers(self) -> list[ProtocolServer]:
        s = self.settings
        servers: list[ProtocolServer] = []
        if s.opcua_enabled:
            from .opcua import OpcUaServer

            servers.append(OpcUaServer(self))
        if s.modbus_enabled:
            from .modbus import ModbusServer

            servers.append(ModbusServer(self))
        if s.dnp3_enabled:
            from .dnp3 import Dnp3Server

            servers.append(Dnp3Server(self))
        return servers

    async def __aenter__(self) -> ScadaBridge:
        if not self.settings.enabled:
            return self
        self._stack = AsyncExitStack()
        await self._stack.enter_async_context(self.live)
        self.servers = self._make_servers()
        for server in self.servers:
            await self._stack.enter_async_context(server)
        self.refresh()
        self._task = asyncio.create_task(self._tick(), name="scada-tick")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self._task)
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._task = None

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
        return [f"{s.name}: {s.status()['error']}" for s in self.servers if s.status()["error"]]

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.settings.enabled,
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
