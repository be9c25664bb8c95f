"""`train --csv ... --only energy_agent`: the power models learnt from a plant's own readings,
machines of very different sizes each against their own normal, served by the app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from factory_mas.cli import main
from factory_mas.errors import TrainingError
from factory_mas.ml.artifacts import MANIFEST
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training.energy import recent, train_energy_plant
from factory_mas.training.plant import PlantData, PlantOptions
from tests.support.paths import ARTIFACTS
from tests.training.test_plant_sources import plant_rows, write_csv

# Machine 1 a big line, 2 as simulated, 3 a small pump: the plant's normals differ 25-fold.
SIZES = {1: 5.0, 2: 1.0, 3: 0.2}
FAST = ["--param", "epochs=20", "--param", "units=16"]
ENERGY = "energy_agent"


def sized(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        {**r, "Power_Consumption_kW": float(r["Power_Consumption_kW"]) * SIZES[r["Machine_ID"]]}
        for r in rows
    ]


def entry_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["models"][ENERGY]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.integration
def test_a_plant_csv_trains_a_model_that_is_served_in_each_machines_units(
    tmp_path, server_factory, capsys
):
    # A day of minutes per machine: fewer, and the LSTM learns too little of how the draw
    # follows the production speed to beat the machine's moving average (see the next test).
    csv_path = write_csv(tmp_path / "plant.csv", sized(plant_rows(machines=3, ticks=1500)))
    served = tmp_path / "served"
    shutil.copytree(ARTIFACTS, served)
    argv = ["train", "--csv", str(csv_path), "--only", ENERGY, *FAST, "--out", str(served)]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "energy_agent: forecast_mae_kw" in printed and "vs persistence" in printed
    assert "the model beats its baselines" in printed
    entry = entry_of(served)
    assert entry["training"]["source"].startswith("plant.csv (4,500 rows, 3 machines)")
    assert entry["training"]["held_out"] == "the last 20% of each machine's time"
    m = entry["metrics"]
    assert m["false_alarm_rate"] <= 0.01 and min(m["fault_recall"].values()) >= 0.9

    server = server_factory({"FACTORY_MODELS_DIR": str(served)})
    assert server.get("/api/energy/health").json()["model_version"] == entry["version"]
    # A new machine of the big line's size: once its normal is learnt it is forecast in
    # its own kW, and its normal readings raise no anomaly.
    cols = FactorySimulator(seed=11, machines=1).run(60).records()
    big = [{**r, "machine_id": 9, "power_consumption_kw": 5.0 * r["power_consumption_kw"]}
           for r in cols]  # fmt: skip
    answer = server.post("/api/energy/predict", big)
    assert answer.status_code == 200, answer.text
    results = [p["result"] for p in answer.json()["predictions"]]
    assert {p["model_version"] for p in answer.json()["predictions"]} == {entry["version"]}
    tail = results[30:]
    errors = [abs(r["forecast_kw"] - r["consumption_kw"]) for r in tail]
    assert np.mean(errors) < 0.1 * np.mean([r["consumption_kw"] for r in tail])
    assert not any(r["is_anomaly"] for r in results)


@pytest.mark.integration
def test_a_meter_without_modes_or_speed_trains_all_active_and_says_so(tmp_path, capsys):
    rows = sized(plant_rows(machines=3, ticks=400))
    csv_path = write_csv(
        tmp_path / "meter.csv",
        rows,
        drop=("Operation_Mode", "Production_Speed_units_per_hr"),
    )
    out = tmp_path / "models"
    argv = ["train", "--csv", str(csv_path), "--only", ENERGY, *FAST, "--out", str(out)]
    assert main([*argv, "--force"]) == 0, capsys.readouterr().err
    entry = entry_of(out)
    assert entry["training"]["stand_ins"] == [
        "no operation_mode: every reading taken as Active",
        "no production_speed: the forecaster does without it",
    ]
    meta = json.loads((out / "energy_meta.json").read_text(encoding="utf-8"))
    assert (meta["uses_modes"], meta["uses_speed"]) == (False, False)
    assert "comparisons" in entry["card"]


@pytest.mark.integration
def test_a_model_that_cannot_beat_persistence_is_refused_and_the_models_stay(tmp_path, capsys):
    # A meter that never changes: "same as last reading" is exact, nothing learnt beats it.
    rows = [{**r, "Power_Consumption_kW": 3.0} for r in plant_rows(machines=3, ticks=300)]
    csv_path = write_csv(tmp_path / "flat.csv", rows)
    active = tmp_path / "active"
    shutil.copytree(ARTIFACTS, active)
    before = snapshot(active)
    argv = ["train", "--csv", str(csv_path), "--only", ENERGY, "--param", "epochs=1"]
    assert main([*argv, "--out", str(active)]) == 1
    captured = capsys.readouterr()
    assert "NOT better" in captured.out
    assert "does not beat its baselines" in captured.err and "--force" in captured.err
    assert snapshot(active) == before


def test_plant_data_without_power_is_refused_naming_the_column(tmp_path):
    data = PlantData(
        {
            "machine_id": np.array([1, 1]),
            "timestamp": np.array(["2025-01-01T00:00", "2025-01-01T00:01"], "datetime64[ms]"),
        },
        source="meter.csv (2 rows, 1 machines)",
    )
    with pytest.raises(TrainingError, match=r"lacks power_consumption_kw.*meter\.csv"):
        train_energy_plant(data, tmp_path, PlantOptions())
    assert not any(tmp_path.iterdir()), "nothing written"


def test_a_long_history_is_cut_to_each_machines_latest_readings():
    ids = np.r_[np.full(100, 1), np.full(300, 2)]
    minutes = np.r_[np.arange(100), np.arange(300)]
    data = PlantData(
        {
            "machine_id": ids,
            "timestamp": np.datetime64("2025-01-01T00:00", "ms") + minutes * 60_000,
            "power_consumption_kw": minutes.astype(np.float64),
        }
    )
    cut = recent(data, 200)
    assert len(cut) == 200 and recent(data, 400) is data
    kept = cut.columns["power_consumption_kw"]
    # Each machine keeps its share, and its latest readings.
    assert kept[cut.columns["machine_id"] == 1].tolist() == list(range(50, 100))
    assert kept[cut.columns["machine_id"] == 2].tolist() == list(range(150, 300))
