"""The Starlette application over the components: their routes, /health, /status and
/metrics, the middleware, and a lifespan that runs them (factory_mas/components.py says
which run, in which order, and why).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from . import __version__
from .agents import AGENTS, Registry
from .auth import AuthMiddleware
from .auth.routes import AuthRoutes
from .components import (
    DEFAULT_SHARED_GROUP,
    ROLE_RUNS,
    Components,
    build_components,
    check_role,
    role_mqtt_settings,
)
from .http.api import EXCEPTION_HANDLERS, configure_json_limits, json_response
from .http.limits import ProxyHeadersMiddleware, RateLimitMiddleware, SecurityHeadersMiddleware
from .http.metrics import Metrics
from .logs import RequestIdMiddleware
from .settings import Settings

# Where callers have always found them.
__all__ = [
    "DEFAULT_SHARED_GROUP",
    "ROLE_RUNS",
    "Components",
    "build_app",
    "build_components",
    "check_role",
    "role_mqtt_settings",
]
log = logging.getLogger(__name__)


def build_app(
    settings: Settings, *, scada_in_background: bool = False, registry: Registry = AGENTS
) -> Starlette:
    """The application. `scada_in_background`: the SCADA servers start once the app is
    ready instead of before (seconds sooner; /health reports them starting meanwhile).
    `registry`: the agents it knows (tests add one)."""
    c = build_components(settings, scada_in_background=scada_in_background, registry=registry)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with c.run():
            if c.role == "all":
                log.info("factory_mas %s ready", __version__)
            else:
                log.info("factory_mas %s ready: %s instance %s", __version__, c.role, c.instance_id)
            try:
                yield
            finally:
                log.info("factory_mas stopping")

    async def health(_request: Request) -> Response:
        ok, body = await c.health()
        return json_response(body, 200 if ok else 503)

    async def status(_request: Request) -> Response:
        return json_response(c.status())

    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/status", status),
        *AuthRoutes(c.store).routes(),
        *Metrics(c).routes(),
        # The dashboard's come last (the last row of the table): / and /static.
        *c.routes(),
    ]
    configure_json_limits(settings.limits.json_max_depth, settings.limits.json_max_items)
    # Outermost first: security headers on every answer (429s included), then the rate
    # limit (a brute-forced key gets 429 before auth sees it), then CORS, then auth.
    middleware = [
        # First the real client's address: rate limits and every log line use it.
        Middleware(ProxyHeadersMiddleware, trusted=settings.server.forwarded_allow_ips),
        # Outside everything: every log line about a request carries its id, refusals too.
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware),
        Middleware(RateLimitMiddleware, settings=settings.limits),
    ]
    if settings.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.server.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            )
        )
    # After CORS, so it is inside it: preflights are answered and 401/403 carry CORS
    # headers. It passes everything through when auth is off.
    middleware.append(Middleware(AuthMiddleware, store=c.store, settings=settings))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.components = c
    return app
