"""Scale-out: `serve --role ingest` instances share the telemetry, one `--role control`
instance turns their alerts into alarms; a real mosquitto and a real PostgreSQL between
them (tests/support/mqtt_broker.py, tests/support/postgres.py), and real server processes.

mosquitto hands a shared subscription's messages round-robin, so one machine's records
reach both ingest instances: the end-to-end test checks counts, duplicates and alarms,
never per-machine state (that needs a broker that hashes by topic; see docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import msgspec
import pytest
import sqlalchemy as sa
import yaml

from factory_mas.agents.base import AgentContext
from factory_mas.agents.pm.agent import PmAgent
from factory_mas.app import DEFAULT_SHARED_GROUP, ROLE_RUNS, build_app
from factory_mas.bench.pipeline import trigger_record
from factory_mas.bridges import mqtt
from factory_mas.hub import Hub
from factory_mas.ml.inference import Inference
from factory_mas.settings import Settings, load_settings
from factory_mas.store import Store, database_url, sqlite_url
from tests.support.app import TEST_ENV, Server
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import until

# Hang guard only.
TIMEOUT_S = 60.0
TELEMETRY = "sensors/factory/data"
TELEMETRY_AGENTS = ("pm_agent", "energy_agent", "cyber_agent", "safety_agent")
BASE_TS = datetime(2025, 1, 1, tzinfo=UTC)
COMPOSE = REPO / "deploy" / "compose.yaml"


def role_settings(tmp_path: Path, role: str, **env: str) -> Settings:
    return load_settings(
        path=REPO / "settings.toml",
        env={
            "FACTORY_DATA_DIR": str(tmp_path / role),
            **TEST_ENV,
            "FACTORY_INSTANCE_ROLE": role,
            "MQTT_BROKER": "127.0.0.1",
            **env,
        },
    )


def paths(settings: Settings) -> set[str]:
    return {getattr(route, "path", "") for route in build_app(settings).routes}


# ------------------------------------------------------------------ what each role runs


def test_the_roles_split_the_components_between_them() -> None:
    ingest, control, everything = ROLE_RUNS["ingest"], ROLE_RUNS["control"], ROLE_RUNS["all"]
    # Only the plumbing is in both; together they are the single process but its replay.
    assert ingest & control == {"store", "hub", "mqtt"}
    assert ingest | control | {"replay"} == everything
    assert {"intake", "agents", "history", "configurator", "inference"} <= ingest
    assert {"orchestrator", "planner", "notifier", "backlog", "scada", "dashboard"} <= control


def test_each_role_builds_and_routes_only_what_it_runs(tmp_path: Path) -> None:
    ingest = build_app(role_settings(tmp_path, "ingest")).state.components
    control = build_app(role_settings(tmp_path, "control")).state.components
    assert [a.agent_id for a in ingest.agents] == [*TELEMETRY_AGENTS, "ppe_agent"]
    assert control.agents == []

    # Ingest: telemetry in through a shared subscription (a default group when none is
    # set), config to every instance; control: what the ingest instances send.
    assert ingest.mqtt.settings.shared_group == DEFAULT_SHARED_GROUP
    assert ingest.mqtt._subscription("sensors/factory/data/+")[0] == (
        f"$share/{DEFAULT_SHARED_GROUP}/sensors/factory/data/+"
    )
    assert ingest.mqtt._subscription("config/+")[0] == "config/+"
    assert ingest.mqtt.alert_sink is None
    assert control.mqtt.settings.subscribe == ["alerts/+", "predictions/+"]
    assert control.mqtt.alert_sink == control.orchestrator.submit_until_stored
    alerts, live = (control.mqtt._subscription(f)[1] for f in ("alerts/+", "predictions/+"))
    assert (alerts.QoS, live.QoS) == (1, 0)
    named = build_app(role_settings(tmp_path, "ingest", FACTORY_MQTT_SHARED_GROUP="plant7"))
    assert named.state.components.mqtt.settings.shared_group == "plant7"

    ingest_paths = paths(role_settings(tmp_path, "ingest"))
    control_paths = paths(role_settings(tmp_path, "control"))
    assert {"/api/ingest", "/api/config/{agent_id}", "/api/pm", "/metrics"} <= ingest_paths
    assert "/static" not in ingest_paths
    assert {"/api/orchestrator", "/api/backlog", "/api/scada/points", "/static"} <= control_paths
    assert "/api/config/{agent_id}" not in control_paths


def test_the_single_process_keeps_every_route_and_its_old_names(tmp_path: Path) -> None:
    settings = role_settings(tmp_path, "all")
    every = paths(settings)
    assert {"/api/ingest", "/api/orchestrator", "/api/pm", "/static", "/system-state"} <= every
    assert not [p for p in every if "{rest:path}" in p]
    c = build_app(settings).state.components
    assert c.store.instance == ""
    assert c.agents[0].checkpoint_name == "agent:pm_agent"


async def test_routes_of_the_other_role_say_where_they_are_served(tmp_path: Path) -> None:
    async def get(settings: Settings, method: str, path: str) -> httpx.Response:
        # No lifespan: these answers need no running component.
        transport = httpx.ASGITransport(app=build_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://f.test") as http:
            return await http.request(method, path, json={} if method == "POST" else None)

    ingest = role_settings(tmp_path, "ingest", FACTORY_INSTANCE_ID="ingest-7")
    control = role_settings(tmp_path, "control")
    for settings, method, path, words in [
        (ingest, "GET", "/system-state", "control instance"),
        (ingest, "GET", "/api/orchestrator/alarms", "control instance"),
        (ingest, "POST", "/api/backlog/generate", "control instance"),
        (ingest, "GET", "/api/scada/points", "control instance"),
        (control, "POST", "/api/ingest", "ingest instances"),
        (control, "POST", "/api/config/pm_agent", "config/<agent_id>"),
        (control, "GET", "/api/pm/status", "/api/pm/history"),
    ]:
        response = await get(settings, method, path)
        assert response.status_code == 404, (path, response.text)
        body = response.json()
        assert body["error"] == "not_on_this_instance", body
        assert words in body["detail"], body
    page = await get(ingest, "GET", "/")
    assert page.status_code == 200
    assert "ingest instance ingest-7" in page.text


@pytest.mark.integration
def test_an_ingest_or_control_role_without_a_broker_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQTT_")}
    env.update(TEST_ENV, FACTORY_DATA_DIR=str(tmp_path / "data"))
    for role in ("ingest", "control"):
        done = subprocess.run(
            [sys.executable, "-m", "factory_mas", "serve", "--role", role],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert f"the {role} role needs an MQTT broker" in line
        assert "MQTT_BROKER" in line


# ------------------------------------------------------------------ one database, many instances


async def test_instances_sharing_a_database_keep_their_own_journal_and_outbox(
    database: str,
) -> None:
    async with Store(database, "ingest-1") as one, Store(database, "ingest-2") as two:
        a1 = await one.inbox_append(TELEMETRY, "mqtt", b"a1")
        b1 = await two.inbox_append(TELEMETRY, "mqtt", b"b1")
        a2 = await one.inbox_append(TELEMETRY, "mqtt", b"a2")
        assert [d for _, _, d in await one.inbox_after(0)] == [b"a1", b"a2"]
        assert [d for _, _, d in await two.inbox_after(0)] == [b"b1"]
        assert (await one.inbox_size(), await two.inbox_size()) == (2, 1)
        # Pruning past the other's numbers leaves the other's rows alone.
        assert await one.inbox_prune(max(a2, b1)) == 2
        assert [s for s, _, _ in await two.inbox_after(0)] == [b1]
        assert a1 < a2

        await one.write(mqtt._outbox_add, [("alerts/pm_agent", b"from one", 1.0)], "ingest-1")
        await two.write(mqtt._outbox_add, [("alerts/pm_agent", b"from two", 2.0)], "ingest-2")
        head = await one.read(mqtt._outbox_head, 10, "ingest-1")
        assert [p for _, _, p in head] == [b"from one"]
        assert await two.read(mqtt._outbox_size, "ingest-2") == 1
        assert await one.read(mqtt._outbox_size) == 0  # nothing of the single process's

    # A single-process store (instance "") sees neither.
    async with Store(database) as single:
        assert await single.inbox_after(0) == []


async def test_agent_checkpoints_are_named_per_instance_only_on_ingest(tmp_path: Path) -> None:
    settings = role_settings(tmp_path, "all")

    def name(instance: str) -> str:
        ctx = AgentContext(
            hub=Hub(),
            store=Store(sqlite_url(tmp_path / "x.db"), instance),
            inference=Inference(1),
            models_dir=settings.models_dir,
        )
        return PmAgent(settings.agents.pm, ctx).checkpoint_name

    assert name("") == "agent:pm_agent"
    assert name("ingest-1") == "agent:pm_agent@ingest-1"
    ingest = role_settings(tmp_path, "ingest", FACTORY_INSTANCE_ID="ingest-1")
    assert Store.from_settings(ingest).instance == "ingest-1"
    assert Store.from_settings(role_settings(tmp_path, "control")).instance == ""
    # Unset, the id is the host and port: the MQTT client id follows it.
    unnamed = role_settings(tmp_path, "ingest", PORT="8123")
    assert unnamed.instance_id.endswith("-8123")
    assert build_app(unnamed).state.components.mqtt.client_id == (
        f"factory_mas-{unnamed.instance_id}"
    )


# ------------------------------------------------------------------ the compose file


def test_the_compose_file_runs_two_ingest_instances_and_one_control() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert services["emqx"]["image"].startswith("emqx/emqx:5")
    emqx_env = services["emqx"]["environment"]
    assert emqx_env["EMQX_MQTT__SHARED_SUBSCRIPTION_STRATEGY"] == "hash_topic"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert "pgdata" in compose["volumes"]

    factory = {n: s for n, s in services.items() if "factory_mas" in s.get("command", [])}
    roles = {n: s["command"][s["command"].index("--role") + 1] for n, s in factory.items()}
    assert sorted(roles.values()) == ["control", "ingest", "ingest"]
    ids = set()
    for service in factory.values():
        assert service["command"][:4] == ["python", "-m", "factory_mas", "serve"]
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        env = service["environment"]
        url = env["DATABASE_URL"]
        assert url.startswith("postgresql://") and "@postgres:5432/" in url
        assert env["MQTT_BROKER"] == "emqx"
        ids.add(env["FACTORY_INSTANCE_ID"])
        assert "/health" in " ".join(service["healthcheck"]["test"])
        assert {"postgres", "emqx"} <= set(service["depends_on"])
        # Every instance of one role must read the same settings: the shared group too.
        load_settings(path=REPO / "settings.toml", env={k: str(v) for k, v in env.items()})
    assert len(ids) == 3, "each instance needs its own FACTORY_INSTANCE_ID"
    (control,) = [n for n, r in roles.items() if r == "control"]
    for name, role in roles.items():
        if role == "ingest":
            # The control instance migrates and makes the first admin key, alone.
            assert services[name]["depends_on"][control]["condition"] == "service_healthy"
    assert "8000:8000" in " ".join(services[control]["ports"])


# ------------------------------------------------------------------ the real thing


class RoleServer(Server):
    """tests.support.app's Server, started as `python -m factory_mas serve --role ROLE`."""

    def __init__(self, data_dir: Path, role: str, env: dict[str, str]) -> None:
        super().__init__(data_dir, env)
        self.role = role
        self.args = ("serve", "--role", role)

    def ready(self, health: dict) -> bool:
        # Ready, and subscribed at the broker (connected means subscribed).
        return bool(health.get("ready") and health["components"]["mqtt_connected"])

    def start(self, timeout_s: float = TIMEOUT_S) -> RoleServer:
        super().start(timeout_s)
        return self


@pytest.fixture
def role_servers(tmp_path: Path) -> Iterator[list[RoleServer]]:
    servers: list[RoleServer] = []
    yield servers
    for s in servers:
        if s.proc is not None and s.proc.poll() is None:
            s.stop(signal.SIGKILL)


def numbered(i: int, machines: int = 50) -> dict[str, Any]:
    """Record number i: a (machine_id, timestamp) pair no other number has."""
    ts = BASE_TS + timedelta(minutes=i // machines)
    return record(i % machines + 1, timestamp=ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def key(item: dict[str, Any]) -> tuple[int, datetime]:
    return int(item["machine_id"]), datetime.fromisoformat(
        item.get("record_ts") or item["timestamp"]
    )


@pytest.mark.integration
async def test_two_ingest_instances_score_each_record_once_and_the_control_alarms_once(
    broker, postgres_url: str, role_servers: list[RoleServer], tmp_path: Path
) -> None:
    common = {
        "DATABASE_URL": postgres_url,
        "MQTT_BROKER": broker.host,
        "MQTT_PORT": str(broker.port),
        "FACTORY_MQTT_RECONNECT_MIN_S": "0.1",
        "FACTORY_MQTT_RECONNECT_MAX_S": "0.5",
    }
    ingest_env = {
        **common,
        # Every prediction stored, so the control's stored history shows a duplicate.
        "FACTORY_HISTORY_SAMPLE_S": "0",
        "FACTORY_AGENTS_PM_CHECKPOINT_INTERVAL_S": "0.5",
    }
    plan = [
        ("ingest", {**ingest_env, "FACTORY_INSTANCE_ID": "ingest-1"}),
        ("ingest", {**ingest_env, "FACTORY_INSTANCE_ID": "ingest-2"}),
        (
            "control",
            {
                **common,
                "FACTORY_INSTANCE_ID": "control",
                # SCADA's live points come from the predictions the broker relays: Modbus
                # alone, on a free port, is enough to have them computed.
                "FACTORY_SCADA_ENABLED": "true",
                "FACTORY_SCADA_HOST": "127.0.0.1",
                "FACTORY_SCADA_OPCUA_ENABLED": "false",
                "FACTORY_SCADA_DNP3_ENABLED": "false",
                "FACTORY_SCADA_MODBUS_PORT": str(free_port()),
                "FACTORY_SCADA_UPDATE_INTERVAL_S": "0.1",
            },
        ),
    ]
    for n, (role, env) in enumerate(plan):
        role_servers.append(RoleServer(tmp_path / f"{role}-{n}" / "data", role, env))
    await asyncio.gather(*(asyncio.to_thread(s.start) for s in role_servers))

    # 10,000 records: 9,995 ordinary ones in JSON arrays on their machine's topic, in a
    # random order, and 5 hazards on machines nothing else reports, one record each:
    # exactly one instance scores each, so each must make exactly one alarm.
    hazards = [{**trigger_record(m), "timestamp": "2025-02-01T00:00:00Z"} for m in range(101, 106)]
    by_machine: dict[int, list[dict[str, Any]]] = {}
    for i in range(10_000 - len(hazards)):
        r = numbered(i)
        by_machine.setdefault(r["machine_id"], []).append(r)
    batches = [
        (f"{TELEMETRY}/{m}", rows[start : start + 20])
        for m, rows in by_machine.items()
        for start in range(0, len(rows), 20)
    ] + [(f"{TELEMETRY}/{h['machine_id']}", [h]) for h in hazards]
    random.Random(12).shuffle(batches)
    sent = [r for _, rows in batches for r in rows]
    assert len(sent) == len({key(r) for r in sent}) == 10_000
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic, rows in batches:
            await c.publish(topic, msgspec.json.encode(rows), qos=1)

    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in role_servers]
    try:
        *ingest_http, control_http = clients

        async def statuses() -> list[dict[str, Any]]:
            return [(await c.get("/status")).json() for c in ingest_http]

        def scored(status: dict[str, Any], agent: str) -> int:
            return status["agents"][agent]["counters"].get("predictions", 0)

        async def all_scored() -> bool:
            found = await statuses()
            return all(sum(scored(s, a) for s in found) >= 10_000 for a in TELEMETRY_AGENTS)

        await until(
            all_scored,
            "10,000 records scored between the two instances",
            timeout_s=TIMEOUT_S,
            interval_s=0.1,
        )

        # Every alert an agent raised (or every return to normal) becomes part of an alarm.
        async def alerts_sent() -> int:
            return sum(
                s["agents"][a]["counters"].get(k, 0)
                for s in await statuses()
                for a in TELEMETRY_AGENTS
                for k in ("alerts", "returns_to_normal")
            )

        async def alerts_in() -> bool:
            taken = (await control_http.get("/status")).json()["orchestrator"]
            return taken["alerts"] >= await alerts_sent()

        await until(
            alerts_in, "every alert at the control instance", timeout_s=TIMEOUT_S, interval_s=0.1
        )

        async def stored() -> list[dict[str, Any]]:
            got = await control_http.get("/api/pm/history", params={"limit": 10_000})
            assert got.status_code == 200, got.text
            return got.json()["predictions"]

        async def all_stored() -> bool:
            return len(await stored()) >= 10_000

        await until(
            all_stored,
            "10,000 pm predictions in the shared history",
            timeout_s=TIMEOUT_S,
            interval_s=0.1,
        )

        async def raw_history() -> list[dict[str, Any]]:
            got = await control_http.get("/api/telemetry", params={"limit": 100_000})
            return got.json()["records"]

        async def raw_stored() -> bool:
            return len(await raw_history()) >= 10_000

        await until(raw_stored, "10,000 raw records stored", timeout_s=TIMEOUT_S, interval_s=0.1)

        async def scada_points() -> dict[str, Any]:
            got = (await control_http.get("/api/scada/points")).json()["points"]
            values = {p["name"]: p["value"] for p in got}
            return values if values.get("machine_1.rul_hours") else {}

        points = await until(
            scada_points,
            "the control's SCADA points to show machine 1",
            timeout_s=TIMEOUT_S,
            interval_s=0.1,
        )
        await asyncio.sleep(0.5)  # a duplicate would still be on its way
        final = await statuses()
        control_status = (await control_http.get("/status")).json()
        history = await stored()
        raw = await raw_history()
        alarms = (
            await control_http.get("/api/orchestrator/alarms", params={"limit": 10_000})
        ).json()["alarms"]
        sent_alerts = await alerts_sent()
        control_health = (await control_http.get("/health")).json()
        refused = await control_http.post("/api/ingest", json=[record(1)])
        # Every role serves its metrics (zeros for what it does not run).
        scrapes = [await c.get("/metrics") for c in clients]
    finally:
        for c in clients:
            await c.aclose()

    # Each record scored exactly once, by one of the two.
    for agent in TELEMETRY_AGENTS:
        per_instance = [scored(s, agent) for s in final]
        assert sum(per_instance) == 10_000, (agent, per_instance)
        assert all(n > 0 for n in per_instance), (agent, per_instance)
    assert sum(s["ingest"]["accepted"].get("mqtt", 0) for s in final) == 10_000
    assert [s["instance_id"] for s in final] == ["ingest-1", "ingest-2"]
    assert [s["mqtt"]["client_id"] for s in final] == [
        "factory_mas-ingest-1",
        "factory_mas-ingest-2",
    ]
    assert all(s["mqtt"]["shared_group"] == DEFAULT_SHARED_GROUP for s in final)
    assert all(s["orchestrator"]["not_run_by_role"] == "ingest" for s in final)

    # The shared history: every record once, none twice, whichever instance wrote it.
    counts = Counter(key(p) for p in history)
    assert len(history) == 10_000
    assert set(counts) == {key(r) for r in sent}
    assert max(counts.values()) == 1
    # The raw telemetry too, stored by the instance that took each record.
    assert sorted(map(key, raw)) == sorted(map(key, sent))
    assert sum(s["telemetry"]["written"] for s in final) == 10_000

    # The control instance: every alert once (none lost, none doubled on the way) ...
    assert control_status["orchestrator"]["alerts"] == sent_alerts
    assert control_status["mqtt"]["received_alerts"] == sent_alerts
    assert control_status["mqtt"]["duplicate_alerts"] == 0
    assert control_status["mqtt"]["received_predictions"] > 0
    assert control_status["agents"] == {}
    assert control_status["ingest"]["not_run_by_role"] == "control"
    assert control_health["role"] == "control"
    assert control_health["components"]["orchestrator"] == "running"
    assert refused.status_code == 404
    assert points["machine_1.power_kw"] > 0
    assert [r.status_code for r in scrapes] == [200, 200, 200]
    assert 'factory_mas_agent_predictions_total{agent="pm_agent"}' in scrapes[0].text
    assert "factory_mas_orchestrator_alerts_total" in scrapes[2].text
    assert points["pm_agent.enabled"] is False  # the agents run on the ingest instances
    # ... one alarm per (source, type, machine) ...
    by_key = Counter((a["source"], a["type"], a["machine_id"], a["camera_id"]) for a in alarms)
    assert max(by_key.values()) == 1, [k for k, n in by_key.items() if n > 1]
    # ... and each hazard, scored once, is one alarm of one alert.
    for h in hazards:
        mine = [a for a in alarms if a["machine_id"] == h["machine_id"]]
        assert "safety_agent" in {a["source"] for a in mine}, mine
        assert all(a["count"] == 1 for a in mine), mine

    # In the database: journals and agent checkpoints per ingest instance, none shared,
    # and every outbox emptied (the control's alarms and decisions included).
    engine = sa.create_engine(database_url(postgres_url))

    def look() -> tuple[set[str], set[str], int]:
        with engine.connect() as conn:
            journals = {i for (i,) in conn.execute(sa.text("SELECT DISTINCT instance FROM inbox"))}
            names = {n for (n,) in conn.execute(sa.text("SELECT name FROM checkpoints"))}
            outbox = conn.execute(sa.text("SELECT count(*) FROM mqtt_outbox")).scalar() or 0
        return journals, names, outbox

    async def settled() -> tuple[set[str], set[str], int] | None:
        found = await asyncio.to_thread(look)
        checkpointed = {"agent:pm_agent@ingest-1", "agent:pm_agent@ingest-2"} <= found[1]
        return found if checkpointed and found[2] == 0 else None

    try:
        journals, names, _ = await until(
            settled, "checkpoints saved and outboxes empty", timeout_s=TIMEOUT_S, interval_s=0.1
        )
    finally:
        engine.dispose()
    assert journals == {"ingest-1", "ingest-2"}
    assert "agent:pm_agent" not in names
