"""Rate limits, security headers, JSON shape limits, and the SCADA allow-list and
read-only switch, each as a client would meet them."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import opendnp3 as o
import pytest
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from factory_mas.app import Components, build_app
from factory_mas.bridges.scada.live import Writes
from factory_mas.bridges.scada.points import build_points
from factory_mas.http import api
from factory_mas.http.limits import (
    CSP,
    ClientAllowList,
    ProxyHeadersMiddleware,
    RateLimitMiddleware,
    SecurityHeadersMiddleware,
    TokenBuckets,
)
from factory_mas.settings import LimitsSettings, Settings
from tests.support.app import running_app, with_scada
from tests.support.dnp3 import INTEGRITY, OUTSTATION, master
from tests.support.net import free_port
from tests.support.waiting import until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- token buckets ---------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take(["a"]) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take(["a"]) == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take(["b"]) == 0.0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take(["a"]) == 0.0
    assert buckets.take(["a"]) > 0
    clock.now += 100  # refills to the burst, not beyond
    assert [buckets.take(["a"]) for _ in range(4)][-1] > 0


def test_a_request_needs_a_token_from_each_of_its_buckets() -> None:
    clock = Clock()
    buckets = TokenBuckets(rate=1.0, burst=2, clock=clock)
    assert buckets.take(["addr:1", "key:k"]) == 0.0
    assert buckets.take(["addr:2", "key:k"]) == 0.0
    # The key is spent although addr:3 is fresh; nothing is taken from addr:3.
    assert buckets.take(["addr:3", "key:k"]) == pytest.approx(1.0)
    assert [buckets.take(["addr:3"]) for _ in range(2)] == [0.0, 0.0]


def test_buckets_stay_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, burst=1, max_buckets=100)
    for i in range(5000):
        buckets.take([f"addr:{i}"])
    assert len(buckets) == 100


# -- middleware on a tiny app ------------------------------------------------------------


async def _json(_request: Request) -> Response:
    return JSONResponse({"ok": True})


async def _page(_request: Request) -> Response:
    return HTMLResponse("<html><body>hi</body></html>")


def tiny_app() -> Starlette:
    return Starlette(routes=[Route("/health", _json), Route("/data", _json), Route("/", _page)])


def limited(app: Any, burst: int = 3, rate: float = 0.5, **kw: Any) -> RateLimitMiddleware:
    return RateLimitMiddleware(app, LimitsSettings(requests_per_s=rate, burst=burst), **kw)


def client_for(app: Any, address: str = "10.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://factory.test")


async def test_over_the_limit_is_429_with_retry_after_and_health_is_exempt() -> None:
    app = limited(tiny_app(), burst=3, rate=0.5)
    async with client_for(app) as client:
        assert [(await client.get("/data")).status_code for _ in range(3)] == [200] * 3
        refused = await client.get("/data")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"  # one token per 2 s
        assert refused.json()["error"] == "too_many_requests"
        assert (await client.get("/health")).status_code == 200
    async with client_for(app, "10.0.0.2") as other:
        assert (await other.get("/data")).status_code == 200  # per address
    assert app.refused == 1


async def test_an_api_key_is_limited_across_addresses_and_never_kept() -> None:
    app = limited(tiny_app(), burst=2)
    secret = "fmk_very-secret-key"
    async with client_for(app, "10.0.0.1") as a, client_for(app, "10.0.0.2") as b:
        assert (await a.get("/data", headers={"X-API-Key": secret})).status_code == 200
        bearer = {"Authorization": f"Bearer {secret}"}
        assert (await b.get("/data", headers=bearer)).status_code == 200
        # Same key from a third address: its address bucket is full, the key's is empty.
        async with client_for(app, "10.0.0.3") as c:
            assert (await c.get("/data", headers=bearer)).status_code == 429
            assert (await c.get("/data")).status_code == 200
    kept = " ".join(app.buckets._buckets)
    assert secret not in kept and "key:" in kept


async def test_websocket_connect_is_counted() -> None:
    app = limited(tiny_app(), burst=1)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "client": ("10.0.0.9", 1), "headers": []}
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])

    app.app = inner
    await app(scope, receive, send)
    await app(scope, receive, send)
    assert calls == ["/ws"]
    assert sent == [{"type": "websocket.close", "code": 1013, "reason": "too many requests"}]


async def test_two_different_keys_are_refused_and_the_same_key_twice_is_fine() -> None:
    app = limited(tiny_app(), burst=2)
    valid = {"Authorization": "Bearer fmk_the-real-key"}
    # A made-up X-API-Key beside the real key once got its own, fresh bucket each time.
    for i in range(5):
        async with client_for(app, f"10.0.1.{i}") as client:
            decoy = await client.get("/data", headers={**valid, "X-API-Key": f"decoy-{i}"})
            assert decoy.status_code == 400
            assert decoy.json()["error"] == "conflicting_api_keys"
            assert "X-API-Key" in decoy.json()["detail"]
            assert "Authorization: Bearer" in decoy.json()["detail"]
    async with client_for(app, "10.0.2.1") as client:
        twice = httpx.Headers([("X-API-Key", "fmk_a"), ("X-API-Key", "fmk_b")])
        assert (await client.get("/data", headers=twice)).status_code == 400
        same = {**valid, "X-API-Key": "fmk_the-real-key"}
        assert (await client.get("/data", headers=same)).status_code == 200
    # The key's bucket counted it: one more from elsewhere, then it is empty.
    async with client_for(app, "10.0.2.2") as client:
        assert (await client.get("/data", headers=valid)).status_code == 200
        assert (await client.get("/data", headers=valid)).status_code == 429


async def test_a_websocket_with_two_keys_is_closed() -> None:
    app = limited(tiny_app())
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"x-api-key", b"fmk_one"), (b"authorization", b"Bearer fmk_two")]
    scope = {"type": "websocket", "path": "/ws", "client": ("10.0.0.9", 1), "headers": headers}
    await app(scope, None, send)  # type: ignore[arg-type]
    assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]
    assert "2 different API keys" in sent[0]["reason"]


# -- proxies -------------------------------------------------------------------------------


def test_the_client_is_the_right_most_entry_not_a_trusted_proxy() -> None:
    proxies = ProxyHeadersMiddleware(tiny_app(), ["10.0.0.0/8", "192.0.2.1"])
    assert proxies.client_of(["198.51.100.7"]) == "198.51.100.7"
    # What the client wrote itself is left of what our proxies appended.
    assert proxies.client_of(["6.6.6.6", "198.51.100.7", "10.1.2.3"]) == "198.51.100.7"
    assert proxies.client_of(["198.51.100.7:4431", "10.1.2.3"]) == "198.51.100.7"
    assert proxies.client_of(["[2001:db8::7]:443"]) == "2001:db8::7"
    assert proxies.client_of(["2001:db8::7"]) == "2001:db8::7"
    # Every entry one of ours: the one nearest the client.
    assert proxies.client_of(["10.9.9.9", "192.0.2.1"]) == "10.9.9.9"
    # Not an address: the peer's address stays (None), whatever the entry says.
    assert proxies.client_of(["unknown"]) is None
    assert proxies.client_of(["198.51.100.7", "evil\nline"]) is None
    assert proxies.client_of([]) is None
    anyone = ProxyHeadersMiddleware(tiny_app(), ["*"])
    assert anyone.client_of(["6.6.6.6", "198.51.100.7"]) == "198.51.100.7"


async def test_forwarded_headers_count_only_from_a_trusted_proxy() -> None:
    seen: list[tuple[str, str]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["client"][0], scope["scheme"]))
        await JSONResponse({})(scope, receive, send)

    app = ProxyHeadersMiddleware(inner, ["127.0.0.1"])
    forwarded = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Forwarded-Proto": "https"}
    async with client_for(app, "127.0.0.1") as proxy, client_for(app, "203.0.113.9") as other:
        await proxy.get("/", headers=forwarded)
        await other.get("/", headers=forwarded)
    assert seen == [("198.51.100.7", "https"), ("203.0.113.9", "http")]


@pytest.mark.integration
def test_a_rotating_forwarded_for_does_not_reset_the_address_bucket(server_factory) -> None:
    # Every peer trusted, as behind Railway's proxy: our test client plays the proxy.
    server = server_factory(
        {
            "FORWARDED_ALLOW_IPS": "*",
            "FACTORY_LIMITS_REQUESTS_PER_S": "0.01",
            "FACTORY_LIMITS_BURST": "5",
        }
    )
    rotating = [{"X-Forwarded-For": f"10.6.6.{i}, 198.51.100.7"} for i in range(8)]
    statuses = [server.get("/status", headers=h).status_code for h in rotating]
    assert statuses == [200] * 5 + [429] * 3
    # Another client behind the same proxy has its own bucket.
    other = server.get("/status", headers={"X-Forwarded-For": "198.51.100.8"})
    assert other.status_code == 200


async def test_security_headers_everywhere_and_csp_on_pages() -> None:
    async with client_for(SecurityHeadersMiddleware(tiny_app())) as client:
        page = await client.get("/")
        data = await client.get("/data")
        missing = await client.get("/nowhere")
    for response in (page, data, missing):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    csp = page.headers["content-security-policy"]
    assert csp == CSP and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert "content-security-policy" not in data.headers


# -- the whole app, wrapped as app.py wires it ---------------------------------------------


@asynccontextmanager
async def wrapped_app(
    settings: Settings, limits: LimitsSettings
) -> AsyncIterator[tuple[Components, httpx.AsyncClient]]:
    app = build_app(settings)
    outer = SecurityHeadersMiddleware(RateLimitMiddleware(app, limits))
    async with app.router.lifespan_context(app), client_for(outer, "192.0.2.7") as client:
        yield app.state.components, client


async def test_the_app_answers_429_and_keeps_serving_health(settings: Settings) -> None:
    async with wrapped_app(settings, LimitsSettings(requests_per_s=0.1, burst=5)) as (_, client):
        statuses = [(await client.get("/status")).status_code for _ in range(8)]
        assert statuses == [200] * 5 + [429] * 3
        refused = await client.get("/api/pm/status")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) == 10
        assert refused.headers["x-frame-options"] == "DENY"
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["ready"]
        assert health.headers["x-content-type-options"] == "nosniff"


# -- JSON shape limits ---------------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture
def small_json_limits() -> Any:
    before = api.JSON_MAX_DEPTH, api.JSON_MAX_ITEMS
    api.configure_json_limits(8, 50)
    yield
    api.configure_json_limits(*before)


def test_shape_check_counts_every_value_and_every_level() -> None:
    # 4 levels (object, array, object, array) and 7 values.
    api.check_json_shape({"a": [1, 2, {"b": [3]}]}, max_depth=4, max_items=7)
    with pytest.raises(api.ApiError, match="limit of 3 levels") as deep:
        api.check_json_shape({"a": [1, 2, {"b": [3]}]}, max_depth=3, max_items=100)
    assert deep.value.code == "too_deep"
    with pytest.raises(api.ApiError, match="limit of 6 values") as large:
        api.check_json_shape({"a": [1, 2, {"b": [3]}]}, max_depth=10, max_items=6)
    assert large.value.code == "too_large"
    api.check_json_shape(5, max_depth=2, max_items=10)


async def test_read_json_refuses_deep_wide_and_non_finite_json(settings: Settings) -> None:
    headers = {"content-type": "application/json"}
    limits = msgspec.structs.replace(settings.limits, json_max_depth=8, json_max_items=50)
    async with running_app(msgspec.structs.replace(settings, limits=limits)) as (_, client):

        async def post(body: bytes) -> httpx.Response:
            return await client.post("/api/orchestrator/alert", content=body, headers=headers)

        deep = await post(nested(9))
        assert deep.status_code == 400 and deep.json()["error"] == "too_deep"
        assert "8 levels" in deep.json()["detail"]
        # Deeper than the decoder itself follows: still a 400, not a crash.
        assert (await post(nested(100_000))).json()["error"] == "too_deep"
        wide = await post(msgspec.json.encode(list(range(60))))
        assert wide.status_code == 400 and wide.json()["error"] == "too_large"
        assert "50 values" in wide.json()["detail"]
        for literal in (b"NaN", b'{"value": Infinity}', b'{"value": -Infinity}', b"1e999"):
            response = await post(literal)
            assert response.status_code == 400, literal
            assert response.json()["error"] == "invalid_json"
        # Within the limits it is the usual validation that answers.
        assert (await post(nested(8))).status_code == 422


# -- SCADA: allow-list and the read-only switch ---------------------------------------------


def test_allow_list_matches_addresses_and_networks_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    allow = ClientAllowList(["10.0.0.0/8", "192.0.2.5", "2001:db8::/32"], "modbus")
    assert allow.allows("10.1.2.3") and allow.allows("192.0.2.5")
    assert allow.allows("::ffff:10.9.9.9") and allow.allows("2001:db8::1")
    with caplog.at_level("WARNING", logger="factory_mas.http.limits"):
        for _ in range(3):
            assert not allow.allows("192.0.2.6")
        assert not allow.allows(None) and not allow.allows("not-an-ip")
    assert allow.refused == 5
    assert sum("192.0.2.6" in r.getMessage() for r in caplog.records) == 1
    assert ClientAllowList([], "dnp3").allows("203.0.113.1")


def modbus_app(settings: Settings, **scada: Any) -> Settings:
    return with_scada(settings, modbus_enabled=True, modbus_port=free_port(), **scada)


async def modbus_read(port: int) -> Any:
    """The first input registers as a local client reads them, or the exception it gets."""
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        if not await client.connect():
            return ConnectionRefusedError()
        try:
            return await client.read_input_registers(0, count=2, device_id=1)
        except ModbusException as exc:
            return exc
    finally:
        client.close()


@pytest.mark.integration
@pytest.mark.parametrize(
    ("allowed", "served"),
    [(["10.9.9.9"], False), (["127.0.0.1"], True), (["127.0.0.0/8", "10.0.0.0/8"], True)],
)
async def test_modbus_serves_only_allowed_clients(
    settings: Settings, allowed: list[str], served: bool
) -> None:
    s = modbus_app(settings, allowed_clients=allowed)
    async with running_app(s) as (components, _client):
        answer = await modbus_read(s.scada.modbus_port)
        status = components.scada.status()["servers"]["modbus"]
        if served:
            assert not isinstance(answer, Exception) and not answer.isError(), answer
            assert status["connections_refused"] == 0
        else:
            assert isinstance(answer, Exception), answer
            assert status["connections_refused"] >= 1
            # Refused clients do not pile up in the server.
            assert components.scada.servers[0]._server.active_connections == {}


@pytest.mark.integration
async def test_modbus_writes_disabled_are_refused_and_audited(settings: Settings) -> None:
    s = modbus_app(settings, writes_enabled=False)
    point = next(p for p in build_points(s) if p.name == "pm_agent.rul_critical_hours")
    async with running_app(s) as (components, client):
        modbus = AsyncModbusTcpClient("127.0.0.1", port=s.scada.modbus_port, timeout=5)
        assert await modbus.connect()
        try:
            before = components.settings.agents.pm.rul_critical_hours
            response = await modbus.write_register(point.modbus_address, 300, device_id=1)
            assert response.isError() and response.exception_code in (2, 3)
        finally:
            modbus.close()
        assert components.settings.agents.pm.rul_critical_hours == before
        status = (await client.get("/api/pm/status")).json()
        assert status["settings"]["rul_critical_hours"] == before
        changes = (await client.get("/api/config/changes")).json()["changes"]
    [change] = [c for c in changes if c["origin"].startswith("scada:modbus 127.0.0.1:")]
    assert not change["accepted"]
    assert change["result"]["code"] == "read_only"
    assert change["result"]["error"] == Writes.DISABLED
    assert components.scada.status()["servers"]["modbus"]["writes"]["refused"] == 1


def dnp3_app(settings: Settings, **scada: Any) -> Settings:
    return with_scada(
        settings,
        dnp3_enabled=True,
        dnp3_port=free_port(),
        dnp3_outstation_address=OUTSTATION,
        dnp3_master_address=1,
        **scada,
    )


async def closed_by_peer(port: int) -> bool:
    """Connect and wait: True when the server closes the connection unasked."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.integration
async def test_dnp3_refuses_clients_not_allowed(settings: Settings) -> None:
    s = dnp3_app(settings, allowed_clients=["10.9.9.9"])
    async with running_app(s) as (components, _client):
        server = components.scada.servers[0]
        assert await closed_by_peer(s.scada.dnp3_port)
        refused = server.status()["connections_refused"]
        with master(s.scada.dnp3_port) as m:
            m.master.ScanClasses(INTEGRITY, m.soe)
            # The master keeps reconnecting: twice refused, it has had its chances.
            await until(
                lambda: server.status()["connections_refused"] >= refused + 2,
                "the master to be refused twice",
            )
            assert m.soe.take() == []  # not one measurement reached the master
        assert server.status()["connections_refused"] >= 2
        assert server.status()["listening"]


@pytest.mark.integration
async def test_dnp3_serves_an_allowed_master(settings: Settings) -> None:
    s = dnp3_app(settings, allowed_clients=["127.0.0.1"])
    async with running_app(s) as (components, _client):
        with socket.socket() as probe:  # the listener is up
            probe.connect(("127.0.0.1", s.scada.dnp3_port))
        with master(s.scada.dnp3_port) as m:
            seen = await m.poll(INTEGRITY)
        assert seen
        assert components.scada.servers[0].status()["connections_refused"] == 0


@pytest.mark.integration
async def test_dnp3_commands_refused_when_writes_are_disabled(settings: Settings) -> None:
    s = dnp3_app(settings, writes_enabled=False)
    points = {p.name: p for p in build_points(s)}
    async with running_app(s) as (_, client):
        enabled = points["pm_agent.enabled"]
        with master(s.scada.dnp3_port) as m:
            off = o.ControlRelayOutputBlock(o.OperationType.LATCH_OFF)
            assert await m.operate(off, enabled.dnp3_output) == [o.CommandStatus.NOT_SUPPORTED]
            statuses = await m.operate(off, enabled.dnp3_output, select=True)
            assert statuses == [o.CommandStatus.NOT_SUPPORTED]
        assert (await client.get("/api/pm/health")).json()["status"] == "running"
        changes = (await client.get("/api/config/changes")).json()["changes"]
    refused = [c for c in changes if c["origin"].startswith("scada:dnp3 127.0.0.1:")]
    assert len(refused) == 2 and not any(c["accepted"] for c in refused)
    assert {c["result"]["error"] for c in refused} == {Writes.DISABLED}
