"""Stored telemetry out, page by page: GET /api/telemetry and `python -m factory_mas export`.

CSV has the dataset's headers (ingest/schema.py CSV_HEADERS), so an export is accepted
again by `train --csv` and by the replay. JSON from the API is one object holding a
bounded list; the `export` command writes JSON Lines, one record a line, as
`replay --stdout` prints them, so a whole history streams without a cap.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ..http.api import ApiError, query_int, query_one_of, query_time
from ..ingest.schema import CSV_HEADERS
from ..store import Store
from ..times import iso
from .telemetry import Span, stored_pages

FORMATS = ("csv", "json")
JSON_LIMIT_DEFAULT = 1_000
# A JSON answer is one document a client holds whole; CSV streams, so it has no cap.
JSON_LIMIT_MAX = 100_000
CSV_LIMIT_MAX = 1_000_000_000

_decoder = msgspec.json.Decoder(dict[str, Any])
_FIELDS = tuple(CSV_HEADERS.values())


def csv_header() -> bytes:
    return _csv_lines([list(CSV_HEADERS)])


def csv_page(page: list[bytes]) -> bytes:
    """Stored records as CSV lines; a reading a record does not carry is an empty cell,
    which ingest reads back as not given."""
    records = map(_decoder.decode, page)
    return _csv_lines([["" if (v := r.get(f)) is None else v for f in _FIELDS] for r in records])


def jsonl_page(page: list[bytes]) -> bytes:
    return b"\n".join(page) + b"\n"


def _csv_lines(rows: list[list[Any]]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def span_error(since: float | None, until: float | None) -> str | None:
    """Why since/until make no span, or None."""
    if since is not None and until is not None and since >= until:
        return f"since ({iso(since)}) must be earlier than until ({iso(until)})"
    return None


class TelemetryApi:
    """GET /api/telemetry?machine_id=&since=&until=&limit=&format=csv|json: the stored
    records with since <= record time < until, oldest first."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def telemetry_route(self, request: Request) -> Response:
        fmt = query_one_of(request, "format", FORMATS) or "json"
        since, until = query_time(request, "since"), query_time(request, "until")
        if why := span_error(since, until):
            raise ApiError(400, "bad_query", why)
        machine_id = query_int(request, "machine_id", None, 1, 1_000_000)
        if fmt == "csv":
            limit = query_int(request, "limit", None, 1, CSV_LIMIT_MAX)
        else:
            limit = query_int(request, "limit", JSON_LIMIT_DEFAULT, 1, JSON_LIMIT_MAX)
        span = Span(machine_id, since, until, limit)
        if fmt == "csv":
            return StreamingResponse(
                _csv_body(await _started(stored_pages(self.store, span))),
                media_type="text/csv; charset=utf-8",
                headers={"content-disposition": 'attachment; filename="telemetry.csv"'},
            )
        assert limit is not None
        # One row past the limit says whether the answer was cut short.
        pages = await _started(stored_pages(self.store, replace(span, limit=limit + 1)))
        return StreamingResponse(_json_body(pages, limit), media_type="application/json")

    def routes(self) -> list[BaseRoute]:
        return [Route("/api/telemetry", self.telemetry_route)]


async def _started(pages: AsyncIterator[list[bytes]]) -> AsyncIterator[list[bytes]]:
    """The same pages with the first read now, before anything is sent: a store that is
    down answers 503, not a truncated 200."""
    first = await anext(pages, None)

    async def chained() -> AsyncIterator[list[bytes]]:
        if first is not None:
            yield first
            async for page in pages:
                yield page

    return chained()


async def _csv_body(pages: AsyncIterator[list[bytes]]) -> AsyncIterator[bytes]:
    yield csv_header()
    async for page in pages:
        yield csv_page(page)


async def _json_body(pages: AsyncIterator[list[bytes]], limit: int) -> AsyncIterator[bytes]:
    yield b'{"records":['
    count, truncated = 0, False
    async for page in pages:
        kept = page[: limit - count]
        truncated = len(kept) < len(page)
        if kept:
            yield (b"," if count else b"") + b",".join(kept)
        count += len(kept)
    tail = {"count": count, "limit": limit, "truncated": truncated}
    yield b"]," + msgspec.json.encode(tail)[1:]
