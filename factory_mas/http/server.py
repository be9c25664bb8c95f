"""How uvicorn serves the app: one set of options for `serve` and for the bench, so the
bench measures what production runs.

uvicorn times out idle keep-alive connections only. A connection that never completes its
request headers (slowloris) is held as long as the client likes, and so is one whose
client stopped reading: asyncio's `close()` waits for the send buffer to drain, which
then never happens. The protocols made by `guarded_protocols` add what is missing:

- request headers must be complete `server.header_timeout_s` after the connection opened
  or its last answer went out, and hold at most MAX_HEADER_BYTES, else it is closed;
- a connection whose sending stays blocked (the client's buffers full) for
  `server.send_timeout_s` is aborted, HTTP and WebSocket alike;
- at most `server.max_connections` are open, and fewer than the process may open files:
  past it, a new connection evicts the one that has waited longest for its headers (the
  likeliest to be held open on purpose), so that /health still gets in.
"""

from __future__ import annotations

import asyncio
import logging
import math
import resource
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

from ..settings import Settings

log = logging.getLogger(__name__)

# nginx's default for a request's headers is 4 x 8 kB; browsers with many cookies stay
# far below 64 kB.
MAX_HEADER_BYTES = 65_536
# Files the process needs besides client connections: the database, models, the SCADA and
# MQTT sockets, the listening socket, logs.
FILES_RESERVED = 256
EVICTION_LOG_EVERY_S = 60.0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    http, ws = guarded_protocols(settings)
    return {
        "log_level": settings.server.log_level,
        "access_log": settings.server.access_log,
        # uvicorn's loggers then reach the root handler of _setup_logging: one format
        # (text or JSON, with the request id) for every line, its own included.
        "log_config": None,
        "timeout_graceful_shutdown": settings.server.graceful_shutdown_s,
        # X-Forwarded-For is read by our ProxyHeadersMiddleware (server.forwarded_allow_ips):
        # uvicorn's takes the left-most entry, the client's own, when every peer is trusted.
        "proxy_headers": False,
        "http": http,
        "ws": ws,
        # For the h11 protocol, used where httptools is not installed.
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
        # Clients only ever send a key or nothing over a WebSocket: 64 kB is plenty.
        "ws_max_size": 65_536,
        # Compressing every frame once per client was a third of the server's time with a
        # thousand dashboards open (bench --http); frames are small JSON anyway.
        "ws_per_message_deflate": False,
    }


class _Connections:
    """One server's bookkeeping: its connection cap, and the connections waiting for
    request headers, longest first."""

    def __init__(self, max_connections: int) -> None:
        files = _file_limit()
        # Under a small limit (ulimit -n 256) half of it for clients still serves.
        self.limit = min(max_connections, max(files - FILES_RESERVED, files // 2))
        self.waiting: OrderedDict[Any, None] = OrderedDict()
        self.evicting: set[Any] = set()  # aborted; their connection_lost is still to come
        self.evicted = 0
        self._logged_at = -math.inf

    def make_room(self, open_now: int) -> None:
        """Called with a new connection among the waiting, so there is always a victim."""
        if open_now - len(self.evicting) <= self.limit:
            return
        victim = next(iter(self.waiting))
        del self.waiting[victim]
        self.evicting.add(victim)
        self.evicted += 1
        victim.transport.abort()
        now = time.monotonic()
        if now - self._logged_at >= EVICTION_LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "server: %d connections open, the limit (server.max_connections, open-file "
                "limit); closing the one waiting longest for its request headers "
                "(%d so far, logged once a minute)",
                self.limit,
                self.evicted,
            )


def _file_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


# Keyed by uvicorn's ServerState: one per server, whichever protocols it makes.
_SERVERS: weakref.WeakKeyDictionary[Any, _Connections] = weakref.WeakKeyDictionary()


# The guards are mixed into uvicorn's protocol classes at run time (guarded_protocols);
# the type checker sees them as the asyncio protocols they become.
if TYPE_CHECKING:
    _Protocol = asyncio.Protocol
else:
    _Protocol = object


class _SendDeadline(_Protocol):
    """Aborts a connection whose writes stay paused (its peer reads nothing) too long."""

    send_timeout_s: float
    transport: asyncio.Transport
    _send_timer: asyncio.TimerHandle | None = None

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            loop = asyncio.get_running_loop()
            self._send_timer = loop.call_later(self.send_timeout_s, self.transport.abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_send_timer()

    def _stop_send_timer(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None


class _HttpGuard(_SendDeadline):
    """Mixed into uvicorn's HTTP protocol (httptools or h11): the header deadline and
    size, and the connection cap."""

    header_timeout_s: float
    max_connections: int
    server_state: Any
    connections: set[Any]
    cycle: Any
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _cycle_seen: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        state = _SERVERS.get(self.server_state)
        if state is None:
            state = _SERVERS[self.server_state] = _Connections(self.max_connections)
        self._connections = state
        self._wait_for_headers()
        state.make_room(len(self.connections))

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is None:
            return
        upgraded = self.transport.get_protocol() is not self
        if upgraded or (self.cycle is not None and self.cycle is not self._cycle_seen):
            self._cycle_seen = self.cycle
            self._headers_done()
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_done()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        # A pipelined request may have started already; its headers are complete.
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self._header_timer is None and not self.transport.is_closing():
            self._cycle_seen = self.cycle
            self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._headers_done()
        self._stop_send_timer()
        self._connections.evicting.discard(self)

    def _wait_for_headers(self) -> None:
        self._header_bytes = 0
        self._connections.waiting[self] = None
        loop = asyncio.get_running_loop()
        self._header_timer = loop.call_later(self.header_timeout_s, self._header_timeout)

    def _headers_done(self) -> None:
        self._connections.waiting.pop(self, None)
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        self._connections.waiting.pop(self, None)
        self.transport.close()


class _WsGuard(_SendDeadline):
    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_send_timer()


def guarded_protocols(settings: Settings) -> tuple[type[asyncio.Protocol], Any]:
    """uvicorn's own HTTP and WebSocket protocols (the ones it picks by itself) with the
    deadlines and the connection cap of `settings.server`."""
    server = settings.server
    http = type(
        "GuardedHttpProtocol",
        (_HttpGuard, AutoHTTPProtocol),
        {
            "header_timeout_s": server.header_timeout_s,
            "send_timeout_s": server.send_timeout_s,
            "max_connections": server.max_connections,
        },
    )
    if AutoWebSocketsProtocol is None:
        return http, "auto"  # no WebSocket library: uvicorn says so on the first upgrade
    ws_base: Any = AutoWebSocketsProtocol
    ws = type(
        "GuardedWebSocketProtocol", (_WsGuard, ws_base), {"send_timeout_s": server.send_timeout_s}
    )
    return http, ws
