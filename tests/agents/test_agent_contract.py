"""The PM agent against the agent contract (tests/support/agent_contract.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from factory_mas.agents.conditioning import Gate, gate_prediction
from factory_mas.agents.pm import logic
from factory_mas.agents.pm.agent import PmAgent
from factory_mas.levels import RANK
from factory_mas.messages import RETURN_TO_NORMAL, Alert
from factory_mas.settings import AgentSettings, Settings
from factory_mas.sim.synthetic import FactorySimulator
from tests.support.agent_contract import AgentContract, validated
from tests.support.hub import drain
from tests.support.records import record


def _pm_records(n: int, machine_id: int) -> list[dict]:
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    return [
        record(
            machine_id,
            timestamp=(start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            temperature_c=60.0 + (i % 7),
            vibration_hz=1.0 + 0.3 * (i % 5),
            maintenance_score=0.2 + 0.05 * (i % 4),
        )
        for i in range(n)
    ]


class TestPmAgent(AgentContract):
    agent_class = PmAgent

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        return settings.agents.pm

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        return _pm_records(n, machine_id)

    # -- what only pm_agent promises -----------------------------------------------------

    async def test_results_are_consistent_with_the_rules(self, agent):
        frame = FactorySimulator(seed=11, machines=20, step_minutes=30).run(40)
        records = validated(frame.records())
        predictions = await agent.process(records)
        t = agent.settings
        assert len(predictions) == len(records)
        last: dict[int, str] = {}
        for r, p in zip(records, predictions, strict=True):
            res = p.result
            assert 0.0 <= res["failure_probability_raw"] <= 1.0
            assert res["rul_hours_raw"] >= 0.0
            assert 0.0 <= res["failure_probability"] <= 1.0
            assert res["rul_hours"] >= 0.0
            assert 0.0 <= res["health_score"] <= 100.0
            assert 0.5 <= res["confidence"] <= 1.0
            in_maintenance = r.operation_mode == "Maintenance"
            # The result is rounded (4 places, 0.1 h); the level came from the exact values.
            fp, rul = res["failure_probability"], res["rul_hours"]
            # Hysteresis: the level also depends on the machine's previous one (a repair
            # starts its memory afresh).
            previous = None if in_maintenance else last.get(r.machine_id)
            possible = {
                logic.level_for(fp + dp, max(0.0, rul + dr), in_maintenance, t, previous)
                for dp in (-5e-5, 5e-5)
                for dr in (-0.05, 0.05)
            }
            assert p.level in possible
            last[r.machine_id] = p.level
            assert res["action"] == logic.action_for(p.level, in_maintenance)
            assert res["health_score"] == pytest.approx(logic.health_score(fp, rul, t), abs=0.2)
            assert res["confidence"] == pytest.approx(logic.confidence(fp), abs=2e-3)
        maintenance = [
            p
            for r, p in zip(records, predictions, strict=True)
            if r.operation_mode == "Maintenance"
        ]
        assert maintenance, "the simulator run should include machines under repair"
        assert {p.level for p in maintenance} == {"NORMAL"}

    async def test_alerts_follow_level_changes(self, agent, ctx):
        alerts_sub = ctx.hub.subscribe(agent.topic_alerts, name="test")
        # 150 h: the machines are new to the model, and each takes its first records (the
        # warm-up of its normal) as normal.
        frame = FactorySimulator(seed=11, machines=20, step_minutes=30).run(300)
        predictions = await agent.process(validated(frame.records()))

        expected: list[tuple[int, str]] = []
        # What the alarm gate makes of the predictions, with the agent's own delays.
        s = agent.settings
        gates: dict[int, Gate] = {}
        for p in predictions:
            gate = gates.setdefault(p.machine_id, Gate())
            in_band = RANK[p.level] >= RANK[s.alert_min_level]
            told = gate_prediction(gate, p, agent.make_alert(p).type if in_band else "", s)
            if told == "alert":
                expected.append((p.machine_id, p.level))
            elif told == "normal":
                expected.append((p.machine_id, "NORMAL"))  # return to normal
        raised = [e for e in expected if e[1] != "NORMAL"]
        assert raised, "300 ticks of 30 min over 20 machines should raise some alert"
        assert len(raised) < len(expected), "... and some machine should come back to normal"

        alerts = await drain(alerts_sub)
        assert [(a.machine_id, a.level) for a in alerts] == expected
        assert agent.counters["alerts"] == len(raised)
        assert agent.counters["returns_to_normal"] == len(expected) - len(raised)
        for a in alerts:
            assert isinstance(a, Alert)
            assert a.source == agent.agent_id
            assert a.type in ("IMMINENT_FAILURE", "LOW_RUL", RETURN_TO_NORMAL)
            assert f"Machine {a.machine_id}" in a.details
