"""safety_agent: the shared agent contract, then what only it promises, through the app."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from msgspec.structs import replace as replace_struct

from factory_mas.agents.safety import logic
from factory_mas.agents.safety.agent import SafetyAgent
from factory_mas.levels import RANK
from factory_mas.settings import AgentSettings, Settings
from factory_mas.settings.agents import MachineLimits
from factory_mas.sim.synthetic import DEFAULT_PARAMS, FactorySimulator
from tests.support.agent_contract import AgentContract, validated
from tests.support.app import running_app
from tests.support.hub import drain
from tests.support.records import record
from tests.support.scenarios import one_machine

RESULT_FIELDS = {
    "hazard_score_raw",
    "hazard_score",
    "hazard_type",
    "safety_score",
    "evacuation_required",
    "limit",
}


def plant_records(n: int, machine_id: int) -> list[dict]:
    """An ordinary working machine, its readings a little different each minute."""
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    return [
        record(
            machine_id,
            timestamp=(start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            temperature_c=56.0 + (i % 7),
            vibration_hz=1.0 + 0.15 * (i % 5),
            power_consumption_kw=5.5 + 0.2 * (i % 3),
        )
        for i in range(n)
    ]


BOOSTED = replace(
    DEFAULT_PARAMS,
    fire_risk_rate_per_h=DEFAULT_PARAMS.fire_risk_rate_per_h * 10,
    mechanical_hazard_rate_per_h=DEFAULT_PARAMS.mechanical_hazard_rate_per_h * 10,
    electrical_hazard_rate_per_h=DEFAULT_PARAMS.electrical_hazard_rate_per_h * 10,
)


@pytest.fixture(scope="module")
def plant() -> dict[str, list[dict]]:
    """Simulated rows by hazard type. Hazards run ten times as often as by default, so a
    short run holds enough of each; the rows themselves look as they always do."""
    cols = FactorySimulator(seed=31, machines=20, step_minutes=5.0, params=BOOSTED).run(300).columns
    kinds = cols["hazard_type"]
    return {str(k): one_machine(cols, np.flatnonzero(kinds == k)) for k in np.unique(kinds)}


class TestSafetyAgent(AgentContract):
    agent_class = SafetyAgent

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        return settings.agents.safety

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        return plant_records(n, machine_id)

    # -- what only safety_agent promises -----------------------------------------------

    async def test_a_batch_scores_as_its_records_one_by_one(self, agent, plant):
        rows = [r for kind in sorted(plant) for r in plant[kind][:8]]
        # Each machine's normal and levels follow what is scored: both runs start alike.
        normals, memory = agent.export_state(), copy.deepcopy(agent.conditioner)
        together = await agent.process(validated(rows))
        agent.import_state(normals)
        agent.conditioner = memory
        alone = [(await agent.process(validated([r])))[0] for r in rows]
        assert [(p.level, p.result) for p in together] == [(p.level, p.result) for p in alone]
        assert {p.result["hazard_type"] for p in together} >= {"NONE", "FIRE_RISK"}


async def test_predict_answers_with_exactly_the_documented_fields(settings):
    async with running_app(settings) as (_, client):
        response = await client.post("/api/safety/predict", json=plant_records(1, 6)[0])
    assert response.status_code == 200
    prediction = response.json()
    assert prediction["agent_id"] == "safety_agent" and prediction["machine_id"] == 6
    result = prediction["result"]
    assert set(result) == RESULT_FIELDS
    assert result["hazard_type"] == "NONE" and prediction["level"] == "NORMAL"
    assert 0.0 <= result["hazard_score"] < 0.3
    assert result["safety_score"] == pytest.approx(100 * (1 - result["hazard_score"]), abs=0.06)
    assert result["evacuation_required"] is False
    assert result["limit"] == ""


@pytest.fixture(scope="module")
def stream() -> tuple[list[dict], np.ndarray]:
    """A short simulated run in time order, as the agent would see it, and each row's
    hazard: the machines' normals are learnt before and between their hazards."""
    cols = FactorySimulator(seed=31, machines=20, step_minutes=5.0, params=BOOSTED).run(300)
    kinds = np.asarray(cols.columns["hazard_type"]).astype(str)
    return one_machine(cols.columns, np.arange(len(kinds))), kinds


@pytest.mark.parametrize("kind", ["FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD"])
async def test_simulated_hazards_are_named_and_raised(settings, stream, kind):
    rows, kinds = stream
    async with running_app(settings) as (components, client):
        alerts = components.hub.subscribe("alerts/safety_agent", name="test")
        response = await client.post("/api/safety/predict", json=rows)
        raised = [a for a in await drain(alerts) if a.type == kind]
    predictions = [
        p for p, k in zip(response.json()["predictions"], kinds, strict=True) if k == kind
    ]
    assert len(predictions) >= 10
    named = [
        p
        for p in predictions
        if p["result"]["hazard_type"] == kind and RANK[p["level"]] >= RANK["WARNING"]
    ]
    assert len(named) >= 0.9 * len(predictions), Counter(
        p["result"]["hazard_type"] for p in predictions
    )
    for p in predictions:
        assert p["result"]["evacuation_required"] is (p["level"] == "EMERGENCY")
    evacuate = kind in settings.agents.safety.evacuate_for
    assert any(p["result"]["evacuation_required"] for p in predictions) is evacuate

    # An alert of this hazard for every machine that had one, as it entered the band.
    assert {a.machine_id for a in raised} >= {p["machine_id"] for p in named}
    for alert in raised:
        assert alert.source == "safety_agent"
        assert alert.details.startswith(f"Machine {alert.machine_id}: ")
        assert ("EVACUATE" in alert.details) is (alert.level == "EMERGENCY")


async def test_rows_without_a_hazard_are_mostly_normal(settings, plant):
    rows = plant["NONE"]
    async with running_app(settings) as (_, client):
        response = await client.post("/api/safety/predict", json=rows)
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows) > 5000
    levels = Counter(p["level"] for p in predictions)
    assert levels["NORMAL"] / len(rows) > 0.995, levels
    assert levels["EMERGENCY"] == 0
    for p in predictions:
        if p["level"] == "NORMAL":
            assert p["result"]["hazard_type"] == "NONE"


async def test_levels_follow_the_settings(settings, plant):
    t = settings.agents.safety
    async with running_app(settings) as (_, client):
        rows = plant["FIRE_RISK"][:5] + plant["NONE"][:5]
        predictions = (await client.post("/api/safety/predict", json=rows)).json()["predictions"]
    for p in predictions:
        r = p["result"]
        # The result is rounded to 4 places; the level came from the exact score.
        possible = {
            logic.level_for(r["hazard_score"] + d, r["hazard_type"], t) for d in (-5e-5, 5e-5)
        }
        assert p["level"] in possible


async def test_history_and_status_routes_show_what_was_scored(settings):
    async with running_app(settings) as (_, client):
        body = plant_records(2, 3) + plant_records(3, 4)
        assert (await client.post("/api/safety/predict", json=body)).status_code == 200
        history = (await client.get("/api/safety/history", params={"limit": 2})).json()
        status = (await client.get("/api/safety/status")).json()
    assert history["agent_id"] == "safety_agent" and history["count"] == 2
    assert [p["machine_id"] for p in history["predictions"]] == [4, 4]
    assert status["counters"]["predictions"] == 5 and status["machines"]["count"] == 2
    assert status["settings"]["evacuate_for"] == ["FIRE_RISK", "ELECTRICAL_HAZARD"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature_c": "hot"}, "temperature_c"),
        ({"vibration_hz": -1}, "vibration_hz"),
        ({"power_consumption_kw": 5e6}, "power_consumption_kw"),
        ({"operation_mode": "Burning"}, "operation_mode"),
    ],
)
async def test_a_bad_record_is_422_naming_the_field(settings, change, field):
    raw = plant_records(1, 1)[0]
    async with running_app(settings) as (_, client):
        response = await client.post("/api/safety/predict", json={**raw, **change})
        missing = {k: v for k, v in raw.items() if k != field}
        absent = await client.post("/api/safety/predict", json=missing)
    assert response.status_code == 422
    assert response.json()["field"] == field and field in response.json()["detail"]
    assert absent.status_code == 422 and absent.json()["field"] == field


async def test_a_limit_fires_on_one_reading_the_classifier_finds_ordinary(settings):
    """Machine 6 runs at 56..62 C; its engineer set 60 C as its limit."""
    own = {"6": MachineLimits(temperature_max_c=60.0)}
    limited = replace_section(settings, machine_limits=own)
    rows = plant_records(7, 6)  # 56, 57, ... 62 C
    async with running_app(limited) as (components, client):
        alerts = components.hub.subscribe("alerts/safety_agent", name="test")
        response = await client.post("/api/safety/predict", json=rows)
        raised = await drain(alerts)
    predictions = response.json()["predictions"]
    beyond = [p for p, r in zip(predictions, rows, strict=True) if r["temperature_c"] > 60]
    within = [p for p, r in zip(predictions, rows, strict=True) if r["temperature_c"] <= 60]
    assert len(beyond) == 2 and len(within) == 5
    for p in beyond:
        assert p["result"]["hazard_score_raw"] < 0.3, "the classifier alone sees nothing"
        assert p["result"]["hazard_type"] == "FIRE_RISK" and p["level"] == "CRITICAL"
        assert p["result"]["limit"].startswith("temperature_c 6")
    assert all(p["level"] == "NORMAL" and p["result"]["limit"] == "" for p in within)
    assert [a.type for a in raised] == ["FIRE_RISK"]
    assert "above its limit of 60 C" in raised[0].details


async def test_a_hot_machine_is_judged_against_its_own_normal(settings):
    """A furnace that always runs at 72..80 C, far above every simulated machine: once
    its normal is learnt (a few dozen readings) it is not a fire risk."""
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    rows = [
        record(
            9,
            timestamp=(start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            temperature_c=72.0 + (i * 7 % 9),
            vibration_hz=1.0 + 0.15 * (i % 5),
            power_consumption_kw=5.5 + 0.2 * (i % 3),
        )
        for i in range(300)
    ]
    async with running_app(settings) as (_, client):
        response = await client.post("/api/safety/predict", json=rows)
    levels = [p["level"] for p in response.json()["predictions"]]
    assert all(level == "NORMAL" for level in levels[60:]), Counter(levels[60:])


def replace_section(settings: Settings, **changes) -> Settings:
    agents = replace_struct(
        settings.agents, safety=replace_struct(settings.agents.safety, **changes)
    )
    return replace_struct(settings, agents=agents)
