"""The API key check in front of every route: a pure ASGI middleware (HTTP and WebSocket).

The key comes in `Authorization: Bearer <key>` or `X-API-Key: <key>`; WebSocket clients
that cannot set headers (browsers) send `{"auth": "<key>"}` as their first message
instead. Keys never go in URLs, which end up in access logs and browser histories.
Denials are logged with method, path, client and the key's prefix, never the key.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import StoreError
from ..http.api import error_response
from ..settings import Settings
from ..store import Store
from . import keys
from .keys import Principal
from .roles import WEBSOCKET, role_for

log = logging.getLogger(__name__)

# A key's answer (principal or "no such key") is reused this long, which keeps the store
# off the request path; it is also how long a revoked key may still work in a running
# server (`forget()` ends that at once for revocations made in process).
CACHE_S = 30.0
CACHE_MAX = 10_000
# How long a WebSocket without a key header has to send {"auth": key}.
WS_AUTH_TIMEOUT_S = 5.0
# WebSocket close codes in the private range, mirroring the HTTP statuses.
WS_UNAUTHORIZED = 4401
WS_FORBIDDEN = 4403
WWW_AUTHENTICATE = 'Bearer realm="factory_mas"'


class Denied(Exception):
    def __init__(self, status: int, detail: str, logged: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.logged = status, detail, logged


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        settings: Settings,
        cache_s: float = CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.store = store
        self.settings = settings.auth
        self.cache_s = cache_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    def forget(self) -> None:
        """Drop cached answers: a key revoked in this process stops working now."""
        self._cache.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not self.settings.enabled:
            await self.app(scope, receive, send)
            return
        websocket = scope["type"] == "websocket"
        method = WEBSOCKET if websocket else scope["method"]
        path = _path(scope)
        need = role_for(method, path)
        key = _key_from_headers(scope)
        if need == "public" or (key is None and need == "viewer" and self.settings.public_read):
            scope["auth"] = None
            await self.app(scope, receive, send)
            return
        if key is None and websocket:
            await self._first_message(scope, receive, send, need)
            return
        try:
            scope["auth"] = await self._check(key, need, method, path)
        except Denied as denied:
            self._log(denied, method, path, scope)
            if websocket:
                await _refuse_socket(scope, receive, send, denied)
            else:
                await _refuse_http(scope, receive, send, denied)
            return
        await self.app(scope, receive, send)

    async def _check(self, key: str | None, need: str, method: str, path: str) -> Principal:
        what = "the WebSocket" if method == WEBSOCKET else f"{method} {path}"
        if key is None:
            raise Denied(
                401,
                f"{what} needs an API key with role {need} or higher; send it as "
                "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                "no key",
            )
        try:
            principal = await self._lookup(key)
        except StoreError as exc:
            raise Denied(
                503, f"API keys cannot be checked now: {exc.public}", f"store down: {exc}"
            ) from None
        if principal is None:
            raise Denied(
                401,
                "the API key is not valid (unknown or revoked)",
                f"invalid key {_hint(key)}",
            )
        if not principal.may(need):
            raise Denied(
                403,
                f"{what} needs role {need}; key {principal.name!r} is {principal.role}",
                f"key {principal.prefix} ({principal.name!r}, {principal.role}) needs {need}",
            )
        return principal

    async def _lookup(self, key: str) -> Principal | None:
        digest = keys.hash_key(key)
        now = self.clock()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await self.store.write(keys.find, key)
        if len(self._cache) >= CACHE_MAX:
            # Only a flood of made-up keys gets here; start over rather than grow.
            self._cache.clear()
        self._cache[digest] = (now + self.cache_s, principal)
        return principal

    async def _first_message(self, scope: Scope, receive: Receive, send: Send, need: str) -> None:
        """Accept the socket, take {"auth": key} as its first message, then hand the
        socket to the route as if it had just connected (its accept() is absorbed)."""
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        path = _path(scope)
        try:
            async with asyncio.timeout(WS_AUTH_TIMEOUT_S):
                first = await receive()
        except TimeoutError:
            first = None
        if first is not None and first["type"] == "websocket.disconnect":
            return
        key = None if first is None else _key_from_message(first)
        try:
            if first is None:
                raise Denied(
                    401,
                    f'no API key: send a header or {{"auth": "<key>"}} within '
                    f"{WS_AUTH_TIMEOUT_S:g} s",
                    "no key in the first message in time",
                )
            scope["auth"] = await self._check(key, need, WEBSOCKET, path)
        except Denied as denied:
            self._log(denied, WEBSOCKET, path, scope)
            await send(_close(denied))
            return
        replayed = False

        async def app_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return connect
            return await receive()

        async def app_send(message: Message) -> None:
            kind = message["type"]
            if kind == "websocket.accept":
                return  # already accepted (its subprotocol, if any, is lost)
            if kind == "websocket.http.response.start":
                await send({"type": "websocket.close", "code": 1008})
                return
            if kind == "websocket.http.response.body":
                return
            await send(message)

        await self.app(scope, app_receive, app_send)

    def _log(self, denied: Denied, method: str, path: str, scope: Scope) -> None:
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else "?"
        log.warning("auth: %d %s %s from %s: %s", denied.status, method, path, where, denied.logged)


async def ensure_first_key(store: Store, settings: Settings) -> str | None:
    """On a first start (auth on, no active key) make an admin key, print it once on
    stderr and return it; only its hash is kept. Returns None otherwise."""
    if not settings.auth.enabled:
        return None
    made = await store.write(keys.add_first)
    if made is None:
        return None
    key_id, key = made
    bar = "=" * 72
    print(
        f"\n{bar}\n"
        f"factory_mas: no API key existed, so an admin key was made ({keys.FIRST_KEY_NAME!r}):\n\n"
        f"    {key}\n\n"
        "Store it now: it is not shown again (only its hash is kept). Send it as\n"
        "'Authorization: Bearer <key>'; make more with `python -m factory_mas keys add`.\n"
        f"{bar}\n",
        file=sys.stderr,
        flush=True,
    )
    log.warning(
        "auth: made the first admin key %s (id %d); it was printed once",
        keys.prefix_of(key),
        key_id,
    )
    return key


def _path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


def _key_from_headers(scope: Scope) -> str | None:
    authorization = api_key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1")
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        # Another scheme (Basic, ...) is a key we cannot read: an empty one, refused.
        return ""
    if api_key is not None:
        return api_key.strip()
    return None


def _key_from_message(message: Message) -> str | None:
    raw = message.get("text") or message.get("bytes")
    if not raw:
        return None
    try:
        decoded: Any = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    key = decoded.get("auth") if isinstance(decoded, dict) else None
    return key if isinstance(key, str) else None


def _hint(key: str) -> str:
    # A wrong key is often a real one mistyped: its prefix (what `keys list` shows)
    # helps find it; anything not shaped like our keys may be a password, so nothing.
    if key.startswith(keys.KEY_MARK) and len(key) > keys.PREFIX_CHARS:
        return keys.prefix_of(key) + "..."
    return "(not an fmk_ key)"


async def _refuse_http(scope: Scope, receive: Receive, send: Send, denied: Denied) -> None:
    code = {401: "unauthorized", 403: "forbidden"}.get(denied.status, "unavailable")
    response = error_response(denied.status, code, denied.detail)
    if denied.status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    await response(scope, receive, send)


async def _refuse_socket(scope: Scope, receive: Receive, send: Send, denied: Denied) -> None:
    # Accepted, then closed with 4401/4403 and the reason: browsers see the close code,
    # while a refused handshake reaches their scripts only as a bare 1006. (uvicorn 0.54
    # also logs an ERROR for every handshake answered with an HTTP denial response.)
    connect = await receive()
    if connect["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send(_close(denied))


def _close(denied: Denied) -> Message:
    code = {401: WS_UNAUTHORIZED, 403: WS_FORBIDDEN}.get(denied.status, 1011)
    # A close reason is at most 123 bytes.
    reason = denied.detail.encode()[:120].decode("utf-8", "ignore")
    return {"type": "websocket.close", "code": code, "reason": reason}
