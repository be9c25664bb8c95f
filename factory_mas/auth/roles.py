"""Which role each route needs: one pure function, tested against every route of the app.

Reads need viewer, acting on the plant (alarms, alerts, predictions, telemetry, plans,
summaries) needs operator, changing how it runs (settings, models, keys, the audit
trail) needs admin. A POST this table does not know needs admin: a new write route is
closed until someone decides who may use it.
"""

from __future__ import annotations

import re
from typing import Literal

Need = Literal["public", "viewer", "operator", "admin"]
WEBSOCKET = "WEBSOCKET"  # the method role_for is given for a WebSocket handshake

# Load balancers and orchestrators probe /health without credentials; the dashboard page
# and its static files hold no plant data (their API calls carry the key). /metrics is
# not here: it tells alarm counts and how the plant runs, so it is a read like any other
# (viewer). Prometheus sends a viewer key with `authorization: credentials_file` in its
# scrape config; auth.public_read opens it along with every other read.
_PUBLIC = re.compile(r"/health|/|/favicon\.ico|/static/.*|/web/.*")
_ADMIN_READS = re.compile(r"/api/audit|/api/auth/keys(/.*)?")
_OPERATOR_WRITES = re.compile(
    r"/api/ingest"
    r"|/api/[a-z_]+/predict"
    r"|/api/orchestrator/alert"
    r"|/api/labels"
    r"|/api/orchestrator/alarms/[^/]+/(ack|shelve|unshelve|comment|feedback)"
    r"|/api/backlog/generate"
    r"|/api/planner/plan"
)


def role_for(method: str, path: str) -> Need:
    """The least role that may call `method path` (method "WEBSOCKET" for sockets)."""
    method = method.upper()
    path = path.rstrip("/") or "/"
    if method == "OPTIONS":
        # CORS preflights carry no credentials by the standard; they reveal nothing.
        return "public"
    if method in ("GET", "HEAD"):
        if _PUBLIC.fullmatch(path):
            return "public"
        if _ADMIN_READS.fullmatch(path):
            return "admin"
        return "viewer"
    if method == WEBSOCKET:
        return "viewer"
    if method == "POST" and _OPERATOR_WRITES.fullmatch(path):
        return "operator"
    # Settings (/api/config/*), model reloads, key management and anything unknown.
    return "admin"
