"""A corpus of hostile input against every HTTP route of the app: wrong types, huge bodies,
deep JSON, NaN/Infinity, broken UTF-8, unicode junk, missing fields, path traversal and
SQL-looking strings. Every answer is a 4xx (never a 5xx), the server keeps serving, and
nothing from those requests is stored."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route

from factory_mas import store as tables
from factory_mas.app import Components, build_app
from factory_mas.settings import Settings
from tests.support.records import record

SQL = "1'; DROP TABLE alarms; --"
JUNK = "\u202e\u0000\ufeff\U0001f4a5"  # right-to-left override, NUL, BOM, emoji
TRAVERSAL = "../../etc/passwd"

PATH_VALUES = [
    TRAVERSAL,
    "..\\..\\windows\\win.ini",
    "1;DROP TABLE alarms",
    SQL,
    "\x00",
    "%00",
    JUNK,
    "-1",
    "0",
    "99999999999999999999999",
    "1e999",
    "NaN",
    "x" * 5000,
]

QUERY_VALUES = ["abc", "-1", "1e999", "NaN", "Infinity", SQL, TRAVERSAL, JUNK, "x" * 5000]
QUERY_NAMES = ["limit", "machine_id", "since", "until", "level", "state", "open", "camera_id",
               "agent", "source", "type", "offset"]  # fmt: skip

# Action routes that take no body: a body does not make them bad requests.
NO_BODY = {("POST", "/api/backlog/generate"), *(("POST", f"/api/{a}/{action}")
           for a in ("pm", "energy", "cyber", "safety", "ppe")
           for action in ("reload", "start", "stop"))}  # fmt: skip


def bad_bodies() -> list[tuple[str, bytes]]:
    """(name, raw body); each is wrong for every route that takes a body."""
    enc = msgspec.json.encode
    nan_record = b'{"timestamp": "2025-01-01T00:00:00Z", "machine_id": 1, "temperature_c": NaN}'
    return [
        ("empty", b""),
        ("blank", b"  \n "),
        ("not json", b"hello, world"),
        ("truncated", b'{"level": "CRITICAL", "type": '),
        ("number", b"123"),
        ("string", b'"CRITICAL"'),
        ("null", b"null"),
        ("true", b"true"),
        ("empty array", b"[]"),
        ("empty object", b"{}"),
        ("array of junk", enc([1, "two", None, [3]])),
        ("NaN", b"NaN"),
        ("NaN field", nan_record),
        ("Infinity field", nan_record.replace(b"NaN", b"Infinity")),
        ("-Infinity field", nan_record.replace(b"NaN", b"-Infinity")),
        ("huge exponent", nan_record.replace(b"NaN", b"1e999")),
        ("deep", b"[" * 1000 + b"]" * 1000),
        ("deep object", b'{"a":' * 1000 + b"1" + b"}" * 1000),
        ("very deep", b"[" * 200_000 + b"]" * 200_000),
        ("wide", enc([0] * 200_000)),
        ("invalid utf-8", b'{"level": "\xff\xfe\xfd", "type": "\xc3\x28", "source": "x"}'),
        ("lone surrogate", b'{"level": "\\ud800", "type": "x", "source": "x"}'),
        ("utf-16 bom", "\ufeff{}".encode("utf-16")),
        (
            "wrong types",
            enc(
                {
                    "level": 5,
                    "type": [],
                    "source": {},
                    "details": None,
                    "machine_id": "abc",
                    "timestamp": 12,
                    "temperature_c": "hot",
                    "by": 7,
                    "set": "all",
                }
            ),
        ),
        (
            "unicode junk",
            enc(
                {
                    "level": JUNK,
                    "type": JUNK,
                    "source": JUNK,
                    "details": JUNK,
                    **record(operation_mode=JUNK),
                    "by": JUNK,
                    "set": {JUNK: JUNK},
                }
            ),
        ),
        (
            "sql strings",
            enc(
                {
                    "level": SQL,
                    "type": SQL,
                    "source": SQL,
                    "details": SQL,
                    **record(operation_mode=SQL),
                    "machine_id": SQL,
                    "by": SQL,
                    "set": {SQL: SQL},
                }
            ),
        ),
        ("missing fields", enc({"details": "only details", "value": 1.0})),
        ("record missing fields", enc([{"machine_id": 1}, {"timestamp": "yesterday"}])),
        ("huge machine id", enc(record(machine_id=10**30))),
        ("negative latency", enc(record(network_latency_ms=-5, packet_loss_pct=250))),
        (
            "traversal strings",
            enc(
                {
                    "level": TRAVERSAL,
                    "source": TRAVERSAL,
                    "type": TRAVERSAL,
                    "image": TRAVERSAL,
                    "camera_id": TRAVERSAL,
                }
            ),
        ),
    ]


def http_routes(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, str]]:
    """(method, path template) for every HTTP route, mounts included."""
    found: list[tuple[str, str]] = []
    for route in routes:
        if isinstance(route, Mount):
            found += http_routes(list(route.routes), prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted(route.methods or {"GET"}):
                if method != "HEAD":
                    found.append((method, prefix + route.path))
    return found


def fill(template: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _m: quote(value, safe=""), template)


# Rows a bad request must never leave behind (config_changes: only accepted ones; refused
# attempts are audited on purpose).
COUNTED = ["alarms", "alarm_events", "alerts", "decisions", "sms_outbox", "inbox",
           "predictions", "mqtt_outbox", "shift_summaries", "api_keys"]  # fmt: skip


async def stored(c: Components) -> dict[str, int]:
    def count(conn: Any) -> dict[str, int]:
        out = {
            name: conn.execute(
                sa.select(sa.func.count()).select_from(tables.metadata.tables[name])
            ).scalar_one()
            for name in COUNTED
        }
        t = tables.config_changes
        accepted = sa.select(sa.func.count()).select_from(t).where(t.c.accepted.is_(True))
        out["config_changes accepted"] = conn.execute(accepted).scalar_one()
        return out

    return await c.store.read(count)


def problems(
    seen: list[tuple[str, str, str, int, str]], allow_2xx: bool = False
) -> list[tuple[str, str, str, int, str]]:
    low = 200 if allow_2xx else 400
    return [s for s in seen if not low <= s[3] < 500]


@asynccontextmanager
async def app_and_client(
    settings: Settings,
) -> AsyncIterator[tuple[Starlette, Components, httpx.AsyncClient]]:
    """Like conftest's running_app, but a crash is answered 500 like a real server does
    (instead of raised into the test), so that every such answer is listed."""
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://factory.test") as client:
            yield app, app.state.components, client


async def test_the_bad_input_corpus_gets_4xx_and_nothing_is_stored(settings: Settings) -> None:
    async with app_and_client(settings) as (app, c, client):
        routes = http_routes(app.routes)
        assert ("POST", "/api/ingest") in routes
        assert ("GET", "/api/backlog/summaries/{name}") in routes
        before = await stored(c)
        seen: list[tuple[str, str, str, int, str]] = []

        async def call(method: str, url: str, what: str, **kw: Any) -> None:
            response = await client.request(method, url, **kw)
            seen.append((method, url[:80], what, response.status_code, response.text[:200]))
            if response.status_code >= 400:
                # Errors keep their documented shape, whatever came in.
                body = response.json()
                assert set(body) >= {"error", "detail"}, (method, url, body)

        # 1. Hostile path parameters, on every route that has them, every method.
        for method, template in routes:
            if "{" not in template:
                continue
            for value in PATH_VALUES:
                kw = {"content": b"{}"} if method == "POST" else {}
                await call(method, fill(template, value), f"path {value[:20]!r}", **kw)

        # 2. Bodies: every route that takes one, with its path parameters made valid where
        #    a value is known, so that the body itself is what is checked.
        valid_path = {"agent_id": "pm_agent", "alarm_id": "1", "action": "ack"}
        huge = b'{"x": "' + b"a" * (11 * 1024 * 1024) + b'"}'
        posts = [(m, t) for m, t in routes if m == "POST" and (m, t) not in NO_BODY]
        assert len(posts) >= 9
        for method, template in posts:
            url = re.sub(r"\{([^}]+)\}", lambda m: valid_path.get(m[1], "x"), template)
            for name, body in bad_bodies():
                headers = {"content-type": "application/json"}
                await call(method, url, name, content=body, headers=headers)
            await call(method, url, "form", data={"level": SQL, "machine_id": TRAVERSAL})
            await call(method, url, "11 MB", content=huge)
            assert seen[-1][3] == 413, seen[-1]

        # 3. Hostile query strings on every GET route: never a 5xx; a route that reads the
        #    parameter refuses a bad value (checked below for the ones every client uses).
        gets = [t for m, t in routes if m == "GET" and "{" not in t]
        for template in gets:
            for value in QUERY_VALUES:
                params = {name: value for name in QUERY_NAMES}
                response = await client.get(template, params=params)
                if response.status_code >= 500:
                    seen.append(("GET", template, f"query {value[:20]!r}",
                                 response.status_code, response.text[:200]))  # fmt: skip
        for url in ("/api/pm/history", "/api/orchestrator/alarms", "/api/config/changes",
                    "/api/orchestrator/decisions", "/api/backlog/summaries"):  # fmt: skip
            for value in ("abc", "-1", "NaN", SQL):
                response = await client.get(url, params={"limit": value})
                seen.append(("GET", url, f"limit={value}", response.status_code, response.text))

        # 4. Not this app's methods.
        for method in ("PUT", "DELETE", "PATCH"):
            await call(method, "/api/ingest", "method", content=b"{}")

        wrong = problems(seen)
        assert not wrong, "\n".join(map(str, wrong[:20]))

        # The server still serves, and nothing of all that was kept.
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["ready"]
        assert (await client.get("/api/pm/health")).json()["status"] == "running"
        after = await stored(c)
        assert after == before
        assert not c.orchestrator.open
        system = (await client.get("/system-state")).json()
        assert system["alerts"] == [] and system["decisions"] == []

        # A good request right after is still taken.
        good = await client.post("/api/ingest", json=[record(3)])
        assert good.status_code == 202, good.text
