"""`python -m factory_mas train --csv`: a plant's CSV in, models and their cards out,
installed only whole, served by the app and picked up by hot reload."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from factory_mas.cli import main
from factory_mas.ml.artifacts import MANIFEST
from tests.support.paths import ARTIFACTS
from tests.support.records import record
from tests.training.test_plant_sources import plant_rows, write_csv


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture
def active(tmp_path) -> Path:
    """A models folder in service: a copy of the shipped artifacts."""
    models = tmp_path / "models"
    shutil.copytree(ARTIFACTS, models)
    return models


def test_a_bad_csv_is_rejected_naming_row_and_column_and_the_models_stay(tmp_path, active, capsys):
    rows = plant_rows()
    rows[4] = {**rows[4], "Power_Consumption_kW": "-3"}
    before = snapshot(active)
    bad = write_csv(tmp_path / "plant.csv", rows)
    assert main(["train", "--csv", str(bad), "--out", str(active)]) == 1
    err = capsys.readouterr().err
    assert "line 6, column Power_Consumption_kW" in err and "nothing was trained" in err
    assert snapshot(active) == before


def test_a_train_that_fails_leaves_the_active_models_byte_identical(tmp_path, active, capsys):
    before = snapshot(active)
    # Readings but no failure labels: pm has nothing to learn remaining life from, and the
    # safety model trained beside it must not be installed alone.
    csv_path = write_csv(tmp_path / "plant.csv", plant_rows())
    code = main(
        [
            "train",
            "--csv",
            str(csv_path),
            "--only",
            "safety_agent",
            "pm_agent",
            "--out",
            str(active),
        ]
    )
    assert code == 1
    assert "nothing installed" in capsys.readouterr().err
    assert snapshot(active) == before
    assert [p.name for p in tmp_path.iterdir() if "training" in p.name] == [], "staging removed"


def test_a_plant_train_installs_beside_the_other_agents_models(tmp_path, active, capsys):
    before = manifest_of(active)["models"]
    csv_path = write_csv(
        tmp_path / "plant.csv", plant_rows(), drop=("Predictive_Maintenance_Score",)
    )
    assert (
        main(["train", "--csv", str(csv_path), "--only", "safety_agent", "--out", str(active)]) == 0
    )
    out = capsys.readouterr().out
    assert "training on plant.csv" in out and "installed safety_agent" in out
    models = manifest_of(active)["models"]
    assert models["safety_agent"]["training"]["source"].startswith("plant.csv (")
    assert "card" in models["safety_agent"]
    assert {a: e for a, e in models.items() if a != "safety_agent"} == {
        a: e for a, e in before.items() if a != "safety_agent"
    }


def test_usage_mistakes_exit_2_before_anything_is_read(tmp_path, capsys):
    csv_path = tmp_path / "never-read.csv"
    assert main(["train", "--csv", str(csv_path), "--only", "ppe_agent"]) == 2
    assert "ppe_agent cannot be trained on telemetry" in capsys.readouterr().err
    assert main(["train", "--csv", str(csv_path), "--map", "Temp"]) == 2
    assert "--map 'Temp': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["train", "--csv", str(csv_path), "--target-alert-rate", "5"]) == 2
    assert "--target-alert-rate 5.0: a share between 0 and 1" in capsys.readouterr().err
    assert main(["train", "--map", "Temp=temperature_c"]) == 2
    assert "--map applies to training on plant data" in capsys.readouterr().err
    assert main(["train", "--images", str(tmp_path)]) == 2
    assert "--images needs --labels" in capsys.readouterr().err


@pytest.mark.integration
def test_a_model_trained_on_a_plant_csv_is_served_and_a_retrain_hot_reloaded(
    tmp_path, server_factory, capsys
):
    models = tmp_path / "plant-models"
    csv_path = write_csv(tmp_path / "plant.csv", plant_rows(machines=5, ticks=1200))
    agents = ["cyber_agent", "safety_agent"]
    argv = ["train", "--csv", str(csv_path), "--only", *agents, "--out", str(models), "--force"]
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "cyber_agent: " in printed and " vs " in printed, "the card is printed"
    first = manifest_of(models)["models"]
    assert set(first) == set(agents)
    assert all("comparisons" in first[a]["card"] for a in agents)

    # Only the plant's models are in this folder: the others come from the packaged ones
    # through a copy, as an engineer would combine them.
    served = tmp_path / "served"
    shutil.copytree(ARTIFACTS, served)
    assert main([*argv[:-3], "--out", str(served), "--force"]) == 0
    trained = manifest_of(served)["models"]["cyber_agent"]["version"]
    server = server_factory({"FACTORY_MODELS_DIR": str(served)})
    assert server.get("/api/cyber/health").json()["model_version"] == trained
    scored = server.post("/api/cyber/predict", record(2))
    assert scored.status_code == 200 and scored.json()["model_version"] == trained

    assert main([*argv[:-3], "--out", str(served), "--force", "--seed", "99"]) == 0
    retrained = manifest_of(served)["models"]["cyber_agent"]["version"]
    assert retrained != trained
    answer = server.post("/api/cyber/reload")
    assert answer.status_code == 200, answer.text
    assert answer.json()["model_version"] == retrained
