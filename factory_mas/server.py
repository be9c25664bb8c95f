"""How uvicorn serves the app: one set of options for `serve` and for the bench, so the
bench measures what production runs."""

from __future__ import annotations

from typing import Any

from .settings import Settings


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    return {
        "log_level": settings.server.log_level,
        "access_log": settings.server.access_log,
        # uvicorn's loggers then reach the root handler of _setup_logging: one format
        # (text or JSON, with the request id) for every line, its own included.
        "log_config": None,
        "timeout_graceful_shutdown": settings.server.graceful_shutdown_s,
        # Behind Railway's proxy the client address arrives in X-Forwarded-For.
        "proxy_headers": True,
        # Clients only ever send a key or nothing over a WebSocket: 64 kB is plenty.
        "ws_max_size": 65_536,
        # Compressing every frame once per client was a third of the server's time with a
        # thousand dashboards open (bench --http); frames are small JSON anyway.
        "ws_per_message_deflate": False,
    }
