"""The agent registry: the five agents declared once, typed results that keep the wire as
it was, and a sixth agent that appears everywhere from one more registry entry."""

from __future__ import annotations

import importlib
import pkgutil
import typing
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
import pytest
from msgspec import Meta, field

import tests.agents
from factory_mas.agents.base import BaseAgent
from factory_mas.agents.points import MachineReading, Reading, ScadaPoints, Setting
from factory_mas.agents.ppe.agent import PpeAgent
from factory_mas.agents.ppe.frames import frames_of_payload
from factory_mas.agents.registry import AGENTS, AgentEntry
from factory_mas.agents.result import AgentResult
from factory_mas.bridges.scada.points import build_points
from factory_mas.errors import SettingsError
from factory_mas.messages import Alert, Prediction, TelemetryRecord
from factory_mas.settings import AgentSettings, AgentsSettings, Settings
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training import TRAINERS
from tests.support.agent_contract import AgentContract, validated
from tests.support.app import agent_context, running_app, with_scada
from tests.support.ppe import EQUIPPED, NO_HELMET, encode, render
from tests.support.records import record
from tests.support.waiting import until

# The keys of each agent's result, in wire order: what dashboards, MQTT subscribers and the
# stored history have always read. A result Struct must keep them, in this order.
WIRE_KEYS = {
    "pm_agent": ["failure_probability", "rul_hours", "failure_probability_raw",
                 "rul_hours_raw", "health_score", "confidence", "action"],
    "energy_agent": ["consumption_kw", "forecast_kw", "baseline_kw", "anomaly_score",
                     "anomaly_score_raw", "is_anomaly", "efficiency_score", "recommendations"],
    "cyber_agent": ["anomaly_score", "anomaly_score_raw", "is_anomaly", "threat_level",
                    "consecutive_anomalies", "indicators"],
    "safety_agent": ["hazard_score", "hazard_score_raw", "hazard_type", "safety_score",
                     "evacuation_required", "limit"],
    "ppe_agent": ["probabilities", "missing_items", "compliant", "raw_missing",
                  "person_present", "person_score"],
}  # fmt: skip


# -- the five agents -------------------------------------------------------------------


def test_the_registry_lists_the_five_agents_in_start_order():
    assert [e.agent_id for e in AGENTS] == list(WIRE_KEYS)
    assert len({e.slug for e in AGENTS}) == len(AGENTS)
    # The SCADA write path and the role table take the slug from the id.
    assert all(e.agent_id == f"{e.slug}_agent" for e in AGENTS)


def test_every_entry_has_its_settings_section_and_no_section_is_left_over():
    settings = Settings()
    assert set(AgentsSettings.__struct_fields__) == {e.slug for e in AGENTS}
    for entry in AGENTS:
        declared = typing.get_type_hints(entry.agent_type)["settings"]
        assert isinstance(entry.settings_of(settings), declared), entry.agent_id


def test_an_entry_without_a_settings_section_says_where_to_add_it():
    entry = AgentEntry(ToyAgent, ToyResult, TOY_POINTS)
    with pytest.raises(SettingsError, match=r"agents\.toy"):
        entry.settings_of(Settings())


def test_trainers_follow_the_registry():
    assert list(TRAINERS) == [e.agent_id for e in AGENTS]
    for entry in AGENTS:
        assert TRAINERS[entry.agent_id] is entry.load_trainer()


def test_each_machine_block_slot_is_taken_once():
    slots = [d.slot for e in AGENTS for d in e.points.machine]
    assert sorted(slots) == list(range(1, len(slots) + 1))


async def test_results_are_typed_and_keep_their_wire_form(settings):
    telemetry = validated(FactorySimulator(seed=3, machines=4, step_minutes=30).run(12).records())
    images = [encode(render(worn, seed), "JPEG") for seed, worn in enumerate([EQUIPPED, NO_HELMET])]
    async with agent_context(settings) as ctx:
        for entry in AGENTS:
            agent = entry.build(settings, ctx)
            agent.model = agent.load()
            items: Sequence[object] = telemetry
            if isinstance(agent, PpeAgent):
                items = [f for jpeg in images for f in frames_of_payload(jpeg, "cam", agent.limits)]
            predictions = agent.score(items)
            assert predictions, entry.agent_id
            for p in predictions:
                assert list(p.result) == WIRE_KEYS[entry.agent_id]
                typed = entry.result_type.of(p)
                assert isinstance(typed, entry.result_type)
                # The Struct and the dict are one JSON text: readers and the wire agree.
                assert msgspec.json.encode(typed) == msgspec.json.encode(p.result)
                again = msgspec.json.decode(msgspec.json.encode(p), type=Prediction)
                assert entry.result_type.of(again) == typed


def test_a_result_of_another_shape_reads_as_none():
    p = Prediction(
        agent_id="energy_agent",
        machine_id=1,
        record_ts=datetime(2025, 1, 1, tzinfo=UTC),
        produced_at=datetime(2025, 1, 1, tzinfo=UTC),
        model_version="old",
        level="NORMAL",
        result={"consumption_kw": 3.0},
    )
    energy = next(e for e in AGENTS if e.agent_id == "energy_agent")
    assert energy.result_type.of(p) is None


# -- a sixth agent -----------------------------------------------------------------------


class ToySettings(AgentSettings):
    hot_c: Annotated[float, Meta(ge=0, le=500)] = 80.0


class ToyAgentsSettings(AgentsSettings):
    toy: ToySettings = field(default_factory=ToySettings)


class ToyResult(AgentResult):
    temperature_c: float
    hot: bool


class ToyModel:
    version = "toy-1"


class ToyAgent(BaseAgent):
    """Calls a machine hot from a temperature on: the least an agent can be."""

    agent_id = "toy_agent"
    slug = "toy"
    settings: ToySettings

    def load(self) -> ToyModel:
        return ToyModel()

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        now = datetime.now(UTC)
        out = []
        for r in records:
            hot = r.temperature_c >= self.settings.hot_c
            result = ToyResult(temperature_c=r.temperature_c, hot=hot)
            out.append(self.predicted(r, now, "WARNING" if hot else "NORMAL", result))
        return out

    def make_alert(self, prediction: Prediction) -> Alert:
        return Alert(
            source=self.agent_id,
            type="TOO_HOT",
            level=prediction.level,
            machine_id=prediction.machine_id,
            details=f"Machine {prediction.machine_id} is hot",
        )


TOY_POINTS: ScadaPoints[ToyResult] = ScadaPoints(
    folder="Toy",
    agent=(
        Reading(key="hottest_c", browse_name="HottestC", description="the hottest machine",
                type="Float", unit="C", scale=10, normal_range=(0.0, 200.0),
                value=lambda latest: max((r.temperature_c for r in latest.values()), default=0.0)),
        Setting(key="hot_c", description="hot from this temperature", unit="C", scale=10),
    ),
    machine=(
        MachineReading(slot=6, key="toy_temperature_c", browse_suffix="ToyTemperature",
                       description="temperature as the toy saw it", type="Float", unit="C",
                       scale=10, normal_range=(0.0, 200.0), value=lambda r: r.temperature_c),
    ),
)  # fmt: skip
WITH_TOY = (*AGENTS, AgentEntry(ToyAgent, ToyResult, TOY_POINTS))


class TestToyAgent(AgentContract):
    """The contract every agent meets holds for one that is nothing but its entry."""

    agent_class = ToyAgent

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        return ToySettings()

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
        return [
            record(machine_id, timestamp=(start + timedelta(minutes=i)).isoformat(),
                   temperature_c=60.0 + 30 * (i % 2))
            for i in range(n)
        ]  # fmt: skip


def test_every_telemetry_agent_runs_the_agent_contract():
    for module in pkgutil.iter_modules(tests.agents.__path__):
        importlib.import_module(f"tests.agents.{module.name}")
    covered = {c.agent_class for c in AgentContract.__subclasses__()}
    assert {e.agent_type for e in AGENTS if e.reads_telemetry} <= covered


def with_toy(settings: Settings) -> Settings:
    agents = {name: getattr(settings.agents, name) for name in AgentsSettings.__struct_fields__}
    return msgspec.structs.replace(
        with_scada(settings, writes_enabled=True), agents=ToyAgentsSettings(**agents)
    )


def test_a_sixth_agent_adds_its_block_and_moves_no_agent_point(settings):
    five = build_points(settings)
    six = build_points(with_toy(settings), WITH_TOY)
    names = {p.name for p in six}
    assert {"toy_agent.enabled", "toy_agent.hottest_c", "toy_agent.hot_c"} <= names
    assert {f"machine_{m}.toy_temperature_c" for m in settings.scada.machines} <= names
    hot_c = next(p for p in six if p.name == "toy_agent.hot_c")
    assert (hot_c.lo, hot_c.hi, hot_c.writable) == (0, 500, True)
    assert hot_c.opcua_path == "Objects/MultiAgentSystem/Toy/HotC"
    # The system points and the five agents' blocks keep every address; the new block
    # comes after them (the machine blocks, last in the table, make room for it).
    before = [p for p in five if not p.name.startswith("machine_")]
    assert six[: len(before)] == before


async def test_a_sixth_agent_gets_routes_points_and_metrics_from_its_entry(settings):
    async with running_app(with_toy(settings), registry=WITH_TOY) as (c, client):
        assert [a.agent_id for a in c.agents] == [*WIRE_KEYS, "toy_agent"]
        health = (await client.get("/api/toy/health")).json()
        assert health["status"] == "running" and health["model_version"] == "toy-1"
        hot = record(3, temperature_c=91.5)
        answer = await client.post("/api/toy/predict", json=hot)
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"] == {"temperature_c": 91.5, "hot": True}
        # The same record through the intake reaches the toy beside the five.
        assert (await client.post("/api/ingest", json=hot)).status_code == 202

        async def scada() -> dict[str, object]:
            points = (await client.get("/api/scada/points")).json()["points"]
            return {p["name"]: p["value"] for p in points}

        values = await until(
            lambda: _when(scada(), lambda v: v["machine_3.toy_temperature_c"] == 91.5),
            "the toy's machine point",
        )
        assert values["toy_agent.hottest_c"] == 91.5
        assert values["toy_agent.hot_c"] == 80.0
        assert values["toy_agent.enabled"] is True and values["toy_agent.level"] == 2
        assert values["machine_3.level"] >= 2
        assert values["machine_3.rul_hours"] > 0  # the five agents still fill theirs
        # A run-time setting of the toy, changed over HTTP, is what SCADA reads.
        changed = await client.post("/api/config/toy_agent", json={"set": {"hot_c": 95.0}})
        assert changed.status_code == 200, changed.text
        await until(lambda: _when(scada(), lambda v: v["toy_agent.hot_c"] == 95.0), "hot_c")
        metrics = (await client.get("/metrics")).text
        assert 'factory_mas_agent_predictions_total{agent="toy_agent"}' in metrics
        assert 'factory_mas_agent_running{agent="toy_agent"} 1.0' in metrics
        for slug in ("pm", "energy", "cyber", "safety", "ppe"):
            assert (await client.get(f"/api/{slug}/health")).json()["status"] == "running"


async def _when(values, accept):
    got = await values
    return got if accept(got) else None
