"""ASGI middleware that protects every route: rate limits and security headers.

`RateLimitMiddleware` keeps a token bucket per client address and, when the request
carries one, per API key (X-API-Key or `Authorization: Bearer`): `requests_per_s` tokens a
second, at most `burst` saved up. A request needs a token from each of its buckets; when
one is empty the answer is 429 with Retry-After (whole seconds until a token is back).
A WebSocket costs one token when it connects; its messages are not counted here. /health
is exempt: load balancers poll it and must not be turned away by someone else's burst.
The key is only ever kept as a hash, and never logged. The client address is the one in
the ASGI scope: behind a proxy, run uvicorn with --proxy-headers / --forwarded-allow-ips
so that it is the real client's, not the proxy's.

`SecurityHeadersMiddleware` adds X-Content-Type-Options, X-Frame-Options and
Referrer-Policy to every HTTP answer and, to HTML pages, a Content-Security-Policy that
allows no inline script and no framing.

`ClientAllowList` is the scada.allowed_clients check the Modbus and DNP3 servers make on
every new connection.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import msgspec

from .settings import LimitsSettings

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]
ASGIApp = Callable[[Scope, Receive, Send], Any]

EXEMPT_PATHS = frozenset({"/health"})
MAX_BUCKETS = 10_000

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


class TokenBuckets:
    """Token buckets by key, the least recently used dropped beyond `max_buckets`.

    A dropped bucket was idle longest; coming back it starts full, which is what it would
    have refilled to anyway unless the cap is far too small for the traffic."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_buckets, self.clock = rate, float(burst), max_buckets, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def __len__(self) -> int:
        return len(self._buckets)

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def take(self, keys: list[str]) -> float:
        """One token from every key's bucket and 0.0, or, when any of them has less than a
        whole token, nothing taken and the seconds until all of them have one."""
        now = self.clock()
        levels = [self._level(k, now) for k in keys]
        wait = max((1.0 - level) / self.rate for level in levels)
        for key, level in zip(keys, levels, strict=True):
            self._buckets[key] = (level if wait > 0 else level - 1.0, now)
            self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_buckets:
            self._buckets.popitem(last=False)
        return max(wait, 0.0)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def api_key_of(scope: Scope) -> str | None:
    """The API key a request presents (X-API-Key, else a Bearer token), if any."""
    key = _header(scope, b"x-api-key")
    if key:
        return key.strip() or None
    auth = _header(scope, b"authorization") or ""
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        settings: LimitsSettings,
        *,
        max_buckets: int = MAX_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.buckets = TokenBuckets(settings.requests_per_s, settings.burst, max_buckets, clock)
        self.refused = 0

    def keys(self, scope: Scope) -> list[str]:
        client = scope.get("client")
        keys = [f"addr:{client[0] if client else 'unknown'}"]
        api_key = api_key_of(scope)
        if api_key is not None:
            digest = hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).hexdigest()
            keys.append(f"key:{digest[:32]}")
        return keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.keys(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        self.refused += 1
        retry_after = max(1, math.ceil(wait))
        if scope["type"] == "websocket":
            # Closing before the handshake is answered 403 by the server; 1013 = try again
            # later, for servers that can pass a code on.
            await send({"type": "websocket.close", "code": 1013, "reason": "too many requests"})
            return
        body = msgspec.json.encode(
            {
                "error": "too_many_requests",
                "detail": f"rate limit exceeded; retry in {retry_after} s",
                "retry_after_s": retry_after,
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, csp: str = CSP) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or ())
                present = {k.lower() for k, _ in headers}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if (
                    content_type.lower().startswith(b"text/html")
                    and b"content-security-policy" not in present
                ):
                    extra.append((b"content-security-policy", self.csp))
                if extra:
                    message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ClientAllowList:
    """Client addresses (IPs or networks) a server talks to; empty allows everyone.

    Refused connections are counted, and logged once per address (a client retrying every
    second must not flood the log). Thread-safe: the DNP3 outstation runs on its own thread.
    """

    MAX_LOGGED = 10_000

    def __init__(self, entries: list[str], what: str) -> None:
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries]
        self.what = what
        self.refused = 0
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def allows(self, host: str | None) -> bool:
        if not self.networks or self.covers(host):
            return True
        with self._lock:
            self.refused += 1
            first = host not in self._logged and len(self._logged) < self.MAX_LOGGED
            if first:
                self._logged.add(str(host))
        if first:
            log.warning(
                "%s: refused a connection from %s: not in scada.allowed_clients "
                "(logged once per address)",
                self.what,
                host,
            )
        return False

    def covers(self, host: str | None) -> bool:
        """Whether `host` is in the list (an empty list covers no one); not counted."""
        try:
            address = ipaddress.ip_address((host or "").split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address):
            # An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
            address = address.ipv4_mapped or address
        return any(address in net for net in self.networks)
