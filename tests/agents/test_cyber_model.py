"""cyber_agent's per-channel checks and plant training: a tiny model trained on a CSV made
here, its decisions, and the agent serving it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import numpy as np
import pytest

from factory_mas.agents.cyber import logic
from factory_mas.agents.cyber.model import READINGS, CyberModel
from factory_mas.errors import TrainingError
from factory_mas.training.cyber import score_rows, train_cyber_plant
from factory_mas.training.plant import PlantData, PlantOptions
from factory_mas.training.sources import read_csv
from tests.support.app import running_app
from tests.support.records import record
from tests.training.test_plant_sources import plant_rows, write_csv

START = np.datetime64("2025-03-01T06:00", "ms")
TINY = {"trees": 20}


@pytest.fixture(scope="module")
def plant_model(tmp_path_factory) -> Path:
    """A model trained on a small plant CSV, as `train --csv` would."""
    folder = tmp_path_factory.mktemp("cyber")
    data = read_csv(write_csv(folder / "plant.csv", plant_rows(machines=3, ticks=150)))
    entry = train_cyber_plant(data, folder / "models", PlantOptions(), **TINY)
    assert entry["card"]["comparisons"], "the plant run has a card"
    return folder / "models"


def traffic(machine: int, n: int, latency: float, rng: np.random.Generator) -> dict:
    """n minutes of one machine's ordinary traffic around `latency` ms."""
    return {
        "machine_id": np.full(n, machine, np.int64),
        "timestamp": START + np.arange(n) * np.timedelta64(60_000, "ms"),
        "network_latency_ms": latency + 4.0 * np.abs(rng.standard_normal(n)),
        "packet_loss_pct": 0.2 + 0.6 * np.abs(rng.standard_normal(n)),
        "error_rate_pct": 1.0 + 1.2 * np.abs(rng.standard_normal(n)),
    }


@pytest.mark.parametrize(
    ("channel", "value"),
    [("network_latency_ms", 500.0), ("packet_loss_pct", 100.0), ("error_rate_pct", 50.0)],
)
def test_one_failed_channel_alone_is_flagged_and_named(plant_model, channel, value):
    model = CyberModel.load(plant_model)
    cols = traffic(1, 60, 10.0, np.random.default_rng(3))
    cols[channel][-1] = value
    scored = score_rows(model, cols)
    assert scored.flagged[-1] and scored.by_channel[-1]
    assert scored.scores[-1] >= logic.ANOMALY_SCORE_THRESHOLD
    found = logic.indicators(READINGS, cols_row(cols, -1), scored.zscores[-1, :3], 3.5)
    assert [i["feature"] for i in found] == [channel]
    assert logic.alert_type(found) == "NETWORK_DEGRADATION"
    assert scored.flagged[:-1].mean() < 0.05, "the traffic before it was normal"


def cols_row(cols: dict, i: int) -> list[float]:
    return [float(cols[name][i]) for name in READINGS]


def test_a_flood_on_latency_and_loss_is_typed_ddos(plant_model):
    model = CyberModel.load(plant_model)
    cols = traffic(2, 60, 10.0, np.random.default_rng(4))
    cols["network_latency_ms"][-1] += 200.0
    cols["packet_loss_pct"][-1] += 20.0
    scored = score_rows(model, cols)
    found = logic.indicators(READINGS, cols_row(cols, -1), scored.zscores[-1, :3], 3.5)
    assert scored.flagged[-1] and logic.alert_type(found) == "DDOS_RISK"


def test_a_machine_whose_normal_latency_is_60_ms_settles_instead_of_staying_in_alarm(
    plant_model,
):
    model = CyberModel.load(plant_model)
    slow = traffic(77, 400, 60.0, np.random.default_rng(5))  # a machine training never saw
    scored = score_rows(model, slow)
    assert scored.flagged[:3].any(), "judged against the plant's 10 ms prior at first"
    assert scored.flagged[50:].mean() < 0.02
    # ... and still catches its own failure once it has learnt its normal.
    slow["network_latency_ms"][-1] = 400.0
    assert score_rows(model, slow).flagged[-1]


def test_a_flagged_reading_is_not_learnt_as_normal(plant_model):
    model = CyberModel.load(plant_model)
    normals = model.fresh_normals()
    cols = traffic(1, 60, 10.0, np.random.default_rng(6))
    x = np.column_stack([cols[n] for n in READINGS] + [np.zeros((60, 3))])
    model.score([1] * 60, x, normals)
    before = list(normals.normal_of(1).loc)
    x[:, 0] = 500.0
    assert model.score([1] * 60, x, normals).flagged.all(), "a long failure stays flagged"
    assert normals.normal_of(1).loc == before


async def test_the_plant_model_is_served_and_its_normals_survive_a_checkpoint(
    settings, plant_model
):
    served = msgspec.structs.replace(
        settings, models=msgspec.structs.replace(settings.models, dir=str(plant_model))
    )
    start = datetime(2025, 3, 1, 6, 0, tzinfo=UTC)
    rng = np.random.default_rng(7)
    body = [
        {
            **record(5),
            "timestamp": (start + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
            "network_latency_ms": round(9.0 + 4 * abs(rng.standard_normal()), 2),
            "packet_loss_pct": 0.5,
            "error_rate_pct": 100.0 if i == 39 else 1.5,
        }
        for i in range(40)
    ]
    async with running_app(served) as (components, client):
        response = await client.post("/api/cyber/predict", json=body)
        assert response.status_code == 200, response.text
        results = [p["result"] for p in response.json()["predictions"]]
        agent = next(a for a in components.agents if a.agent_id == "cyber_agent")
        saved = msgspec.json.decode(msgspec.json.encode(agent.export_state()))
        learnt = agent.live_normals().normal_of(5)
        agent.import_state(saved)
        assert agent.live_normals().normal_of(5) == learnt
    assert not any(r["is_anomaly"] for r in results[5:-1])
    assert results[-1]["is_anomaly"]
    assert results[-1]["indicators"][0]["feature"] == "error_rate_pct"


def plant(n: int, drop: str = "", bad_row: int | None = None) -> PlantData:
    cols = traffic(1, n, 10.0, np.random.default_rng(8))
    if bad_row is not None:
        cols["packet_loss_pct"][bad_row] = np.nan
    cols.pop(drop, None)
    return PlantData(cols, source="plant.csv")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (plant(400, drop="packet_loss_pct"), "lacks packet_loss_pct"),
        (plant(100), "at least 200"),
        (
            plant(400, bad_row=9),
            "packet_loss_pct is empty or not a number in 1 row(s) (first: row 10",
        ),
    ],
)
def test_data_that_cannot_train_it_is_refused_saying_why(tmp_path, data, message):
    with pytest.raises(TrainingError, match="cyber_agent") as caught:
        train_cyber_plant(data, tmp_path, PlantOptions(), **TINY)
    assert message in str(caught.value)
    assert not (tmp_path / "cyber_model.npz").exists()
