"""The operator dashboard: a static single-page app served from factory_mas/web.

GET / answers index.html (never cached, so a new release is picked up on reload);
/static/* serves the scripts and the stylesheet. The app calls the JSON API itself.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent / "web"


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
