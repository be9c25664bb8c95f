"""HTTP plumbing shared by every route: JSON in and out, typed errors, query parsing.

Every error answer has the shape {"error": code, "detail": text}.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import FactoryError, RecordError, StoreError
from ..messages import Alert, Rejection
from ..times import parse_instant

log = logging.getLogger(__name__)
S = TypeVar("S")
Choice = TypeVar("Choice", bound=str)
_encoder = msgspec.json.Encoder()


class ApiError(FactoryError):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(content), status, headers, media_type="application/json")


def error_response(status: int, code: str, detail: str, **extra: Any) -> Response:
    return json_response({"error": code, "detail": detail, **extra}, status)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw request body, or ApiError 413 as soon as it is known to be too large."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(
            413, "payload_too_large", f"body is {declared} bytes, the limit is {max_bytes}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, "payload_too_large", f"body exceeds the limit of {max_bytes} bytes")
    return bytes(body)


# Shape limits for JSON bodies (limits.json_max_depth / json_max_items); the app sets them
# from its settings when it is built, these are the settings' defaults.
JSON_MAX_DEPTH = 32
JSON_MAX_ITEMS = 100_000


def configure_json_limits(max_depth: int, max_items: int) -> None:
    """Set the nesting depth and value count `read_json` accepts (from LimitsSettings)."""
    global JSON_MAX_DEPTH, JSON_MAX_ITEMS
    JSON_MAX_DEPTH, JSON_MAX_ITEMS = max_depth, max_items


def check_json_shape(value: Any, max_depth: int, max_items: int) -> None:
    """ApiError 400 when decoded JSON nests arrays/objects deeper than `max_depth` or holds
    more than `max_items` values in all (containers and scalars, keys not counted).

    Iterative, and a container's length is counted before its children are looked at, so
    a huge flat array is refused without walking it."""
    if not isinstance(value, dict | list):
        return
    count = 1
    stack: list[tuple[dict | list, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise ApiError(
                400, "too_deep", f"JSON nests deeper than the limit of {max_depth} levels"
            )
        count += len(node)
        if count > max_items:
            raise ApiError(
                400, "too_large", f"JSON holds more than the limit of {max_items} values"
            )
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))


async def read_json(request: Request, max_bytes: int) -> Any:
    """The request body decoded as JSON, or ApiError 413/400 saying what was wrong:
    too large (413), not JSON (NaN and Infinity are not JSON either), nested deeper than
    JSON_MAX_DEPTH or holding more than JSON_MAX_ITEMS values (400)."""
    # The content type is not checked: `curl -d` labels JSON as a form, and refusing it
    # would only teach people to ignore our errors. The body must parse as JSON, that's all.
    body = await read_body(request, max_bytes)
    if not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send JSON")
    return decode_json(body)


def decode_json(body: bytes | str) -> Any:
    """JSON from an untrusted source, or ApiError 400 ("invalid_json", "too_deep",
    "too_large"): whatever the bytes, never any other exception."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None
    except msgspec.ValidationError as exc:  # e.g. 1e999: no float holds it
        raise ApiError(400, "invalid_json", f"body is not usable JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # bytes that are not UTF-8 inside a string
        raise ApiError(400, "invalid_json", f"body is not valid UTF-8: {exc.reason}") from None
    except RecursionError:  # nested past what the decoder itself can follow
        raise ApiError(
            400, "too_deep", f"JSON nests deeper than the limit of {JSON_MAX_DEPTH} levels"
        ) from None
    check_json_shape(value, JSON_MAX_DEPTH, JSON_MAX_ITEMS)
    return value


def rejected_response(rejections: list[Rejection], single: bool, **extra: Any) -> Response:
    """422 for a request none of whose records was good, naming the first problem."""
    first = rejections[0]
    detail = f"{first.field}: {first.reason}" if first.field else first.reason
    if not single:
        detail = f"record {first.index}: {detail}"
    return error_response(
        422, "invalid_record", detail, field=first.field, errors=rejections, **extra
    )


def query_int(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise ApiError(
            400, "bad_query", f"{name}: expected an integer from {lo} to {hi}, got {raw!r}"
        )
    return value


async def read_alerts(request: Request, max_bytes: int) -> tuple[list[Alert], bool]:
    """Alerts from a request body holding one alert or a list; ApiError 422 names the
    first bad field (and the index in a list). Also says whether it was a single one."""
    body = await read_json(request, max_bytes)
    single = not isinstance(body, list)
    items = [body] if single else body
    if not items:
        raise ApiError(400, "empty_batch", "the array holds no alerts")
    alerts = [
        convert(item, Alert, "invalid_alert", "alert", None if single else i)
        for i, item in enumerate(items)
    ]
    return alerts, single


async def read_struct(request: Request, max_bytes: int, type_: type[S], code: str) -> S:
    """A request body as the Struct `type_`; ApiError 422 `code` names the bad field."""
    body = await read_json(request, max_bytes)
    return convert(body, type_, code, "body")


def convert(item: Any, type_: type[S], code: str, what: str, index: int | None = None) -> S:
    where = "" if index is None else f"{what} {index}: "
    if not isinstance(item, dict):
        raise ApiError(
            422,
            code,
            f"{where}the {what} must be a JSON object, got {type(item).__name__}",
            field=None,
            index=index,
        )
    try:
        return msgspec.convert(item, type_)
    except msgspec.ValidationError as exc:
        field, reason = _explain(exc, item, type_)
        detail = f"{where}{field}: {reason}" if field else f"{where}{reason}"
        raise ApiError(422, code, detail, field=field, index=index) from None


def _explain(
    exc: msgspec.ValidationError, item: dict[str, Any], type_: type
) -> tuple[str | None, str]:
    text = str(exc)
    if text.startswith("Object missing required field `"):
        return text.split("`")[1], "required field is missing"
    reason, sep, path = text.rpartition(" - at `$.")
    if not sep:
        return None, text
    field = path.rstrip("`").split(".")[0].split("[")[0]
    allowed = _literal_values(type_, field)
    if allowed and reason.startswith("Invalid enum value"):
        return field, f"{item.get(field)!r} is not one of {', '.join(map(str, allowed))}"
    return field, reason


def _literal_values(type_: type, field: str) -> tuple[Any, ...]:
    """The allowed values of a Literal field (also inside Optional), in declared order."""
    hint = typing.get_type_hints(type_).get(field)
    for t in (hint, *typing.get_args(hint)):
        if typing.get_origin(t) is typing.Literal:
            return typing.get_args(t)
    return ()


def query_time(request: Request, name: str) -> float | None:
    """A time in the query as Unix seconds: ISO 8601 (no zone means UTC) or seconds."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise ApiError(400, "bad_query", f"{name}: {exc}, got {raw!r}") from None


def query_choice(request: Request, name: str, allowed: Sequence[Choice]) -> tuple[Choice, ...]:
    """A comma-separated list of values from `allowed`; empty means no filter."""
    raw = request.query_params.get(name) or ""
    values = tuple(v.strip() for v in raw.split(",") if v.strip())
    wrong = [v for v in values if v not in allowed]
    if wrong:
        raise ApiError(
            400,
            "bad_query",
            f"{name}: {', '.join(map(repr, wrong))} is not one of {', '.join(allowed)}",
        )
    # The allowed entries themselves, which carry their literal type (ALARM_STATES, LEVELS).
    return tuple(a for v in values for a in allowed if a == v)


def query_one_of(request: Request, name: str, allowed: Sequence[Choice]) -> Choice | None:
    """One value from `allowed`, or None when the parameter is absent or empty."""
    raw = request.query_params.get(name) or None
    if raw is None:
        return None
    for a in allowed:
        if a == raw:
            return a
    raise ApiError(400, "bad_query", f"{name}: {raw!r} is not one of {', '.join(allowed)}")


async def api_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.detail, **exc.extra)


async def record_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RecordError)
    return error_response(422, "invalid_record", str(exc), field=exc.field)


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def store_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    # The detail (file, URL, SQL and its values) is for the log only.
    log.error("store unavailable: %s", exc)
    return error_response(503, "store_unavailable", f"{exc.public}; nothing was changed, try again")


async def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"{type(exc).__name__}; see the server log")


EXCEPTION_HANDLERS = {
    ApiError: api_error_handler,
    RecordError: record_error_handler,
    HTTPException: http_error_handler,
    StoreError: store_error_handler,
    Exception: internal_error_handler,
}
