"""GET /api/audit (admin): every state change people made, newest first; and
GET /api/auth/whoami: which key is calling.

The audit trail is read from where each change is already recorded in its own
transaction: alarm_events (ack, shelve, unshelve, comment, feedback) and config_changes
(settings from any protocol, API keys under target "auth", labels under "labels").
"""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..http.api import json_response, query_int, query_time
from ..labels.store import AUDIT_TARGET as LABELS_TARGET
from ..store import Store, alarm_events, config_changes
from ..times import iso
from .keys import AUDIT_TARGET, Principal

AUDIT_LIMIT_MAX = 10_000
# Audit rows that are not setting changes, by target: their source and their own action.
_OWN_SOURCES = {AUDIT_TARGET: "keys", LABELS_TARGET: "labels"}
# Alarm events people cause, and what the system does in their place (a chattering
# alarm marked and shelved, by "system"); raised/cleared/escalated come from the agents
# by the thousand and are each alarm's own history (GET /api/orchestrator/alarms/{id}).
AUDITED_ALARM_KINDS = ("acked", "shelved", "unshelved", "comment", "feedback", "chattering")


def audit(conn: Connection, since: float | None, limit: int) -> list[dict[str, Any]]:
    events = (
        sa.select(alarm_events)
        .where(alarm_events.c.kind.in_(AUDITED_ALARM_KINDS))
        .order_by(alarm_events.c.at.desc(), alarm_events.c.id.desc())
        .limit(limit)
    )
    changes = (
        sa.select(config_changes)
        .order_by(config_changes.c.at.desc(), config_changes.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        events = events.where(alarm_events.c.at >= since)
        changes = changes.where(config_changes.c.at >= since)
    found: list[tuple[float, dict[str, Any]]] = []
    for row in conn.execute(events):
        data = msgspec.json.decode(row.data)
        entry = {
            "at": iso(row.at),
            "actor": row.by,
            "source": f"alarm:{row.alarm_id}",
            "action": row.kind,
            "origin": None,
            "accepted": True,
            "detail": {k: data.get(k) for k in ("detail", "state", "level")},
        }
        found.append((row.at, entry))
    for row in conn.execute(changes):
        data = msgspec.json.decode(row.data)
        own = _OWN_SOURCES.get(row.target)
        request = data.get("request")
        entry = {
            "at": iso(row.at),
            "actor": row.by,
            "source": own or f"config:{row.target}",
            "action": request.get("action", "change")
            if own and isinstance(request, dict)
            else "change",
            "origin": row.origin,
            "accepted": row.accepted,
            "detail": {"request": request, "result": data.get("result")},
        }
        found.append((row.at, entry))
    found.sort(key=lambda pair: pair[0], reverse=True)
    return [entry for _at, entry in found[:limit]]


class AuthRoutes:
    def __init__(self, store: Store) -> None:
        self.store = store

    def routes(self) -> list[Route]:
        """Full paths, to be listed beside the other routes of the app."""
        return [
            Route("/api/audit", self.audit_route),
            Route("/api/auth/whoami", self.whoami_route),
        ]

    async def audit_route(self, request: Request) -> Response:
        limit = query_int(request, "limit", 100, 1, AUDIT_LIMIT_MAX) or 100
        since = query_time(request, "since")
        entries = await self.store.read(audit, since, limit)
        return json_response({"count": len(entries), "events": entries})

    async def whoami_route(self, request: Request) -> Response:
        if "auth" not in request.scope:
            # The middleware is off (auth.enabled = false): everyone may do everything.
            return json_response({"auth_enabled": False, "name": None, "role": "admin"})
        principal: Principal | None = request.scope["auth"]
        if principal is None:  # public_read, no key
            return json_response({"auth_enabled": True, "name": None, "role": "viewer"})
        return json_response(
            {
                "auth_enabled": True,
                "name": principal.name,
                "role": principal.role,
                "key_prefix": principal.prefix,
            }
        )
