"""API keys and roles: first start, 401/403, the role of every route, public reads,
the `keys` command, WebSockets and the audit trail."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from factory_mas.app import Components, build_app
from factory_mas.auth import keys, middleware
from factory_mas.auth.middleware import AuthMiddleware, ensure_first_key
from factory_mas.auth.roles import WEBSOCKET, role_for
from factory_mas.settings import Settings
from factory_mas.store import Store

RANK = {"public": -1, "viewer": 0, "operator": 1, "admin": 2}
ROLES = ("viewer", "operator", "admin")

# Every route of the app and the least role it needs. A route missing here fails
# test_every_route_has_a_decided_role: someone must decide who may call it.
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/health"): "public",
    ("GET", "/"): "public",  # the dashboard page; its data needs a key
    ("GET", "/status"): "viewer",
    ("GET", "/metrics"): "viewer",  # Prometheus sends a viewer key
    ("GET", "/system-state"): "viewer",
    ("POST", "/api/ingest"): "operator",
    ("GET", "/api/labels"): "viewer",
    ("GET", "/api/telemetry"): "viewer",
    ("POST", "/api/labels"): "operator",
    ("GET", "/api/config"): "viewer",
    ("GET", "/api/config/changes"): "viewer",
    ("GET", "/api/config/{agent_id}"): "viewer",
    ("POST", "/api/config/{agent_id}"): "admin",
    ("GET", "/api/scada/points"): "viewer",
    ("GET", "/api/orchestrator/system-state"): "viewer",
    ("GET", "/api/orchestrator/status"): "viewer",
    ("POST", "/api/orchestrator/alert"): "operator",
    ("GET", "/api/orchestrator/alarms"): "viewer",
    ("GET", "/api/orchestrator/alarms/{alarm_id}"): "viewer",
    ("POST", "/api/orchestrator/alarms/{alarm_id}/{action}"): "operator",
    ("GET", "/api/orchestrator/decisions"): "viewer",
    ("GET", "/api/orchestrator/kpis"): "viewer",
    (WEBSOCKET, "/api/orchestrator/ws"): "viewer",
    ("POST", "/api/planner/plan"): "operator",
    ("GET", "/api/planner/playbooks"): "viewer",
    ("GET", "/api/notify/outbox"): "viewer",
    ("GET", "/api/notify/status"): "viewer",
    ("GET", "/api/backlog/latest"): "viewer",
    ("GET", "/api/backlog/summaries"): "viewer",
    ("GET", "/api/backlog/summaries/{name}"): "viewer",
    ("POST", "/api/backlog/generate"): "operator",
    ("GET", "/api/backlog/status"): "viewer",
    ("GET", "/api/audit"): "admin",
    ("GET", "/api/auth/whoami"): "viewer",
    **{
        pair: role
        for slug in ("pm", "energy", "cyber", "safety", "ppe")
        for pair, role in {
            ("GET", f"/api/{slug}/health"): "viewer",
            ("GET", f"/api/{slug}/status"): "viewer",
            ("GET", f"/api/{slug}/history"): "viewer",
            ("POST", f"/api/{slug}/predict"): "operator",
            ("POST", f"/api/{slug}/reload"): "admin",
            ("POST", f"/api/{slug}/start"): "admin",
            ("POST", f"/api/{slug}/stop"): "admin",
            (WEBSOCKET, f"/api/{slug}/ws"): "viewer",
        }.items()
    },
}
# Plausible values for path parameters; every alarm action is tried.
PARAMS: dict[str, tuple[str, ...]] = {
    "agent_id": ("pm_agent",),
    "alarm_id": ("1",),
    "action": ("ack", "shelve", "unshelve", "comment", "feedback"),
    "name": ("latest",),
}


def with_auth(settings: Settings, **auth: object) -> Settings:
    return msgspec.structs.replace(
        settings, auth=msgspec.structs.replace(settings.auth, enabled=True, **auth)
    )


class Running:
    def __init__(self, app: Starlette, client: httpx.AsyncClient) -> None:
        self.app, self.client = app, client
        self.c: Components = app.state.components
        self.keys: dict[str, str] = {}

    async def add_key(self, name: str, role: str) -> str:
        _id, key = await self.c.store.write(keys.add, name, role, "test", "test")
        return key

    def as_(self, role: str | None) -> dict[str, str]:
        return {} if role is None else {"Authorization": f"Bearer {self.keys[role]}"}


@asynccontextmanager
async def auth_app(settings: Settings, **auth: object) -> AsyncIterator[Running]:
    settings = with_auth(settings, **auth)
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://factory.test") as client:
            running = Running(app, client)
            for role in ROLES:
                running.keys[role] = await running.add_key(f"{role}-key", role)
            yield running


def walk(routes: list[BaseRoute], prefix: str = ""):
    for route in routes:
        if isinstance(route, Mount):
            yield from walk(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            for method in sorted((route.methods or set()) - {"HEAD"}):
                yield method, prefix + route.path
        elif isinstance(route, WebSocketRoute):
            yield WEBSOCKET, prefix + route.path


def filled(template: str) -> list[str]:
    paths = [template]
    for name, values in PARAMS.items():
        paths = [p.replace("{" + name + "}", v) for p in paths for v in values]
    assert "{" not in paths[0], f"no value for a parameter of {template}"
    return paths


# -- keys and rules, no server -------------------------------------------------------------


async def test_first_start_makes_one_admin_key(settings, capsys, caplog):
    settings = with_auth(settings)
    caplog.set_level(logging.INFO)
    async with Store.in_data_dir(settings.data_dir) as store:
        key = await ensure_first_key(store, settings)
        assert key is not None and key.startswith("fmk_")
        principal = await store.read(keys.find, key, False)
        assert principal is not None
        assert (principal.name, principal.role) == ("first-admin", "admin")
        assert await ensure_first_key(store, settings) is None
        assert await store.read(keys.count_active) == 1
        rows = await store.read(keys.list_keys)
    err = capsys.readouterr().err
    assert err.count(key) == 1 and "not shown again" in err
    assert key not in caplog.text and keys.prefix_of(key) in caplog.text
    # Only the hash is stored.
    assert rows[0]["prefix"] == keys.prefix_of(key)
    db = (settings.data_dir / "factory.db").read_bytes()
    assert key.encode() not in db and keys.hash_key(key).encode() in db


async def test_second_start_and_disabled_make_no_key(settings, capsys):
    async with Store.in_data_dir(settings.data_dir) as store:
        assert await ensure_first_key(store, settings) is None  # auth off in the fixture
        assert await store.read(keys.count_active) == 0
    async with Store.in_data_dir(settings.data_dir) as store:
        assert await ensure_first_key(store, with_auth(settings)) is not None
    async with Store.in_data_dir(settings.data_dir) as store:
        assert await ensure_first_key(store, with_auth(settings)) is None
        assert await store.read(keys.count_active) == 1
    assert "fmk_" in capsys.readouterr().err


async def test_revoke_by_id_prefix_and_audit(settings):
    async with Store.in_data_dir(settings.data_dir) as store:
        id1, key1 = await store.write(keys.add, "a", "viewer", "me", "cli")
        _id2, key2 = await store.write(keys.add, "b", "operator", "me", "cli")
        with pytest.raises(keys.KeyNotFound):
            await store.write(keys.revoke, "fmk_", "me", "cli")
        with pytest.raises(keys.KeyNotFound):
            await store.write(keys.revoke, "999", "me", "cli")
        with pytest.raises(keys.FactoryError):
            await store.write(keys.add, "c", "superuser", "me", "cli")
        row = await store.write(keys.revoke, str(id1), "me", "cli")
        assert row["revoked_at"] is not None
        await store.write(keys.revoke, key2[:10], "me", "http")
        assert await store.read(keys.find, key1) is None
        assert await store.read(keys.find, key2) is None
        assert await store.read(keys.count_active) == 0
        from factory_mas.configure import records

        trail = await store.read(records.changes, "auth", None, 10)
    assert [c["request"]["action"] for c in trail] == ["revoke", "revoke", "add", "add"]
    assert {c["by"] for c in trail} == {"me"}
    assert not any(k[4:] in repr(trail) for k in (key1, key2))


@pytest.mark.parametrize(
    ("method", "path", "need"),
    [
        ("GET", "/health", "public"),
        ("GET", "/", "public"),
        ("OPTIONS", "/api/ingest", "public"),
        ("HEAD", "/status", "viewer"),
        ("GET", "/metrics", "viewer"),
        ("POST", "/health", "admin"),
        ("POST", "/api/pm/predict/", "operator"),
        ("POST", "/api/orchestrator/alarms/5/delete", "admin"),
        ("POST", "/api/new-thing", "admin"),
        ("DELETE", "/api/orchestrator/alarms/5", "admin"),
        ("GET", "/api/auth/keys", "admin"),
        (WEBSOCKET, "/api/pm/ws", "viewer"),
    ],
)
def test_role_for_edges(method, path, need):
    assert role_for(method, path) == need


def test_every_route_has_a_decided_role(settings):
    app = build_app(settings)
    found = set(walk(app.routes))
    assert found == set(EXPECTED), (
        f"undecided: {sorted(found - set(EXPECTED))}; gone: {sorted(set(EXPECTED) - found)}"
    )
    for (method, template), need in EXPECTED.items():
        for path in filled(template):
            assert role_for(method, path) == need, (method, path)


# -- the running app ------------------------------------------------------------------------


async def test_role_matrix_over_every_route(settings):
    async with auth_app(settings) as run:
        for (method, template), need in EXPECTED.items():
            if method == WEBSOCKET:
                continue  # test_websocket_roles
            for path in filled(template):
                for role in (None, *ROLES):
                    kw: dict = {"headers": run.as_(role)}
                    if method == "POST":
                        kw["json"] = {}
                    got = (await run.client.request(method, path, **kw)).status_code
                    if need == "public":
                        allowed = True
                    elif role is None:
                        allowed = False
                    else:
                        allowed = RANK[role] >= RANK[need]
                    want = "allowed" if allowed else ("401" if role is None else "403")
                    ok = got not in (401, 403) if allowed else got == int(want)
                    assert ok, f"{method} {path} as {role}: {got}, wanted {want} (needs {need})"


async def test_401_403_bodies_and_logs(settings, caplog):
    caplog.set_level(logging.INFO)
    async with auth_app(settings) as run:
        missing = await run.client.get("/status")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        fake = "fmk_" + "x" * 43
        invalid = await run.client.get("/status", headers={"X-API-Key": fake})
        assert invalid.status_code == 401 and "not valid" in invalid.json()["detail"]
        other = await run.client.get("/status", headers={"Authorization": "Basic abc"})
        assert other.status_code == 401
        viewer = run.keys["viewer"]
        wrong = await run.client.post("/api/ingest", json=[], headers={"X-API-Key": viewer})
        assert wrong.status_code == 403
        body = wrong.json()
        assert body["error"] == "forbidden"
        assert "operator" in body["detail"] and "viewer-key" in body["detail"]
        assert (await run.client.get("/status", headers={"X-API-Key": viewer})).status_code == 200
        who = await run.client.get("/api/auth/whoami", headers=run.as_("operator"))
        assert who.json()["name"] == "operator-key" and who.json()["role"] == "operator"
    for key in (fake, *run.keys.values()):
        assert key not in caplog.text
    assert "401 GET /status" in caplog.text and fake[:12] in caplog.text
    assert "403 POST /api/ingest" in caplog.text and keys.prefix_of(viewer) in caplog.text


async def test_lookups_are_cached_and_last_use_recorded(settings):
    async with auth_app(settings) as run:
        key = run.keys["viewer"]
        for _ in range(3):
            answer = await run.client.get("/status", headers={"X-API-Key": key})
            assert answer.status_code == 200
        rows = {r["name"]: r for r in await run.c.store.read(keys.list_keys)}
        assert rows["viewer-key"]["last_used_at"] is not None
        assert rows["admin-key"]["last_used_at"] is None


async def test_middleware_cache_expires(settings):
    now = [0.0]
    settings = with_auth(settings)
    async with Store.in_data_dir(settings.data_dir) as store:
        _id, key = await store.write(keys.add, "k", "viewer", "t", "test")
        auth = AuthMiddleware(lambda *a: None, store, settings, cache_s=30, clock=lambda: now[0])
        assert await auth._lookup(key) is not None
        await store.write(keys.revoke, key[:12], "t", "test")
        assert await auth._lookup(key) is not None  # cached
        now[0] = 31.0
        assert await auth._lookup(key) is None
        now[0] = 0.0
        auth.forget()
        assert await auth._lookup(key) is None


async def test_public_read(settings):
    async with auth_app(settings, public_read=True) as run:
        assert (await run.client.get("/status")).status_code == 200
        assert (await run.client.get("/api/orchestrator/alarms")).status_code == 200
        who = await run.client.get("/api/auth/whoami")
        assert who.json() == {"auth_enabled": True, "name": None, "role": "viewer"}
        assert (await run.client.get("/api/audit")).status_code == 401
        assert (await run.client.post("/api/ingest", json=[])).status_code == 401
        # A key still counts where one is given.
        bad = await run.client.get("/status", headers={"X-API-Key": "fmk_nope"})
        assert bad.status_code == 401


async def test_disabled_is_open(settings):
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/status")).status_code == 200
            assert (await client.get("/api/audit")).status_code == 200
            who = (await client.get("/api/auth/whoami")).json()
            assert who["auth_enabled"] is False


async def test_audit_lists_an_ack_with_its_actor(settings):
    async with auth_app(settings) as run:
        operator = await run.add_key("alice", "operator")
        headers = {"Authorization": f"Bearer {operator}"}
        alert = {"level": "WARNING", "type": "LOW_RUL", "source": "plc-1", "details": "wear"}
        raised = await run.client.post(
            "/api/orchestrator/alert", json={**alert, "machine_id": 3}, headers=headers
        )
        assert raised.status_code == 202, raised.text
        alarm_id = raised.json()["alarms"][0]["id"]
        acked = await run.client.post(
            f"/api/orchestrator/alarms/{alarm_id}/ack",
            # The key says who acts: a body cannot put the blame on someone else.
            json={"by": "mallory", "note": "on it"},
            headers=headers,
        )
        assert acked.status_code == 200, acked.text
        denied = await run.client.get("/api/audit", headers=headers)
        assert denied.status_code == 403
        answer = await run.client.get("/api/audit", headers=run.as_("admin"))
        assert answer.status_code == 200
        events = answer.json()["events"]
        ack = events[0]
        assert (ack["actor"], ack["source"], ack["action"]) == (
            "alice",
            f"alarm:{alarm_id}",
            "acked",
        )
        assert ack["detail"]["detail"] == "on it" and ack["at"]
        added = [e for e in events if e["source"] == "keys"]
        assert {e["detail"]["request"]["name"] for e in added} >= {"alice", "admin-key"}
        assert operator not in answer.text
        ats = [e["at"] for e in events]
        assert ats == sorted(ats, reverse=True)
        limited = await run.client.get("/api/audit?limit=1", headers=run.as_("admin"))
        assert limited.json()["count"] == 1


# -- WebSockets, driven as ASGI (httpx has no WebSocket client) ------------------------------


class Socket:
    def __init__(self, app: Starlette, path: str, headers: dict[str, str]) -> None:
        self.to_app: asyncio.Queue = asyncio.Queue()
        self.from_app: asyncio.Queue = asyncio.Queue()
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 50000),
            "server": ("factory.test", 80),
            "subprotocols": [],
            "extensions": {},
        }
        self.to_app.put_nowait({"type": "websocket.connect"})
        self.task = asyncio.create_task(app(scope, self.to_app.get, self.from_app.put))

    async def next(self) -> dict:
        return await asyncio.wait_for(self.from_app.get(), 10)

    def say(self, text: str) -> None:
        self.to_app.put_nowait({"type": "websocket.receive", "text": text})

    async def end(self) -> None:
        self.to_app.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, 10)


async def test_websocket_roles(settings, monkeypatch, caplog):
    monkeypatch.setattr(middleware, "WS_AUTH_TIMEOUT_S", 0.2)
    async with auth_app(settings) as run:
        ws_paths = [path for (method, path) in EXPECTED if method == WEBSOCKET]
        for path in ws_paths:
            # A key in a header: the route accepts and streams.
            sock = Socket(run.app, path, {"X-API-Key": run.keys["viewer"]})
            assert (await sock.next())["type"] == "websocket.accept"
            hello = await sock.next()
            assert hello["type"] == "websocket.send" and '"hello"' in hello["text"]
            await sock.end()
        path = "/api/orchestrator/ws"
        # The key as the first message (browsers cannot set headers on a WebSocket).
        sock = Socket(run.app, path, {})
        assert (await sock.next())["type"] == "websocket.accept"
        sock.say(msgspec.json.encode({"auth": run.keys["admin"]}).decode())
        hello = await sock.next()
        assert hello["type"] == "websocket.send" and '"hello"' in hello["text"]
        await sock.end()
        # No key, nothing said: closed with 4401 after the wait.
        sock = Socket(run.app, path, {})
        assert (await sock.next())["type"] == "websocket.accept"
        closed = await sock.next()
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
        await asyncio.wait_for(sock.task, 10)
        # A wrong first message: closed with 4401, the route never sees it.
        sock = Socket(run.app, path, {})
        await sock.next()
        sock.say('{"auth": "fmk_wrongwrongwrongwrong"}')
        closed = await sock.next()
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
        await asyncio.wait_for(sock.task, 10)
        # A bad header key, or a key without the role: accepted, then closed with the
        # reason (browsers see close codes, not a refused handshake's status).
        sock = Socket(run.app, path, {"X-API-Key": "fmk_bad"})
        assert (await sock.next())["type"] == "websocket.accept"
        closed = await sock.next()
        assert (closed["type"], closed["code"]) == ("websocket.close", 4401)
        assert "not valid" in closed["reason"]
        await asyncio.wait_for(sock.task, 10)
    assert run.keys["admin"] not in caplog.text


async def test_websocket_public_read_needs_no_key(settings):
    async with auth_app(settings, public_read=True) as run:
        sock = Socket(run.app, "/api/pm/ws", {})
        assert (await sock.next())["type"] == "websocket.accept"
        assert '"hello"' in (await sock.next())["text"]
        await sock.end()


# -- the `keys` command ------------------------------------------------------------------------


def cli(args: list[str], data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    env.pop("LOG_LEVEL", None)
    env["FACTORY_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "factory_mas", "keys", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
async def test_keys_command(settings, tmp_path):
    def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(list(args), settings.data_dir, tmp_path)

    added = await asyncio.to_thread(run_cli, "add", "wall", "--role", "operator")
    assert added.returncode == 0, added.stderr
    wall = added.stdout.split()[-1]
    assert wall.startswith("fmk_") and wall not in added.stderr
    kept = (await asyncio.to_thread(run_cli, "add", "ops", "--role", "admin")).stdout.split()[-1]
    listed = await asyncio.to_thread(run_cli, "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "name", "role", "prefix"]
    assert "wall" in lines[1] and "operator" in lines[1] and wall[:12] in lines[1]
    assert wall not in listed.stdout and kept not in listed.stdout
    revoked = await asyncio.to_thread(run_cli, "revoke", wall[:12])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    missing = await asyncio.to_thread(run_cli, "revoke", "99")
    assert missing.returncode == 1 and "no key" in missing.stderr
    as_json = msgspec.json.decode((await asyncio.to_thread(run_cli, "list", "--json")).stdout)
    assert [r["revoked_at"] is not None for r in as_json] == [True, False]
    bad_role = await asyncio.to_thread(run_cli, "add", "x", "--role", "root")
    assert bad_role.returncode == 2

    async with auth_app(settings) as run:
        gone = await run.client.get("/status", headers={"X-API-Key": wall})
        assert gone.status_code == 401
        ok = await run.client.get("/api/auth/whoami", headers={"X-API-Key": kept})
        assert ok.json()["name"] == "ops"
        trail = (await run.client.get("/api/audit", headers={"X-API-Key": kept})).json()
        cli_changes = [e for e in trail["events"] if e["origin"] == "cli"]
        assert [e["action"] for e in cli_changes] == ["revoke", "add", "add"]
        assert all(e["actor"].startswith("cli") for e in cli_changes)
