"""Stored predictions read back: the history API's query, and /api/<slug>/history served
from the store alone where the agent does not run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import StoreError
from ..http.api import ApiError, json_response, query_int, query_time
from ..messages import Prediction
from ..store import Store, predictions
from ..times import epoch

# Named after the package: log filters and collectors know it by that name.
log = logging.getLogger(__package__)
T = TypeVar("T")

# One store call holds the store's single thread, which ingest journaling also needs: a
# wide query walks back through windows of this many rows.
SCAN_WINDOW_SEQ = 50_000

_decoder = msgspec.json.Decoder(Prediction)


def _since_until(since: float | datetime | None, until: float | datetime | None) -> list[Any]:
    ts = predictions.c.record_ts
    conds = []
    if since is not None:
        conds.append(ts >= (epoch(since) if isinstance(since, datetime) else since))
    if until is not None:
        conds.append(ts <= (epoch(until) if isinstance(until, datetime) else until))
    return conds


def newest(
    items: Iterable[Prediction],
    limit: int,
    machine_id: int | None = None,
    camera_id: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> list[Prediction]:
    """The first `limit` matching items of `items` (given newest first); since/until are
    Unix seconds, both inclusive, compared with record_ts."""
    out: list[Prediction] = []
    for p in items:
        if machine_id is not None and p.machine_id != machine_id:
            continue
        if camera_id is not None and p.camera_id != camera_id:
            continue
        if since is not None or until is not None:
            ts = epoch(p.record_ts)
            if (since is not None and ts < since) or (until is not None and ts > until):
                continue
        out.append(p)
        if len(out) >= limit:
            break
    return out


async def query(
    store: Store,
    agent_id: str,
    limit: int,
    machine_id: int | None = None,
    camera_id: str | None = None,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
) -> list[Prediction]:
    """Stored predictions of one agent, newest (last written) first.

    `since`/`until` (Unix seconds or datetimes, both inclusive) filter on record_ts. Raises
    StoreError when the store cannot be read.
    """
    subject = [predictions.c.agent_id == agent_id]
    if machine_id is not None:
        subject.append(predictions.c.machine_id == machine_id)
    filters = _since_until(since, until)
    if camera_id is not None:
        filters.append(predictions.c.camera_id == camera_id)
    if not filters:
        # Served by an index on (agent_id[, machine_id], seq) and stopped by the limit.
        return await _read(store, _select, subject, limit)
    # Other filters are not indexed, and one store call scanning millions of rows would
    # stall everything else on the store's thread: walk back through seq windows instead.
    lo, hi = await _read(store, _bounds, subject)
    out: list[Prediction] = []
    while lo is not None and hi >= lo and len(out) < limit:
        start = max(lo, hi - SCAN_WINDOW_SEQ + 1)
        window = [predictions.c.seq >= start, predictions.c.seq <= hi]
        out += await _read(store, _select, [*subject, *filters, *window], limit - len(out))
        hi = start - 1
    return out


@dataclass(frozen=True)
class HistoryQuery:
    """The query of GET /api/<slug>/history: ?limit=&machine_id=&camera_id=&since=&until="""

    limit: int
    machine_id: int | None
    camera_id: str | None
    since: float | None
    until: float | None

    @property
    def windowed(self) -> bool:
        return self.since is not None or self.until is not None

    @classmethod
    def of(cls, request: Request, limit_max: int) -> HistoryQuery:
        """Read and check it; ApiError 400 naming the parameter that is wrong."""
        since = query_time(request, "since")
        until = query_time(request, "until")
        if since is not None and until is not None and since > until:
            raise ApiError(
                400,
                "bad_query",
                f"since: {request.query_params['since']!r} is later than until "
                f"{request.query_params['until']!r}",
            )
        return cls(
            limit=query_int(request, "limit", 100, 1, limit_max) or 100,
            machine_id=query_int(request, "machine_id", None, 1, 1_000_000),
            camera_id=request.query_params.get("camera_id") or None,
            since=since,
            until=until,
        )

    async def from_store(self, store: Store, agent_id: str) -> list[Prediction]:
        return await query(
            store, agent_id, self.limit, self.machine_id, self.camera_id, self.since, self.until
        )


class StoredHistory:
    """/api/<slug>/history from the store alone, where the agent does not run (the
    control role: the ingest instances score and store the predictions).

    Takes the query of the agents' own route; what the store holds is what history.sample_s
    kept (every change of level, and one prediction per machine and agent per sample).
    Every other path under /api/<slug> answers 404 saying where the agent runs."""

    def __init__(self, store: Store, agent_id: str, slug: str, limit_max: int) -> None:
        self.store, self.agent_id, self.slug = store, agent_id, slug
        self.limit_max = limit_max

    async def history_route(self, request: Request) -> Response:
        """Newest (last written) first."""
        q = HistoryQuery.of(request, self.limit_max)
        source = request.query_params.get("source") or "store"
        if source != "store":
            raise ApiError(
                400,
                "bad_query",
                f"source: only store here, got {source!r}: {self.agent_id} runs on the "
                "ingest instances, which keep its recent predictions in memory",
            )
        items = await q.from_store(self.store, self.agent_id)
        return json_response(
            {"agent_id": self.agent_id, "source": source, "count": len(items), "predictions": items}
        )

    async def elsewhere_route(self, _request: Request) -> Response:
        raise ApiError(
            404,
            "not_on_this_instance",
            f"{self.agent_id} runs on the ingest instances, not on this control instance; "
            f"its stored predictions are at /api/{self.slug}/history",
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/history", self.history_route),
            Route("/{rest:path}", self.elsewhere_route, methods=["GET", "POST"]),
        ]


async def _read(store: Store, fn: Callable[..., T], *args: Any) -> T:
    try:
        return await store.read(fn, *args)
    except RuntimeError as exc:  # the store's thread is gone: it was closed
        raise StoreError(f"database {store.safe_url} is closed") from exc


def _bounds(conn: Connection, subject: list[Any]) -> tuple[int | None, int]:
    # Two queries: SQLite answers a lone min() or max() from the index end, not both.
    seq = predictions.c.seq
    lo = conn.execute(sa.select(sa.func.min(seq)).where(*subject)).scalar()
    hi = conn.execute(sa.select(sa.func.max(seq)).where(*subject)).scalar()
    return lo, hi or 0


def _select(conn: Connection, conds: list[Any], limit: int) -> list[Prediction]:
    rows = conn.execute(
        sa.select(predictions.c.seq, predictions.c.data)
        .where(*conds)
        .order_by(predictions.c.seq.desc())
        .limit(limit)
    )
    out = []
    for seq, data in rows:
        try:
            out.append(_decoder.decode(data))
        except msgspec.DecodeError as exc:
            log.warning("history: stored prediction %d unreadable, skipped: %s", seq, exc)
    return out
