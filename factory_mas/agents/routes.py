"""An agent's REST and WebSocket routes, mounted under /api/<slug>, and the WebSocket
fan-out of its predictions and alerts.

The predict route stays the agent's own (`BaseAgent.predict_route`): what a request holds
is the agent's business (telemetry for most, camera frames for PPE).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from .. import history
from ..auth.keys import actor
from ..errors import FactoryError, StoreError
from ..http.api import ApiError, json_response, read_body
from ..http.ws import WsClient, frame, stream
from ..messages import Alert, Prediction
from ..store import audit_change

if TYPE_CHECKING:
    from .base import BaseAgent

log = logging.getLogger(__name__)

HISTORY_LIMIT_MAX = 10_000


@dataclass(frozen=True)
class Subject:
    """Which machine or camera a reader wants; None matches any."""

    machine_id: int | None = None
    camera_id: str | None = None

    def matches(self, item: Prediction | Alert) -> bool:
        return (self.machine_id is None or item.machine_id == self.machine_id) and (
            self.camera_id is None or item.camera_id == self.camera_id
        )


EVERYTHING = Subject()


def fan_out(clients: set[WsClient], predictions: list[Prediction], alerts: list[Alert]) -> None:
    """Push a batch's predictions and alerts to the WebSocket readers that want them."""
    if not clients:
        return
    frames: dict[Subject, bytes] = {}
    for client in clients:
        key = client.subject
        if key not in frames:
            chosen = (
                predictions if key == EVERYTHING else [p for p in predictions if key.matches(p)]
            )
            frames[key] = frame("predictions", chosen) if chosen else b""
        if frames[key]:
            client.push(frames[key])
        for alert in alerts:
            if key.matches(alert):
                client.push(frame("alert", alert))


class AgentRoutes:
    def __init__(self, agent: BaseAgent) -> None:
        self.agent = agent

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/health", self.health_route),
            Route("/status", self.status_route),
            Route("/history", self.history_route),
            Route("/predict", self.agent.predict_route, methods=["POST"]),
            Route("/reload", self.reload_route, methods=["POST"]),
            Route("/start", self.start_route, methods=["POST"]),
            Route("/stop", self.stop_route, methods=["POST"]),
            WebSocketRoute("/ws", self.ws_route),
        ]

    async def ws_route(self, ws: WebSocket) -> None:
        raw = ws.query_params.get("machine_id")
        machine_id = None
        if raw:
            if not raw.isdigit():
                await ws.close(code=1008, reason=f"machine_id: expected an integer, got {raw!r}")
                return
            machine_id = int(raw)
        subject = Subject(machine_id, ws.query_params.get("camera_id") or None)
        await ws.accept()
        client = WsClient(self.agent.settings.ws_queue_size, subject)
        await stream(ws, self.agent.ws_clients, client, frame("hello", self.agent.health()))

    async def reload_route(self, _request: Request) -> Response:
        agent = self.agent
        try:
            version = await agent.reload()
        except FactoryError as exc:
            raise ApiError(
                422, "reload_refused", f"{exc}; still serving {agent.model_version or 'nothing'}"
            ) from None
        return json_response({"agent_id": agent.agent_id, "model_version": version})

    async def start_route(self, request: Request) -> Response:
        return await self._switch(request, on=True)

    async def stop_route(self, request: Request) -> Response:
        return await self._switch(request, on=False)

    async def _switch(self, request: Request, *, on: bool) -> Response:
        """Start or stop, audited like a settings change (the SCADA `enabled` point does
        the same through `set_running`, and needs the same role: admin)."""
        agent = self.agent
        # Nothing is read from the body, but a huge one is refused as on every other route.
        await read_body(request, agent.ctx.max_body_bytes)
        action = "start" if on else "stop"
        error = None
        try:
            await agent.set_running(on)
        except FactoryError as exc:
            error = str(exc)
        result = {"ok": error is None, "status": agent.status, "error": error}
        data = {"request": {"action": action}, "result": result}
        try:
            await agent.ctx.store.write(
                partial(
                    audit_change,
                    at=time.time(),
                    target=agent.agent_id,
                    origin="http",
                    by=actor(request.scope) or "http",
                    accepted=error is None,
                    data=msgspec.json.encode(data),
                )
            )
        except StoreError as exc:  # the agent has started or stopped all the same
            log.error("%s: %s not audited: %s", agent.agent_id, action, exc)
        if error is not None:
            raise ApiError(409, "not_started", error)
        return json_response({"agent_id": agent.agent_id, "status": agent.status})

    async def health_route(self, _request: Request) -> Response:
        body = self.agent.health()
        return json_response(body, 200 if body["healthy"] else 503)

    async def status_route(self, _request: Request) -> Response:
        return json_response(self.agent.stats())

    async def history_route(self, request: Request) -> Response:
        """Newest first. Memory holds the last `history_size`; the store holds the days
        before, so a time window (since/until on record_ts) is answered from the store."""
        agent = self.agent
        q = history.HistoryQuery.of(request, HISTORY_LIMIT_MAX)
        source = request.query_params.get("source") or ("store" if q.windowed else "memory")
        if source == "store":
            items = await q.from_store(agent.ctx.store, agent.agent_id)
        elif source == "memory":
            items = (
                history.newest(
                    reversed(agent.history), q.limit, q.machine_id, q.camera_id, q.since, q.until
                )
                if q.windowed
                else agent.recent(q.limit, q.machine_id, q.camera_id)
            )
        else:
            raise ApiError(400, "bad_query", f"source: expected memory or store, got {source!r}")
        return json_response(
            {
                "agent_id": agent.agent_id,
                "source": source,
                "count": len(items),
                "predictions": items,
            }
        )
