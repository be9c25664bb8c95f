"""pm_agent on a plant's own data: remaining life learnt from failure labels, the machines
that never failed (and the time after each machine's last failure) right-censored, not
thrown away; `train --csv FILE --labels FILE --only pm_agent` in, a served model out."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from factory_mas.agents.pm.model import AGENT_ID, FAILURE_HORIZON_HOURS, RUL_CAP_HOURS
from factory_mas.cli import main
from factory_mas.errors import TrainingError
from factory_mas.ingest.schema import CSV_HEADERS
from factory_mas.labels.csv import write_labels_csv
from factory_mas.labels.model import Label
from factory_mas.ml.artifacts import MANIFEST
from factory_mas.sim.synthetic import FactorySimulator, Frame, SimParams
from factory_mas.training.plant import PlantData, PlantOptions
from factory_mas.training.pm import plant_targets, rul_targets, targets_of, train_pm_plant
from factory_mas.training.sources import read_csv
from tests.support.paths import ARTIFACTS
from tests.support.records import record
from tests.training.test_plant_sources import write_csv

HEADER_OF = {field: header for header, field in CSV_HEADERS.items()}

# ------------------------------------------------------------------ targets (pure)


def test_rul_is_the_time_to_the_next_failure_and_censored_after_the_last():
    machine = np.asarray([1, 1, 1, 1, 1, 2, 2, 2])
    hours = np.asarray([0.0, 10.0, 20.0, 30.0, 40.0, 0.0, 50.0, 100.0])
    # Machine 1 fails at 25 h and is seen until 40 h; machine 2 never fails.
    rul, observed = rul_targets(machine, hours, {1: np.asarray([25.0])})
    np.testing.assert_allclose(rul, [25.0, 15.0, 5.0, 10.0, 0.0, 100.0, 50.0, 0.0])
    assert observed.tolist() == [True, True, True, False, False, False, False, False]


def test_a_maintenance_before_the_next_failure_censors_the_rows_before_it():
    machine = np.zeros(4, int)
    hours = np.asarray([0.0, 10.0, 20.0, 30.0])
    rul, observed = rul_targets(
        machine, hours, {0: np.asarray([35.0])}, stops={0: np.asarray([15.0])}
    )
    # Up to the maintenance at 15 h: at least 15 and 5 h; after it, 15 and 5 h to the failure.
    np.testing.assert_allclose(rul, [15.0, 5.0, 15.0, 5.0])
    assert observed.tolist() == [False, False, True, True]


def test_censored_rows_teach_what_their_bound_settles_and_no_more():
    rul = np.asarray([10.0, 500.0, 500.0, 30.0, 10.0, 300.0])
    observed = np.asarray([True, True, False, False, False, False])
    y = targets_of(rul, observed)
    np.testing.assert_allclose(y.rul, [10.0, RUL_CAP_HOURS, RUL_CAP_HOURS, 30.0, 10.0, 300.0])
    # Seen, seen, censored beyond the cap: the capped RUL is known; below the cap it is not.
    assert y.regress.tolist() == [True, True, True, False, False, False]
    # A bound beyond the horizon is a negative; one within it says nothing.
    assert FAILURE_HORIZON_HOURS < 30.0
    assert y.classify.tolist() == [True, True, True, True, False, True]
    assert y.fails.tolist() == [True, False, False, False, False, False]


# ------------------------------------------------------------------ a small plant


def as_datetime(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[ms]").astype(np.int64)) / 1000, UTC)


def small_plant(ticks: int = 1200) -> tuple[list[dict], list[Label]]:
    """Six machines every 5 minutes as a historian export has them (no maintenance_score):
    machines 3..6 wear out in 30-60 h and are repaired, 1 and 2 never fail while watched.
    The failure labels: each time a machine went down for repair."""
    rows, labels = [], []
    plants = [
        (0, SimParams(life_min_h=5000.0, life_max_h=6000.0), 2),
        (2, SimParams(life_min_h=30.0, life_max_h=60.0), 4),
    ]
    for offset, params, machines in plants:
        frame = FactorySimulator(seed=3, machines=machines, step_minutes=5.0, params=params)
        cols = frame.run(ticks).columns
        cols["machine_id"] = cols["machine_id"] + offset
        for machine in np.unique(cols["machine_id"]).tolist():
            mine = np.flatnonzero(cols["machine_id"] == machine)
            down = np.asarray(cols["operation_mode"])[mine] == "Maintenance"
            for i in np.flatnonzero(down[1:] & ~down[:-1]) + 1:
                when = as_datetime(cols["timestamp"][mine[i]])
                labels.append(Label(kind="failure", machine_id=machine, start=when))
        for r in Frame(cols).records():
            rows.append({HEADER_OF[k]: v for k, v in r.items()})
    return rows, labels


def plant_data(tmp_path: Path, rows: list[dict], labels: list[Label]) -> PlantData:
    """The plant's CSV export as training reads it."""
    csv_path = write_csv(tmp_path / "plant.csv", rows, drop=("Predictive_Maintenance_Score",))
    return read_csv(csv_path, labels=labels)


def test_the_plants_targets_keep_the_machines_that_never_failed(tmp_path):
    rows, labels = small_plant(ticks=600)
    data = plant_data(tmp_path, rows, labels)
    y, in_service, observed = plant_targets(data)
    ids = data.columns["machine_id"]
    never = np.isin(ids, [1, 2])
    assert not observed[never].any(), "a machine that never failed is censored"
    # ... and it still teaches the classifier: "does not fail within a day" while the
    # rest of its watch is longer than that.
    assert y.classify[never].mean() > 0.5 and not y.fails[never].any()
    assert observed[~never].any() and y.fails[~never].any()
    modes = np.asarray(data.columns["operation_mode"])
    assert not in_service[modes == "Maintenance"].any()


def test_without_failure_labels_pm_says_what_to_give(tmp_path):
    rows, _ = small_plant(ticks=100)
    with pytest.raises(TrainingError, match=r"kind=failure.*docs/models\.md"):
        train_pm_plant(plant_data(tmp_path, rows, []), tmp_path, PlantOptions())


def test_a_plant_model_carries_its_card_and_its_censoring(tmp_path):
    rows, labels = small_plant()
    entry = train_pm_plant(plant_data(tmp_path, rows, labels), tmp_path / "models", PlantOptions())
    card = entry["card"]
    metrics = {c["metric"] for c in card["comparisons"]}
    assert metrics == {"failure_average_precision", "rul_mae_hours"}
    gating = [c for c in card["comparisons"] if c["gate"]]
    assert {c["baseline"] for c in gating} == {
        "logistic regression on the same features",
        "linear regression on the same features",
    }
    assert all(c["data"] == "held-out machines 6..6 (1)" for c in gating)
    assert card["failures"] == len(labels) and card["censored_rows"] > 0
    assert entry["features"][-2:] == ["maintenance_score", "maintenance_score_given"]
    assert entry["training"]["source"].startswith("plant.csv (")


# ------------------------------------------------------------------ the command, served


def write_plant(tmp_path: Path, labels: bool = True) -> list[str]:
    rows, failures = small_plant()
    csv_path = write_csv(tmp_path / "plant.csv", rows, drop=("Predictive_Maintenance_Score",))
    argv = ["train", "--csv", str(csv_path)]
    if labels:
        labels_path = tmp_path / "labels.csv"
        write_labels_csv(failures, labels_path)
        argv += ["--labels", str(labels_path)]
    return argv


def test_train_without_failure_labels_exits_naming_them(tmp_path, capsys):
    out = tmp_path / "models"
    assert main([*write_plant(tmp_path, labels=False), "--only", AGENT_ID, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "pm_agent needs failure events" in err and "--labels FILE" in err
    assert not (out / MANIFEST).exists()


@pytest.mark.integration
def test_a_pm_model_trained_on_a_plant_csv_is_served(tmp_path, server_factory, capsys):
    served = tmp_path / "served"
    shutil.copytree(ARTIFACTS, served)
    argv = [*write_plant(tmp_path), "--only", AGENT_ID, "--out", str(served), "--force"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "pm_agent: failure_average_precision" in printed
    assert "pm_agent: rul_mae_hours" in printed and "linear regression" in printed
    entry = json.loads((served / MANIFEST).read_text(encoding="utf-8"))["models"][AGENT_ID]
    assert entry["training"]["source"].startswith("plant.csv (")

    server = server_factory({"FACTORY_MODELS_DIR": str(served)})
    assert server.get("/api/pm/health").json()["model_version"] == entry["version"]
    # A plant's record, without maintenance_score: scored by the plant's model.
    plain = {k: v for k, v in record(4).items() if k != "maintenance_score"}
    scored = server.post("/api/pm/predict", plain)
    assert scored.status_code == 200, scored.text
    assert scored.json()["model_version"] == entry["version"]
    assert 0.0 <= scored.json()["result"]["failure_probability"] <= 1.0
