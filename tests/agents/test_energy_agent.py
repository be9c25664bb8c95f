"""energy_agent: the shared agent contract, then what only it promises, through the app.

The app runs with its real lifespan in the test's own event loop (`running_app`).
Starlette's TestClient would run the lifespan in a worker thread, where app.py cannot
install its SIGHUP handler (asyncio allows signal handlers only in the main thread).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from factory_mas.agents.checkpoint import Checkpoint
from factory_mas.agents.energy.agent import EnergyAgent
from factory_mas.agents.energy.model import MODE_CODE
from factory_mas.levels import RANK
from factory_mas.settings import AgentSettings, Settings
from factory_mas.sim.synthetic import FactorySimulator, Frame
from tests.support.agent_contract import AgentContract, interleave, validated
from tests.support.app import running_app
from tests.support.hub import drain
from tests.support.paths import REPO
from tests.support.records import record

RESULT_FIELDS = {
    "anomaly_score_raw",
    "consumption_kw",
    "forecast_kw",
    "baseline_kw",
    "anomaly_score",
    "is_anomaly",
    "efficiency_score",
    "recommendations",
}
WINDOW = 16
START = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)


def stamp(minute: int) -> str:
    return (START + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


def power_records(
    n: int,
    machine_id: int,
    mode: str = "Active",
    power_kw: float = 6.0,
    speed: float = 300.0,
    first_minute: int = 0,
) -> list[dict]:
    """A machine at a steady draw, a little different each minute."""
    return [
        record(
            machine_id,
            timestamp=stamp(first_minute + i),
            operation_mode=mode,
            power_consumption_kw=power_kw + 0.1 * ((i % 5) - 2),
            production_speed=speed + 4.0 * (i % 3),
        )
        for i in range(n)
    ]


def rows_of(columns: dict[str, np.ndarray], rows: np.ndarray) -> list[dict]:
    return Frame({name: values[rows] for name, values in columns.items()}).records()


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    return FactorySimulator(seed=3, machines=50, step_minutes=1.0).run(1500).columns


@dataclass(frozen=True)
class Episode:
    """One machine's records in time order: normal readings, then an injected anomaly."""

    machine_id: int
    records: list[dict]
    lead: int


@pytest.fixture(scope="module")
def episode(simulated) -> Episode:
    """The first simulated power anomaly of 10+ minutes with 30 normal minutes before it."""
    cols, lead = simulated, 30
    for machine in range(1, 51):
        rows = np.flatnonzero(cols["machine_id"] == machine)
        anomalous = cols["power_anomaly"][rows]
        event = anomalous | (cols["hazard_type"][rows] == "ELECTRICAL_HAZARD")
        starts = np.flatnonzero(anomalous[1:] & ~anomalous[:-1]) + 1
        for first in starts.tolist():
            end = first
            while end < len(rows) and anomalous[end]:
                end += 1
            if first >= lead and end - first >= 10 and not event[first - lead : first].any():
                return Episode(machine, rows_of(cols, rows[first - lead : end]), lead)
    raise AssertionError("the simulated day should hold a power anomaly with calm before it")


@pytest.fixture(scope="module")
def working_day(simulated) -> list[dict]:
    """Three hours of one machine switching modes, with no power event in them."""
    cols = simulated
    for machine in range(1, 51):
        rows = np.flatnonzero(cols["machine_id"] == machine)[:180]
        modes = cols["operation_mode"][rows]
        event = cols["power_anomaly"][rows] | (cols["hazard_type"][rows] == "ELECTRICAL_HAZARD")
        if (modes[1:] != modes[:-1]).sum() >= 3 and not event.any():
            return rows_of(cols, rows)
    raise AssertionError("some machine should change modes three times in three hours")


class TestEnergyAgent(AgentContract):
    agent_class = EnergyAgent

    @staticmethod
    def settings_of(settings: Settings) -> AgentSettings:
        return settings.agents.energy

    @staticmethod
    def make_records(n: int, machine_id: int) -> list[dict]:
        return power_records(n, machine_id)

    # -- what only energy_agent promises ----------------------------------------------

    async def test_a_batch_scores_as_its_records_one_by_one(self, agent, episode):
        # Two machines interleaved: each one's window must advance row by row in order.
        steady = power_records(len(episode.records), 2)
        batch = [r for pair in zip(episode.records, steady, strict=True) for r in pair]
        # The same records under other machine ids meet fresh per-machine memory.
        singles = [{**r, "machine_id": r["machine_id"] + 1000} for r in batch]
        together = await agent.process(validated(batch))
        alone = [(await agent.process(validated([r])))[0] for r in singles]
        assert [(p.level, p.result) for p in together] == [(p.level, p.result) for p in alone]
        assert any(p.result["is_anomaly"] for p in together)
        # Within the batch the machine's own earlier records shaped its later forecasts:
        # the same reading scored against an empty window is forecast differently.
        fresh = await agent.process(validated([{**batch[-2], "machine_id": 5000}]))
        assert fresh[0].result["forecast_kw"] != together[-2].result["forecast_kw"]

    async def test_a_corrupt_machine_state_starts_empty_and_scoring_goes_on(
        self, agent_settings, ctx
    ):
        probe = EnergyAgent(agent_settings, ctx)
        blob = msgspec.msgpack.encode(Checkpoint(state={"machines": {"1": "not a window"}}))
        await ctx.store.save_checkpoint(probe.checkpoint_name, blob)
        async with EnergyAgent(agent_settings, ctx) as agent:
            assert agent.memory == {}
            predictions = await agent.process(validated(power_records(2, 1)))
            assert len(predictions) == 2
            assert len(agent.memory[1].window) == 2

    async def test_a_big_and_a_small_machine_are_judged_against_their_own_normal(self, agent):
        def steady(machine_id: int, kw: float, n: int, first_minute: int = 0) -> list[dict]:
            return [
                record(machine_id, timestamp=stamp(first_minute + i),
                       power_consumption_kw=kw * (1 + 0.01 * ((i % 5) - 2)),
                       production_speed=300.0 + 4.0 * (i % 3))
                for i in range(n)
            ]  # fmt: skip

        big, small = steady(21, 30.0, 60), steady(22, 0.8, 60)
        calm = await agent.process(validated(interleave(big, small)))
        # Neither is in alarm for being five times the plant's usual draw, or a seventh.
        assert not any(p.result["is_anomaly"] for p in calm)
        for p in calm[-10:]:
            assert abs(p.result["forecast_kw"] - p.result["consumption_kw"]) < (
                0.05 * p.result["consumption_kw"]
            ), p.result
        # A surge of half its normal draw on the 0.8 kW pump is a third of a kW: caught.
        surge = [{**r, "power_consumption_kw": 1.2} for r in steady(22, 0.8, 4, 60)]
        flagged = await agent.process(validated(surge))
        assert any(p.result["is_anomaly"] for p in flagged)

    async def test_each_machines_normal_survives_a_model_reload(self, agent):
        records = power_records(50, 23, power_kw=30.0)
        await agent.process(validated(records[:30]))
        active = MODE_CODE["Active"]
        learnt = agent.live_normals()[active].known[23].n
        await agent.reload()
        after = await agent.process(validated(records[30:]))
        assert agent.live_normals()[active].known[23].n == learnt + 20
        assert not any(p.result["is_anomaly"] for p in after)
        assert all(abs(p.result["forecast_kw"] - 30.0) < 1.5 for p in after)

    # -- through the app --------------------------------------------------------------

    async def test_predict_returns_exactly_the_documented_fields(self, settings):
        async with running_app(settings) as (_, client):
            response = await client.post("/api/energy/predict", json=power_records(1, 7)[0])
        assert response.status_code == 200
        prediction = response.json()
        assert prediction["agent_id"] == "energy_agent" and prediction["machine_id"] == 7
        assert prediction["level"] == "NORMAL"
        r = prediction["result"]
        assert set(r) == RESULT_FIELDS
        assert r["consumption_kw"] == 5.8  # 6.0 - 0.2: the first of power_records
        # An empty window still gets a forecast: the one the mode and speed alone suggest.
        assert 3.0 < r["forecast_kw"] < 9.0
        # A mode seen for the first time has no baseline yet; the forecast stands in.
        assert r["baseline_kw"] == r["forecast_kw"]
        assert 0.0 <= r["anomaly_score"] <= 1.0 and r["is_anomaly"] is False
        assert 0.0 <= r["efficiency_score"] <= 100.0
        assert isinstance(r["recommendations"], list)

    async def test_the_forecast_tracks_a_machines_consumption(self, settings, working_day):
        async with running_app(settings) as (_, client):
            # One minute at a time, as a gateway posts them.
            results = []
            for raw in working_day:
                response = await client.post("/api/energy/predict", json=raw)
                results.append(response.json()["result"])
        consumption = np.array([r["consumption_kw"] for r in results])
        forecast = np.array([r["forecast_kw"] for r in results])
        full = slice(WINDOW, None)  # from the first reading with a full window before it
        mae = np.abs(forecast[full] - consumption[full]).mean()
        last_value = np.abs(consumption[WINDOW - 1 : -1] - consumption[full]).mean()
        spread = np.abs(consumption[full] - consumption[full].mean()).mean()
        assert mae < spread / 4, (mae, spread)
        assert mae < 0.75 * last_value, (mae, last_value)
        assert not any(r["is_anomaly"] for r in results)
        # The baseline is the machine's own level per mode, so it follows the mode changes.
        modes = [raw["operation_mode"] for raw in working_day]
        for mode in set(modes):
            mine = consumption[[m == mode for m in modes]]
            usual = [r["baseline_kw"] for r, m in zip(results, modes, strict=True) if m == mode]
            assert abs(usual[-1] - mine.mean()) < 0.5, mode

    async def test_an_injected_power_anomaly_is_flagged_and_alerted(self, settings, episode):
        async with running_app(settings) as (components, client):
            alerts = components.hub.subscribe("alerts/energy_agent", name="test")
            response = await client.post("/api/energy/predict", json=episode.records)
            published = await drain(alerts)
        assert response.status_code == 200
        predictions = response.json()["predictions"]
        calm, anomaly = predictions[: episode.lead], predictions[episode.lead :]
        assert not any(p["result"]["is_anomaly"] for p in calm)
        assert {p["level"] for p in calm} == {"NORMAL"}
        flagged = [p for p in anomaly if p["result"]["is_anomaly"]]
        # Scores are smoothed (an EWMA over about two records): caught within three.
        assert any(p in flagged for p in anomaly[:3])
        assert len(flagged) >= 0.8 * len(anomaly)
        assert all(RANK[p["level"]] >= RANK["WARNING"] for p in flagged)
        assert all(p["result"]["anomaly_score_raw"] >= 0.5 for p in anomaly[:2])
        first = flagged[0]["result"]
        assert first["consumption_kw"] > 1.4 * first["forecast_kw"]
        assert any("above forecast" in text for text in first["recommendations"])

        assert published, "an anomaly at WARNING or worse must raise an alert"
        assert {a.machine_id for a in published} == {episode.machine_id}
        assert {a.type for a in published} == {"POWER_ANOMALY"}
        assert published[0].level in {p["level"] for p in flagged}
        assert f"Machine {episode.machine_id} draws" in published[0].details

    async def test_an_idle_machine_drawing_its_active_level_is_told_so(self, settings):
        at_work = power_records(20, 9, "Active", 7.0, 300.0)
        resting = power_records(5, 9, "Idle", 2.8, 10.0, first_minute=20)
        left_on = [{**resting[-1], "timestamp": stamp(25), "power_consumption_kw": 6.8}]
        async with running_app(settings) as (_, client):
            response = await client.post("/api/energy/predict", json=at_work + resting + left_on)
        predictions = response.json()["predictions"]
        idle_hint = "Machine 9 is Idle but draws"
        assert not any(
            idle_hint in text for p in predictions[:-1] for text in p["result"]["recommendations"]
        )
        last = predictions[-1]
        hints = [text for text in last["result"]["recommendations"] if idle_hint in text]
        assert len(hints) == 1
        # The Active level is the machine's own: about the 7.0 kW it drew at work.
        assert re.fullmatch(
            r"Machine 9 is Idle but draws 6\.8 kW, close to its Active level of (6\.9|7\.0) kW: "
            r"check for equipment left running",
            hints[0],
        ), hints[0]
        assert RANK[last["level"]] >= RANK["CAUTION"]

    async def test_windows_survive_a_restart_through_the_checkpoint(self, settings, working_day):
        head, tail = working_day[:40], working_day[40:50]
        async with running_app(settings) as (_, client):
            await client.post("/api/energy/predict", json=head)
        async with running_app(settings) as (components, client):
            energy = next(a for a in components.agents if a.agent_id == "energy_agent")
            machine_id = head[0]["machine_id"]
            assert len(energy.memory[machine_id].window) == WINDOW
            restarted = (await client.post("/api/energy/predict", json=tail)).json()
            # The reference: the same readings under another id, never interrupted.
            again = [{**r, "machine_id": 4242} for r in head + tail]
            reference = (await client.post("/api/energy/predict", json=again)).json()
        assert [p["result"] for p in restarted["predictions"]] == [
            p["result"] for p in reference["predictions"][len(head) :]
        ]


@pytest.mark.integration
def test_serving_never_imports_tensorflow(tmp_path):
    script = textwrap.dedent(
        """
        import asyncio, json, sys

        import httpx

        from factory_mas.app import build_app
        from factory_mas.settings import load_settings

        settings = load_settings(path=sys.argv[1], env={
            "FACTORY_DATA_DIR": sys.argv[2], "FACTORY_REPLAY_ENABLED": "false",
            "FACTORY_SCADA_ENABLED": "false", "FACTORY_AUTH_ENABLED": "false"})
        body = json.loads(sys.argv[3])

        async def main():
            app = build_app(settings)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                    return await c.post("/api/energy/predict", json=body)

        response = asyncio.run(main())
        loaded = sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras"})
        print(json.dumps({"status": response.status_code, "body": response.json(),
                          "loaded": loaded}))
        """
    )
    body = json.dumps(power_records(3, 1))
    done = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "settings.toml"), str(tmp_path / "data"), body],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["status"] == 200
    assert [set(p["result"]) for p in out["body"]["predictions"]] == [RESULT_FIELDS] * 3
    assert out["loaded"] == []
