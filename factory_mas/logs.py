"""Log formats (text or JSON lines) and the request id that ties a request's lines together.

Both formats escape control characters in every message (`escape`): a path, header or
key name from a request cannot start a forged line (\\n, \\r), cut one short (NUL) or
drive the terminal (ESC, C1). In text, a traceback's lines are indented, so that every
line but a record's first starts with a space.

`RequestIdMiddleware` takes the caller's `X-Request-ID` (a proxy or gateway may have set
one already) when it is a safe token, else makes one, keeps it in a context variable for
the length of the request, and echoes it in the response. The JSON formatter adds it to
every line logged while the request runs, uvicorn's access line included.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# C0, DEL and C1 controls, and the two Unicode line breaks that some log viewers split on.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
HEADER = b"x-request-id"
# Whatever a caller sends ends up in log lines and a response header: only a short token
# that can neither break a line nor forge a field is taken as it is.
_VALID_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape(text: str, keep: str = "") -> str:
    """`text` with control characters written as escapes (\\n, \\x00, \\x1b, \\u2028),
    except those in `keep`."""
    if keep:
        return _CONTROL.sub(lambda m: m.group() if m.group() in keep else _escaped(m), text)
    return _CONTROL.sub(_escaped, text)


def new_request_id() -> str:
    return uuid.uuid4().hex


def given_request_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's X-Request-ID when it is acceptable, else None."""
    for name, value in headers:
        if name.lower() == HEADER:
            return value.decode("ascii") if _VALID_ID.fullmatch(value) else None
    return None


class RequestIdMiddleware:
    """Outermost, so that every line about a request carries its id, refusals included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rid = given_request_id(scope["headers"]) or new_request_id()
        token = request_id.set(rid)
        try:
            if scope["type"] == "http":
                await self.app(scope, receive, _echoing(send, rid.encode("ascii")))
            else:
                await self.app(scope, receive, send)
        finally:
            request_id.reset(token)


def _echoing(send: Send, rid: bytes) -> Send:
    async def send_with_id(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (HEADER, rid)]}
        await send(message)

    return send_with_id


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, one line per message; a traceback follows on indented lines."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))


def _indented(text: str) -> str:
    # The exception's own message may come from a request: its line breaks stay (a
    # traceback needs them) but each line it makes is indented like the rest.
    return "\n".join("    " + line for line in escape(text, keep="\n").split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id inside a request,
    and the traceback as `exc_info` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        # json.dumps escapes C0 characters itself but, with ensure_ascii=False, leaves C1
        # and U+2028/9 as they are; the line breaks of a traceback are its own.
        if record.exc_info:
            line["exc_info"] = escape(self.formatException(record.exc_info), keep="\n")
        if record.stack_info:
            line["stack_info"] = escape(self.formatStack(record.stack_info), keep="\n")
        # The standard encoder, not msgspec: a message may hold a lone surrogate (a byte
        # that was not UTF-8), which msgspec refuses and a log line must survive.
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()
