"""The operator dashboard: a static single-page app served from factory_mas/http/static.

GET / answers index.html (never cached, so a new release is picked up on reload);
/static/* serves the scripts and the stylesheet. The app calls the JSON API itself.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "static"


async def index(_request: Request) -> Response:
    return FileResponse(
        WEB_DIR / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/", index, methods=["GET", "HEAD"]),
        Mount("/static", app=StaticFiles(directory=WEB_DIR, html=False), name="static"),
    ]


def ingest_routes(instance_id: str) -> list[BaseRoute]:
    """GET / on an ingest instance: no dashboard (its alarms and plans live on the control
    instance), only a page that says what this is, for whoever opens it in a browser."""
    name = html.escape(instance_id)
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>factory_mas ingest {name}</title></head><body>"
        f"<h1>factory_mas ingest instance {name}</h1>"
        "<p>This instance scores telemetry and sends its predictions and alerts to the MQTT "
        "broker. The dashboard, alarms, plans and SCADA are on the control instance.</p>"
        '<p><a href="/health">/health</a> &middot; <a href="/status">/status</a> &middot; '
        '<a href="/metrics">/metrics</a></p></body></html>'
    )

    async def index(_request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return [Route("/", index, methods=["GET", "HEAD"])]
