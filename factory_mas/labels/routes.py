"""POST /api/labels (operator): log maintenance, failures, incidents or verdicts on alarms;
GET /api/labels (viewer): read them back as JSON or CSV.

A batch is stored whole or not at all: labels are typed in by people or imported from a
file, so a batch with a mistake is fixed and sent again, and nobody has to find out which
half of it is already in. Every batch stored is a row of the audit trail.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import msgspec
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth.keys import actor
from ..http.api import (
    ApiError,
    convert,
    json_response,
    query_int,
    query_one_of,
    query_time,
    read_json,
)
from ..store import Store
from .csv import write_labels_csv
from .model import LABEL_KINDS, MACHINE_ID_MAX, Label, LabelError, checked
from .store import add_labels, read_labels

# A day's logging of a large plant is some hundreds; an import is what the CLI is for.
POST_MAX_LABELS = 10_000
LIST_DEFAULT = 1_000
LIST_MAX = 100_000
# Errors listed in a 422 beside the first one, which the detail names.
ERRORS_LISTED = 50
_FIELDS = frozenset(Label.__struct_fields__) - {"id"}


class LabelRoutes:
    def __init__(self, store: Store, max_body_bytes: int) -> None:
        self.store = store
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[Route]:
        return [
            Route("/api/labels", self.list_route, methods=["GET"]),
            Route("/api/labels", self.post_route, methods=["POST"]),
        ]

    async def post_route(self, request: Request) -> Response:
        body = await read_json(request, self.max_body_bytes)
        single = not isinstance(body, list)
        items = [body] if single else body
        if not items:
            raise ApiError(400, "empty_batch", "the array holds no labels")
        if len(items) > POST_MAX_LABELS:
            raise ApiError(
                413,
                "too_many_labels",
                f"{len(items):,} labels in one request; at most {POST_MAX_LABELS:,} (import a "
                "file with `python -m factory_mas labels import FILE.csv`)",
            )
        who = actor(request.scope)
        labels = labels_of(items, single, who or "")
        audit_by = actor(request.scope, next((lb.by for lb in labels if lb.by), None)) or "http"
        ids = await self.store.write(partial(add_labels, by=audit_by, origin="http"), labels)
        return json_response({"stored": len(ids), "ids": ids}, 201)

    async def list_route(self, request: Request) -> Response:
        kind = query_one_of(request, "kind", LABEL_KINDS)
        fmt = query_one_of(request, "format", ("json", "csv")) or "json"
        order = query_one_of(request, "order", ("oldest", "newest")) or "oldest"
        query = partial(
            _listed,
            machine_id=query_int(request, "machine_id", None, 1, MACHINE_ID_MAX),
            since=query_time(request, "since"),
            until=query_time(request, "until"),
            kind=kind,
            limit=query_int(request, "limit", LIST_DEFAULT, 1, LIST_MAX),
            newest_first=order == "newest",
        )
        found = await self.store.read(query)
        if fmt == "csv":
            text = io.StringIO()
            write_labels_csv(found, text)
            return Response(
                text.getvalue(),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="labels.csv"'},
            )
        return json_response({"count": len(found), "labels": found})


def labels_of(items: Sequence[Any], single: bool, who: str) -> list[Label]:
    """The checked labels of a request body's items, or ApiError 422 naming the first
    bad item and field (and listing the others). `who` is their `by` where they say none:
    the calling key's name."""
    good: list[Label] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            good.append(_label(item, None if single else index, who))
        except ApiError as bad:
            if len(errors) < ERRORS_LISTED:
                errors.append({"index": bad.extra.get("index"), "field": bad.extra.get("field"),
                               "reason": bad.detail})  # fmt: skip
    if errors:
        first = errors[0]
        more = f" ({len(errors) - 1} more listed in errors)" if len(errors) > 1 else ""
        raise ApiError(
            422,
            "invalid_label",
            f"{first['reason']}{more}; nothing was stored",
            field=first["field"],
            index=first["index"],
            errors=errors,
        )
    return good


def _label(item: Any, index: int | None, who: str) -> Label:
    where = "" if index is None else f"label {index}: "
    if isinstance(item, dict):
        unknown = sorted(k for k in item if k not in _FIELDS)
        if unknown:
            reason = "is set by the store" if unknown[0] == "id" else "is not a label field"
            detail = f"{where}{unknown[0]}: {reason}"
            raise ApiError(422, "invalid_label", detail, field=unknown[0], index=index)
        item = {k: _time(k, v, where, index) for k, v in item.items()}
    label = convert(item, Label, "invalid_label", "label", index)
    try:
        label = checked(label)
    except LabelError as bad:
        raise ApiError(
            422, "invalid_label", f"{where}{bad}", field=bad.field, index=index
        ) from None
    return label if label.by else msgspec.structs.replace(label, by=who)


def _time(field: str, value: Any, where: str, index: int | None) -> Any:
    """Times as Unix seconds too, as every query of the API takes them."""
    if field not in ("start", "end") or not isinstance(value, int | float) or value is True:
        return value
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ApiError(
            422,
            "invalid_label",
            f"{where}{field}: {value!r} is not a time (Unix seconds)",
            field=field,
            index=index,
        ) from None


def _listed(conn: Connection, **query: Any) -> list[Label]:
    return list(read_labels(conn, **query))
