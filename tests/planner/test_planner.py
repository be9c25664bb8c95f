"""The planner service: /api/planner over HTTP, and a real external planner on a socket."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from factory_mas.http.api import EXCEPTION_HANDLERS
from factory_mas.messages import Alarm
from factory_mas.planner import Planner
from factory_mas.settings import PlannerSettings
from tests.support.net import free_port

EXTERNAL_PLAN = {
    "action": "dispatch_robot",
    "priority": 2,
    "steps": ["Send the inspection robot"],
    "rationale": "external model says so",
}


class FakePlanner(ThreadingHTTPServer):
    """A stand-in external planner; the request path picks its behaviour."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[dict] = []
        self.base = f"http://127.0.0.1:{self.server_address[1]}"
        # /slow answers only once the test lets it: whether the planner is still waiting for
        # it when plan() returns is then a fact, not a race against a clock.
        self.release_slow = threading.Event()
        self.slow_answered = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: FakePlanner

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.server.received.append(body)
        if self.path == "/slow":
            self.server.release_slow.wait(30)
            self._send(200, json.dumps(EXTERNAL_PLAN).encode())
            self.server.slow_answered.set()
        elif self.path == "/ok":
            self._send(200, json.dumps(EXTERNAL_PLAN).encode())
        elif self.path == "/for-camera":
            self._send(200, json.dumps({**EXTERNAL_PLAN, "camera_id": "cam-x"}).encode())
        elif self.path == "/garbage":
            self._send(200, b"<html>not json</html>")
        elif self.path == "/bad-priority":
            self._send(200, json.dumps({**EXTERNAL_PLAN, "priority": 9}).encode())
        else:
            self._send(500, b"boom")

    def _send(self, status: int, body: bytes) -> None:
        # OSError: the planner under test gave up waiting, which is what /slow is for.
        with contextlib.suppress(OSError):
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_planner() -> Iterator[FakePlanner]:
    server = FakePlanner()
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.release_slow.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def planner_settings(url: str = "", timeout_s: float = 2.0) -> PlannerSettings:
    return msgspec.structs.replace(PlannerSettings(), url=url, timeout_s=timeout_s)


def alarm(id: int, type: str, level: str = "WARNING", machine_id: int | None = 7) -> Alarm:
    ts = datetime(2025, 1, 1, tzinfo=UTC)
    return Alarm(
        id=id,
        source="pm_agent",
        type=type,
        state="ACTIVE_UNACK",
        level=level,
        highest_level=level,
        count=1,
        first_seen=ts,
        last_seen=ts,
        details="",
        machine_id=machine_id,
    )


@pytest.fixture
async def api() -> AsyncIterator[httpx.AsyncClient]:
    async with api_for(planner_settings()) as client:
        yield client


class api_for:
    """An HTTP client for /api/planner of a Planner built from settings."""

    def __init__(self, settings: PlannerSettings) -> None:
        self.planner = Planner(settings)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.planner.__aenter__()
        app = Starlette(
            routes=[Mount("/api/planner", routes=self.planner.routes())],
            exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        )
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.planner.__aexit__(None, None, None)


def alert(**kw: object) -> dict:
    return {
        "level": "CRITICAL",
        "type": "MECHANICAL_HAZARD",
        "source": "safety_agent",
        "details": "vibration 4.8 Hz",
        "machine_id": 7,
        **kw,
    }


# -- HTTP ------------------------------------------------------------------------------


async def test_plan_for_one_alert(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/planner/plan", json=alert())
    assert r.status_code == 200
    body = r.json()
    assert body["planner"] == "builtin"
    plan = body["plan"]
    assert (plan["action"], plan["priority"], plan["machine_id"]) == ("stop_machine", 2, 7)
    assert "safety_agent MECHANICAL_HAZARD at CRITICAL" in plan["rationale"]
    assert body["plans"] == [{"plan": plan, "planner": "builtin", "alerts": [0]}]


async def test_plan_for_alerts_on_one_machine_is_combined(api: httpx.AsyncClient) -> None:
    alerts = [
        alert(),
        alert(type="LOW_RUL", source="pm_agent", level="WARNING", details="RUL 50 h"),
        alert(),  # a repeat: more evidence of the same alarm, not another plan
    ]
    r = await api.post("/api/planner/plan", json=alerts)
    assert r.status_code == 200
    body = r.json()
    assert len(body["plans"]) == 1 and body["plans"][0]["alerts"] == [0, 1, 2]
    plan = body["plan"]
    assert (plan["action"], plan["priority"]) == ("stop_machine", 1)
    assert "MECHANICAL_HAZARD at CRITICAL (2 times)" in plan["rationale"]
    assert "pm_agent LOW_RUL at WARNING (once)" in plan["rationale"]
    assert "Schedule maintenance in the next shift" in plan["steps"]


async def test_plan_for_several_machines_gives_one_plan_each(api: httpx.AsyncClient) -> None:
    alerts = [
        alert(type="POWER_ANOMALY", source="energy_agent", level="WARNING", machine_id=3),
        alert(),
        {**alert(type="PPE_VIOLATION", source="ppe_agent"), "machine_id": None, "camera_id": "c1"},
        alert(type="LOW_RUL", source="pm_agent", level="WARNING", machine_id=3),
    ]
    r = await api.post("/api/planner/plan", json=alerts)
    assert r.status_code == 200
    plans = r.json()["plans"]
    assert [p["alerts"] for p in plans] == [[0, 3], [1], [2]]
    assert [(p["plan"]["machine_id"], p["plan"]["camera_id"]) for p in plans] == [
        (3, None),
        (7, None),
        (None, "c1"),
    ]
    # The first alert's subject answers at the top: machine 3, LOW_RUL leads, raised to 2.
    top = r.json()["plan"]
    assert (top["machine_id"], top["action"], top["priority"]) == (3, "schedule_maintenance", 2)
    assert plans[2]["plan"]["action"] == "stop_machine"


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({k: v for k, v in alert().items() if k != "level"}, "level", "required field"),
        (alert(level="SEVERE"), "level", "'SEVERE' is not one of NORMAL"),
        (alert(machine_id="seven"), "machine_id", "machine_id: Expected `int | null`"),
        ({k: v for k, v in alert().items() if k != "source"}, "source", "required"),
        (alert(timestamp="yesterday"), "timestamp", "timestamp:"),
        (42, None, "must be a JSON object"),
    ],
)
async def test_invalid_alert_is_422_naming_the_field(
    api: httpx.AsyncClient, body: object, field: str | None, words: str
) -> None:
    r = await api.post("/api/planner/plan", json=body)
    assert r.status_code == 422
    answer = r.json()
    assert answer["error"] == "invalid_alert"
    assert answer["field"] == field
    assert words in answer["detail"]


async def test_invalid_alert_in_a_list_is_located(api: httpx.AsyncClient) -> None:
    r = await api.post("/api/planner/plan", json=[alert(), alert(level="bad")])
    assert r.status_code == 422
    assert r.json()["detail"].startswith("alert 1: level:")
    assert r.json()["index"] == 1


@pytest.mark.parametrize(
    ("content", "error"),
    [(b"", "empty_body"), (b"[]", "empty_batch"), (b"{nope", "invalid_json")],
)
async def test_empty_or_broken_body_is_400(
    api: httpx.AsyncClient, content: bytes, error: str
) -> None:
    r = await api.post("/api/planner/plan", content=content)
    assert r.status_code == 400
    assert r.json()["error"] == error


async def test_playbooks_endpoint(api: httpx.AsyncClient) -> None:
    r = await api.get("/api/planner/playbooks")
    assert r.status_code == 200
    body = r.json()
    assert body["playbooks"]["PPE_VIOLATION"]["action"] == "stop_machine"
    assert body["playbooks"]["DDOS_RISK"]["priority"] == 2
    assert body["fallback"]["action"] == "log" and body["fallback"]["priority"] == 5
    assert body["correlation_window_s"] == 600.0
    assert body["external"] is None


async def test_playbooks_endpoint_hides_the_external_password() -> None:
    async with api_for(planner_settings("http://bot:s3cret@127.0.0.1:9/plan")) as client:
        body = (await client.get("/api/planner/playbooks")).json()
    assert "s3cret" not in body["external"] and "127.0.0.1:9/plan" in body["external"]


# -- external planner ------------------------------------------------------------------


@pytest.mark.integration
async def test_external_plan_is_used_and_labelled(fake_planner: FakePlanner) -> None:
    url = fake_planner.base + "/ok"
    async with Planner(planner_settings(url)) as planner:
        plan, label = await planner.plan([alarm(1, "LOW_RUL"), alarm(2, "POWER_ANOMALY")])
    assert label == f"external {url}"
    assert (plan.action, plan.priority, plan.steps) == ("dispatch_robot", 2, EXTERNAL_PLAN["steps"])
    # The answer named no subject: the plan is about the trigger's machine.
    assert plan.machine_id == 7
    sent = fake_planner.received[0]["alarms"]
    assert [(a["id"], a["type"], a["machine_id"]) for a in sent] == [
        (1, "LOW_RUL", 7),
        (2, "POWER_ANOMALY", 7),
    ]
    assert planner.stats()["external_ok"] == 1 and planner.stats()["builtin"] == 0


@pytest.mark.integration
async def test_external_subject_is_kept(fake_planner: FakePlanner) -> None:
    async with Planner(planner_settings(fake_planner.base + "/for-camera")) as planner:
        plan, _ = await planner.plan([alarm(1, "LOW_RUL")])
    assert (plan.machine_id, plan.camera_id) == (None, "cam-x")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/slow", "no answer within 0.2 s"),
        ("/garbage", "not a plan"),
        ("/bad-priority", "not a plan"),
        ("/error", "HTTP 500"),
    ],
)
async def test_failing_external_planner_falls_back(
    fake_planner: FakePlanner, path: str, reason: str
) -> None:
    async with Planner(planner_settings(fake_planner.base + path, timeout_s=0.2)) as planner:
        plan, label = await planner.plan([alarm(1, "LOW_RUL")])
        # The slow planner has not answered yet: plan() did not wait for it.
        assert not fake_planner.slow_answered.is_set()
    assert label.startswith("builtin (external planner failed: ")
    assert reason in label
    assert (plan.action, plan.priority) == ("schedule_maintenance", 3)
    assert "external planner failed" in plan.rationale
    stats = planner.stats()
    assert (stats["external_ok"], stats["external_failed"], stats["builtin"]) == (0, 1, 1)
    assert reason in stats["last_error"]


@pytest.mark.integration
async def test_unreachable_external_planner_falls_back() -> None:
    url = f"http://127.0.0.1:{free_port()}/plan"
    async with Planner(planner_settings(url, timeout_s=0.5)) as planner:
        plan, label = await planner.plan([alarm(1, "DDOS_RISK")])
        plan2, _ = await planner.plan([alarm(1, "DDOS_RISK")])
    assert label.startswith("builtin (external planner failed: ConnectError")
    assert plan.action == plan2.action == "isolate_network_segment"
    assert planner.stats()["external_failed"] == 2


@pytest.mark.integration
async def test_external_planner_without_async_with(fake_planner: FakePlanner) -> None:
    planner = Planner(planner_settings(fake_planner.base + "/ok"))
    _, label = await planner.plan([alarm(1, "LOW_RUL")])
    assert label.startswith("external ")


@pytest.mark.integration
async def test_external_planner_through_the_route(fake_planner: FakePlanner) -> None:
    async with api_for(planner_settings(fake_planner.base + "/ok")) as client:
        r = await client.post("/api/planner/plan", json=alert())
    assert r.status_code == 200
    body = r.json()
    assert body["planner"] == f"external {fake_planner.base}/ok"
    assert body["plan"]["action"] == "dispatch_robot" and body["plan"]["machine_id"] == 7


async def test_builtin_planner_counts() -> None:
    planner = Planner(planner_settings())
    plan, label = await planner.plan([alarm(1, "NEW_KIND", "CAUTION", machine_id=None)])
    assert (label, plan.action, plan.priority) == ("builtin", "log", 5)
    assert planner.stats() == {
        "external": None,
        "external_ok": 0,
        "external_failed": 0,
        "builtin": 1,
        "last_error": None,
    }
    with pytest.raises(ValueError):
        await planner.plan([])
