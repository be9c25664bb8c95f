"""ASGI middleware that protects every route: rate limits and security headers.

`RateLimitMiddleware` keeps a token bucket per client address and, when the request
carries one, per API key (X-API-Key or `Authorization: Bearer`): `requests_per_s` tokens a
second, at most `burst` saved up. A request needs a token from each of its buckets; when
one is empty the answer is 429 with Retry-After (whole seconds until a token is back).
A WebSocket costs one token when it connects; its messages are not counted here. /health
is exempt: load balancers poll it and must not be turned away by someone else's burst.
The key is only ever kept as a hash, and never logged. A request carrying two different
keys (X-API-Key beside a Bearer token, or a header given twice) is refused with 400: the
limiter and the key check must count the same key, and a made-up second key would
otherwise get a fresh bucket every time.

`ProxyHeadersMiddleware` sets the client address (and scheme) from X-Forwarded-For (and
X-Forwarded-Proto) when the connection comes from a trusted proxy
(`server.forwarded_allow_ips`). Each proxy appends the address it saw, so only the
right-hand end of the header is known to be true: the client is the right-most entry
that is not a trusted proxy. The left-hand entries are whatever the client sent.

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

from ..settings import LimitsSettings

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


class ConflictingKeys(ValueError):
    """The request carries more than one API key."""


def api_key_of(scope: Scope) -> str | None:
    """The API key a request presents (X-API-Key or a Bearer token), if any.

    ConflictingKeys when its headers hold two different keys; the same key in both is
    fine."""
    found: dict[str, str] = {}  # key -> the header it came in
    for name, value in scope.get("headers") or ():
        if name == b"x-api-key":
            key, header = value.decode("latin-1").strip(), "X-API-Key"
        elif name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                continue
            key, header = token.strip(), "Authorization: Bearer"
        else:
            continue
        if key:
            found.setdefault(key, header)
    if len(found) > 1:
        raise ConflictingKeys(
            f"the request carries {len(found)} different API keys (in "
            f"{' and '.join(found.values())}); send one key, in either "
            "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    return next(iter(found), None)


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
        """The request's buckets; ConflictingKeys from api_key_of."""
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
        try:
            keys = self.keys(scope)
        except ConflictingKeys as exc:
            self.refused += 1
            await _refuse(scope, send, 400, "conflicting_api_keys", str(exc), 1008)
            return
        wait = self.buckets.take(keys)
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        self.refused += 1
        retry_after = max(1, math.ceil(wait))
        await _refuse(
            scope,
            send,
            429,
            "too_many_requests",
            f"rate limit exceeded; retry in {retry_after} s",
            # 1013 = try again later.
            1013,
            retry_after,
        )


async def _refuse(
    scope: Scope,
    send: Send,
    status: int,
    error: str,
    detail: str,
    ws_code: int,
    retry_after: int | None = None,
) -> None:
    if scope["type"] == "websocket":
        # Closing before the handshake is answered 403 by the server; the code and
        # reason reach servers that can pass them on.
        # A close reason is at most 123 bytes.
        short = detail.encode()[:120].decode(errors="ignore")
        reason = "too many requests" if status == 429 else short
        await send({"type": "websocket.close", "code": ws_code, "reason": reason})
        return
    content: dict[str, Any] = {"error": error, "detail": detail}
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        content["retry_after_s"] = retry_after
        headers.append((b"retry-after", str(retry_after).encode()))
    body = msgspec.json.encode(content)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProxyHeadersMiddleware:
    """The client's address and scheme from X-Forwarded-For / -Proto, for connections
    from a trusted proxy (`trusted`: addresses or networks, or "*" for any peer).

    With a list, the client is the right-most X-Forwarded-For entry outside it. With "*"
    nothing in the header can be told apart from a proxy, so the right-most entry is
    taken: the address the one proxy in front of us saw. Anything that is not an IP
    address (a made-up entry, "unknown") leaves the peer's address in place."""

    def __init__(self, app: ASGIApp, trusted: list[str]) -> None:
        self.app = app
        self.any_peer = "*" in trusted
        self.trusted = ClientAllowList([t for t in trusted if t != "*"], "proxy")

    def _is_proxy(self, host: str) -> bool:
        return self.any_peer or self.trusted.covers(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and self._is_proxy(client[0]):
            forwarded: list[str] = []
            for name, value in scope.get("headers") or ():
                if name == b"x-forwarded-for":
                    forwarded += value.decode("latin-1").split(",")
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").strip().lower()
                    if proto in ("http", "https"):
                        ws = scope["type"] == "websocket"
                        scope["scheme"] = proto.replace("http", "ws") if ws else proto
            host = self.client_of([entry.strip() for entry in forwarded if entry.strip()])
            if host is not None:
                scope["client"] = (host, 0)
        await self.app(scope, receive, send)

    def client_of(self, forwarded: list[str]) -> str | None:
        """The client address in X-Forwarded-For's entries, or None to keep the peer's."""
        if not forwarded:
            return None
        if self.any_peer:
            return _address(forwarded[-1])
        for entry in reversed(forwarded):
            host = _address(entry)
            if host is None or not self.trusted.covers(host):
                return host
        # Every entry is a proxy of ours: the left-most is the one nearest the client.
        return _address(forwarded[0])


def _address(entry: str) -> str | None:
    """The IP address in an X-Forwarded-For entry (`1.2.3.4`, `1.2.3.4:5678`,
    `[2001:db8::1]:443`, `2001:db8::1`), or None."""
    host = entry
    if entry.startswith("["):
        host = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        host = entry.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


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
