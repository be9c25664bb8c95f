"""HTTP and WebSocket routes of the orchestrator, mounted at /api/orchestrator."""

from __future__ import annotations

import time
from typing import Annotated

from msgspec import Meta, Struct
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket

from ..auth.keys import actor
from ..http.api import (
    ApiError,
    json_response,
    query_choice,
    query_int,
    query_time,
    read_alerts,
    read_struct,
)
from ..http.ws import WsClient, frame, stream
from ..labels.model import Verdict
from ..levels import LEVELS
from ..messages import ALARM_STATES, Alarm
from ..times import iso
from . import records
from .logic import AlarmConflict
from .service import AlarmNotFound, Orchestrator

LIMIT_MAX = 10_000
KPI_DEFAULT_S = 86_400.0
# A year of 10-minute periods is some 52,000 numbers: fine; beyond it, ask again.
KPI_MAX_S = 366 * 86_400.0
WS_QUEUE = 1024
Who = Annotated[str, Meta(min_length=1, max_length=200)]
Note = Annotated[str, Meta(max_length=2000)]


# Who did it goes into the alarm's audit trail: the API key's name when keys are on,
# else the body's "by", which is then required.
class AckBody(Struct, forbid_unknown_fields=True):
    by: Who | None = None
    note: Note = ""
    # The operator's verdict, given with the acknowledgement (see FeedbackBody).
    feedback: Verdict | None = None
    comment: Note = ""


class ShelveBody(Struct, forbid_unknown_fields=True):
    by: Who | None = None
    # None: the configured default; never longer than max_shelve_s.
    duration_s: Annotated[float, Meta(gt=0)] | None = None
    reason: Note = ""


class UnshelveBody(Struct, forbid_unknown_fields=True):
    by: Who | None = None


class CommentBody(Struct, forbid_unknown_fields=True, kw_only=True):
    by: Who | None = None
    text: Annotated[str, Meta(min_length=1, max_length=2000)]


# Whether the alarm was real: kept as a label for training and for the record of nuisance
# alarms (docs/alarms.md, "Feedback").
class FeedbackBody(Struct, forbid_unknown_fields=True, kw_only=True):
    by: Who | None = None
    verdict: Verdict
    comment: Note = ""


class OrchestratorRoutes:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/system-state", self.system_state),
            Route("/status", self.status),
            Route("/alert", self.post_alert, methods=["POST"]),
            Route("/alarms", self.alarms),
            Route("/alarms/{alarm_id}", self.alarm),
            Route("/alarms/{alarm_id}/{action}", self.alarm_action, methods=["POST"]),
            Route("/decisions", self.decisions),
            Route("/kpis", self.kpis),
            WebSocketRoute("/ws", self.ws),
        ]

    async def system_state(self, request: Request) -> Response:
        body, tag = self.o.system_state_json()
        # A poller that sends back the tag it has gets 304 while nothing changed.
        headers = {"ETag": tag, "Cache-Control": "no-cache"}
        if tag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type="application/json")

    async def status(self, _request: Request) -> Response:
        return json_response(self.o.stats())

    async def post_alert(self, request: Request) -> Response:
        """Alerts from outside the agents (a PLC, a person, another system). Answered once
        the alarms they change are committed: 202 means it survives a crash."""
        alerts, _single = await read_alerts(request, self.o.max_body_bytes)
        self._require_running()
        alarms = await self.o.submit(alerts)
        return json_response(
            {"accepted": len(alerts), "alert_ids": [a.id for a in alerts], "alarms": alarms},
            202,
        )

    async def alarms(self, request: Request) -> Response:
        q = records.AlarmQuery(
            states=query_choice(request, "state", ALARM_STATES),
            levels=query_choice(request, "level", LEVELS),
            source=request.query_params.get("source") or None,
            type=request.query_params.get("type") or None,
            machine_id=query_int(request, "machine_id", None, 1, 1_000_000),
            camera_id=request.query_params.get("camera_id") or None,
            since=query_time(request, "since"),
            open=_query_bool(request, "open"),
            limit=query_int(request, "limit", 100, 1, LIMIT_MAX) or 100,
        )
        found = await self.o.store.read(records.find, q)
        return json_response({"count": len(found), "alarms": found})

    async def alarm(self, request: Request) -> Response:
        alarm_id = _alarm_id(request)
        alarm = self.o.alarm_by_id(alarm_id) or await self.o.store.read(records.get, alarm_id)
        if alarm is None:
            raise ApiError(404, "not_found", f"no alarm with id {alarm_id}")
        events = await self.o.store.read(records.events_of, alarm_id)
        return json_response({"alarm": alarm, "events": events})

    async def alarm_action(self, request: Request) -> Response:
        alarm_id = _alarm_id(request)
        action = request.path_params["action"]
        size = self.o.max_body_bytes
        alarm: Alarm
        try:
            if action == "ack":
                ack = await read_struct(request, size, AckBody, "invalid_request")
                if ack.comment and ack.feedback is None:
                    raise ApiError(
                        422,
                        "invalid_request",
                        "comment: goes with feedback (confirmed or false_alarm); a note on "
                        "the acknowledgement itself is `note`",
                        field="comment",
                    )
                alarm = await self.o.ack(
                    alarm_id, _who(request, ack.by), ack.note, ack.feedback, ack.comment
                )
            elif action == "shelve":
                body = await read_struct(request, size, ShelveBody, "invalid_request")
                alarm = await self.o.shelve(
                    alarm_id, _who(request, body.by), self._shelve_duration(body), body.reason
                )
            elif action == "unshelve":
                who = await read_struct(request, size, UnshelveBody, "invalid_request")
                alarm = await self.o.unshelve(alarm_id, _who(request, who.by))
            elif action == "comment":
                note = await read_struct(request, size, CommentBody, "invalid_request")
                alarm = await self.o.comment(alarm_id, _who(request, note.by), note.text)
            elif action == "feedback":
                said = await read_struct(request, size, FeedbackBody, "invalid_request")
                alarm = await self.o.feedback(
                    alarm_id, _who(request, said.by), said.verdict, said.comment
                )
            else:
                raise ApiError(
                    404,
                    "not_found",
                    f"no alarm action {action!r}; use ack, shelve, unshelve, comment or feedback",
                )
        except AlarmNotFound as exc:
            raise ApiError(404, "not_found", str(exc)) from None
        except AlarmConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        return json_response(alarm)

    def _shelve_duration(self, body: ShelveBody) -> float:
        s = self.o.settings
        duration = s.default_shelve_s if body.duration_s is None else body.duration_s
        if duration > s.max_shelve_s:
            raise ApiError(
                422,
                "invalid_request",
                f"duration_s: {duration:g} s is longer than the {s.max_shelve_s:g} s allowed "
                "(orchestrator.max_shelve_s)",
                field="duration_s",
            )
        return duration

    async def kpis(self, request: Request) -> Response:
        """Alarm performance over ?since=&until= (ISO 8601 or Unix seconds); by default
        the last 24 hours. Definitions: docs/alarms.md, "Alarm philosophy"."""
        now = time.time()
        until = query_time(request, "until")
        until = now if until is None else until
        since = query_time(request, "since")
        since = until - KPI_DEFAULT_S if since is None else since
        if since >= until:
            raise ApiError(
                400, "bad_query", f"since ({iso(since)}) must be earlier than until ({iso(until)})"
            )
        if until - since > KPI_MAX_S:
            raise ApiError(
                400,
                "bad_query",
                f"the window is {(until - since) / 86400:.0f} days; at most "
                f"{KPI_MAX_S / 86400:.0f} days at a time",
            )
        try:
            found = await self.o.kpis(since, until)
        except ValueError as exc:
            raise ApiError(400, "bad_query", str(exc)) from None
        return json_response(found)

    async def decisions(self, request: Request) -> Response:
        limit = query_int(request, "limit", 100, 1, LIMIT_MAX) or 100
        machine_id = query_int(request, "machine_id", None, 1, 1_000_000)
        since = query_time(request, "since")
        found = await self.o.store.read(records.recent_decisions, limit, machine_id, since)
        return json_response({"count": len(found), "decisions": found})

    async def ws(self, ws: WebSocket) -> None:
        """Alarm changes, decisions and flood changes as they happen, after a first
        "hello" frame holding the whole system state."""
        await ws.accept()
        client = WsClient(WS_QUEUE)
        await stream(ws, self.o.clients, client, frame("hello", self.o.system_state()))

    def _require_running(self) -> None:
        if not self.o.running:
            raise ApiError(503, "unavailable", "the orchestrator is not running")


def _who(request: Request, claimed: str | None) -> str:
    who = actor(request.scope, claimed)
    if not who:
        raise ApiError(
            422,
            "invalid_request",
            "by: required field is missing (say who you are, or send an API key)",
            field="by",
        )
    return who


def _alarm_id(request: Request) -> int:
    raw = request.path_params["alarm_id"]
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise ApiError(404, "not_found", f"no alarm with id {raw!r}: alarm ids are integers")
    return int(raw)


def _query_bool(request: Request, name: str) -> bool | None:
    raw = (request.query_params.get(name) or "").lower()
    if raw == "":
        return None
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ApiError(400, "bad_query", f"{name}: expected true or false, got {raw!r}")
