"""cyber_agent: the shared agent contract, then what only it promises, through the app.

The app runs with its real lifespan in the test's own event loop (`running_app`):
Starlette's TestClient would run it in a worker thread, where app.py cannot install its
SIGHUP handler (asyncio allows signal handlers only in the main thread).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest

from factory_mas.agents.checkpoint import Checkpoint
from factory_mas.agents.cyber import logic
from factory_mas.agents.cyber.agent import CyberAgent
from factory_mas.settings import AgentSettings, DataSettings, Settings
from factory_mas.sim.synthetic import FactorySimulator
from tests.support.agent_contract import AgentContract, validated
from tests.support.app import running_app, without_off_delay
from tests.support.hub import drain
from tests.support.records import record
from tests.support.scenarios import Episode, attack_episode, one_machine

RESULT_FIELDS = {
    "anomaly_score_raw",
    "anomaly_score",
    "is_anomaly",
    "threat_level",
    "consecutive_anomalies",
    "indicators",
}


def network_records(n: int, machine_id: int) -> list[dict]:
    """Ordinary traffic, a little different each minute."""
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    return [
        {
            **record(machine_id),
            "timestamp": (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            "network_latency_ms": 9.0 + (i % 5),
            "packet_loss_pct": 0.4 + 0.1 * (i % 3),
            "error_rate_pct": 1.5 + 0.2 * (i % 4),
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def episode() -> Episode:
    return attack_episode()


class TestCyberAgent(AgentContract):
    agent_class = CyberAgent

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        return settings.agents.cyber

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        return network_records(n, machine_id)

    # -- what only cyber_agent promises ------------------------------------------------

    async def test_a_batch_scores_as_its_records_one_by_one(self, agent, episode):
        # Two machines interleaved: each one's state must advance row by row in order.
        # Machines training never saw, as their twins below: all start from the prior.
        calm = network_records(8, 902)
        head, rest = episode.records[:8], episode.records[8:]
        batch = [r for pair in zip(head, calm, strict=True) for r in pair] + rest
        # The same records under other machine ids meet fresh per-machine state.
        singles = [{**r, "machine_id": r["machine_id"] + 1000} for r in batch]
        together = await agent.process(validated(batch))
        alone = [(await agent.process(validated([r])))[0] for r in singles]
        assert [(p.level, p.result) for p in together] == [(p.level, p.result) for p in alone]
        assert any(p.result["is_anomaly"] for p in together)

    async def test_a_corrupt_machine_state_starts_empty_and_scoring_goes_on(
        self, agent_settings, ctx
    ):
        probe = CyberAgent(agent_settings, ctx)
        blob = msgspec.msgpack.encode(Checkpoint(state={"readings": "not rows", "runs": 5}))
        await ctx.store.save_checkpoint(probe.checkpoint_name, blob)
        async with CyberAgent(agent_settings, ctx) as agent:
            assert agent.readings.known == {} and agent.runs == {}
            predictions = await agent.process(validated(network_records(2, 1)))
            assert [p.result["consecutive_anomalies"] for p in predictions] == [0, 0]


async def post(client: httpx.AsyncClient, body: object) -> dict:
    response = await client.post("/api/cyber/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_predict_answers_with_exactly_the_documented_fields(settings):
    async with running_app(settings) as (_, client):
        prediction = await post(client, network_records(1, 4)[0])
    assert prediction["agent_id"] == "cyber_agent" and prediction["machine_id"] == 4
    result = prediction["result"]
    assert set(result) == RESULT_FIELDS
    assert 0.0 <= result["anomaly_score"] <= 1.0
    assert result["is_anomaly"] is False
    assert result["threat_level"] == "LOW" and prediction["level"] == "NORMAL"
    assert result["consecutive_anomalies"] == 0
    assert result["indicators"] == []


async def test_history_and_status_routes_show_what_was_scored(settings):
    async with running_app(settings) as (_, client):
        body = network_records(3, 1) + network_records(2, 2)
        assert len((await post(client, body))["predictions"]) == 5
        history = (await client.get("/api/cyber/history", params={"machine_id": 1})).json()
        status = (await client.get("/api/cyber/status")).json()
        whole = (await client.get("/status")).json()
        health = (await client.get("/health")).json()
    assert history["agent_id"] == "cyber_agent" and history["count"] == 3
    stamps = [p["record_ts"] for p in history["predictions"]]
    assert stamps == sorted(stamps, reverse=True)
    assert status["counters"]["predictions"] == 5 and status["machines"]["count"] == 2
    assert status["settings"]["high_after_anomalies"] == 3
    assert whole["agents"]["cyber_agent"]["counters"]["predictions"] == 5
    assert health["components"]["agents"]["cyber_agent"] == "running"


async def test_a_simulated_attack_is_detected_escalates_and_raises_alerts(settings, episode):
    # The return to normal at the first calm record: the off-delay has its own tests.
    settings = without_off_delay(settings, "cyber")
    async with running_app(settings) as (components, client):
        alerts = components.hub.subscribe("alerts/cyber_agent", name="test")
        # One record at a time, as a gateway streams them.
        predictions = [await post(client, raw) for raw in episode.records]
        raised = await drain(alerts)
    results = [p["result"] for p in predictions]
    during = [r for r, attacked in zip(results, episode.attack, strict=True) if attacked]
    calm_before = results[: episode.lead]

    assert not any(r["is_anomaly"] for r in calm_before)
    assert sum(r["is_anomaly"] for r in during) >= 0.9 * len(during)
    run = 0
    for r, p in zip(results, predictions, strict=True):
        run = logic.next_run(run, r["is_anomaly"])
        assert r["consecutive_anomalies"] == run
        assert r["threat_level"] == logic.threat_level(run, settings.agents.cyber)
        assert p["level"] == logic.level_for(r["threat_level"], settings.agents.cyber)
    threats = [r["threat_level"] for r in during]
    assert threats[:3] == ["MEDIUM", "MEDIUM", "HIGH"]
    assert threats[9] == "CRITICAL"
    assert predictions[-1]["level"] == "NORMAL", "calm again after the attack"
    # The attack drives latency and packet loss far up; both are named as indicators.
    named = {i["feature"] for i in during[5]["indicators"]}
    assert {"network_latency_ms", "packet_loss_pct"} <= named

    # ... and when the attack is over, a return to normal clears the alarm.
    assert [a.level for a in raised] == ["WARNING", "CRITICAL", "NORMAL"]
    back = raised.pop()
    assert back.type == "RETURN_TO_NORMAL" and back.machine_id == predictions[0]["machine_id"]
    machine = predictions[0]["machine_id"]
    for alert in raised:
        assert alert.type in ("DDOS_RISK", "NETWORK_DEGRADATION")
        assert alert.source == "cyber_agent" and alert.machine_id == machine
        assert alert.details.startswith(f"Machine {machine}: abnormal network traffic")
    assert raised[0].type == "DDOS_RISK"


async def test_normal_traffic_is_mostly_normal(settings):
    cols = FactorySimulator(seed=8, machines=50, step_minutes=1.0).run(60).columns
    # Another seed is another plant: its machine 14 is not the one whose normal the model
    # learnt, so its machines come under ids of their own and learn their normals.
    cols["machine_id"] = cols["machine_id"] + 1000
    calm = np.flatnonzero(~cols["cyber_attack"])
    async with running_app(settings) as (_, client):
        body = await post(client, one_machine(cols, calm))
    levels = [p["level"] for p in body["predictions"]]
    assert len(levels) > 2500
    assert levels.count("NORMAL") / len(levels) > 0.99
    assert levels.count("WARNING") + levels.count("CRITICAL") == 0


async def test_machine_state_survives_a_restart_through_the_checkpoint(
    settings, episode, tmp_path: Path
):
    cut = episode.lead + 5  # five records into the attack
    async with running_app(settings) as (_, client):
        for raw in episode.records[:cut]:
            await post(client, raw)
    async with running_app(settings) as (components, client):
        agent = next(a for a in components.agents if a.agent_id == "cyber_agent")
        assert agent.runs == {episode.records[0]["machine_id"]: 5}
        resumed = [await post(client, raw) for raw in episode.records[cut : cut + 3]]

    # The same records without a restart, on a data folder of their own.
    fresh = msgspec.structs.replace(settings, data=DataSettings(dir=str(tmp_path / "fresh")))
    async with running_app(fresh) as (_, client):
        uninterrupted = [await post(client, raw) for raw in episode.records[: cut + 3]]
    assert [r["result"]["consecutive_anomalies"] for r in resumed] == [6, 7, 8]
    assert [r["result"] for r in resumed] == [r["result"] for r in uninterrupted[cut:]]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"network_latency_ms": -3}, "network_latency_ms"),
        ({"packet_loss_pct": 140}, "packet_loss_pct"),
        ({"error_rate_pct": "lots"}, "error_rate_pct"),
        ({"timestamp": "yesterday"}, "timestamp"),
    ],
)
async def test_a_bad_record_is_422_naming_the_field(settings, change, field):
    async with running_app(settings) as (_, client):
        response = await client.post(
            "/api/cyber/predict", json={**network_records(1, 1)[0], **change}
        )
        missing = {k: v for k, v in network_records(1, 1)[0].items() if k != field}
        absent = await client.post("/api/cyber/predict", json=missing)
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["detail"]
    if field != "timestamp":  # a record without a timestamp is stamped on arrival
        assert absent.status_code == 422 and absent.json()["field"] == field
