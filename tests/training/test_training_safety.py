"""Training safety_agent: on the simulator (repeatable, carded, the committed model good on
held-out machines and shifted plants) and on a plant's own data, with incident labels or
without (limits only). Small runs keep these tests to seconds."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from factory_mas.agents.safety.model import CLASSES, FEATURES, SafetyModel
from factory_mas.errors import TrainingError
from factory_mas.labels.model import Label
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.settings import SafetySettings
from factory_mas.sim.synthetic import DEFAULT_PARAMS, FactorySimulator
from factory_mas.training import TRAINERS
from factory_mas.training.cards import beats_baseline
from factory_mas.training.plant import PlantData, PlantOptions
from factory_mas.training.safety import boosted_hazards, train_safety, train_safety_plant
from tests.support.paths import ARTIFACTS

pytestmark = pytest.mark.integration

SMALL = {"ticks": 600, "max_normal_rows": 6000, "shifted_ticks": 200}
SHIFTED = ("hot", "big", "small")


def entry_of(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))["models"]["safety_agent"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    folders = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for folder in folders:
        train_safety(folder, **SMALL)
    return folders


def test_the_trainer_is_registered():
    assert TRAINERS["safety_agent"] is train_safety


def test_training_twice_gives_identical_bytes_and_entries(trained):
    first, second = trained
    name = "safety_classifier.npz"
    assert sha256_file(first / name) == sha256_file(second / name)
    assert entry_of(first) == entry_of(second)


def test_the_entry_carries_its_card(trained):
    entry = entry_of(trained[0])
    assert entry["features"] == list(FEATURES)
    assert "maintenance_score" not in " ".join(entry["features"])
    assert entry["training"]["held_out"] == "machines 41..50"
    comparisons = entry["card"]["comparisons"]
    baselines = {(c["metric"], c["baseline"], c["gate"]) for c in comparisons}
    assert ("macro_f1", "3-split tree on raw readings", True) in baselines
    assert ("macro_f1", "physical limits alone", True) in baselines
    shifted = [c for c in comparisons if c["data"].startswith("shifted plant")]
    assert len(shifted) == 3 and not any(c["gate"] for c in shifted)
    metrics = entry["metrics"]
    assert metrics["macro_f1"] > 0.8 and metrics["false_alarm_rate"] < 0.005
    assert all(f"false_alarm_rate_{name}" in metrics for name in SHIFTED)


def test_the_committed_model_is_good_and_not_fooled_by_shifted_plants():
    entry = entry_of(ARTIFACTS)
    m = entry["metrics"]
    assert beats_baseline(entry["card"])
    assert m["macro_f1"] > 0.99 and m["accuracy"] > 0.99
    assert m["hazard_recall"] > 0.98 and m["false_alarm_rate"] < 0.001
    for name in SHIFTED:
        assert m[f"false_alarm_rate_{name}"] <= 0.01, name
    assert SafetyModel.load(ARTIFACTS).version == entry["version"]


def as_datetime(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(t.astype("datetime64[ms]").astype(np.int64) / 1000, UTC)


def small_plant(with_incidents: bool) -> tuple[PlantData, np.ndarray]:
    """Ten simulated machines as a plant's CSV would give them (no maintenance_score),
    their hazards, as a plant engineer would log them, as incident labels."""
    cols = (
        FactorySimulator(
            seed=11, machines=10, step_minutes=5.0, params=boosted_hazards(DEFAULT_PARAMS, 10)
        )
        .run(500)
        .columns
    )
    order = np.lexsort((cols["timestamp"], cols["machine_id"]))
    kinds = np.asarray(cols["hazard_type"]).astype(str)[order]
    keep = (
        *("timestamp", "machine_id", "operation_mode", "temperature_c", "vibration_hz"),
        *("power_consumption_kw", "defect_rate_pct", "production_speed"),
    )
    columns = {name: np.asarray(cols[name])[order] for name in keep}
    labels = []
    ids, times = columns["machine_id"], columns["timestamp"]
    for i in np.flatnonzero(kinds != "NONE"):
        # One label per episode: its first row opens it, the last closes it.
        if i > 0 and kinds[i - 1] == kinds[i] and ids[i - 1] == ids[i]:
            continue
        j = i
        while j + 1 < len(kinds) and kinds[j + 1] == kinds[i] and ids[j + 1] == ids[i]:
            j += 1
        labels.append(
            Label(
                kind="incident",
                machine_id=int(ids[i]),
                start=as_datetime(times[i]),
                end=as_datetime(times[j]),
                detail=str(kinds[i]),
            )
        )
    data = PlantData(
        columns, tuple(labels) if with_incidents else (), source="test plant (10 machines)"
    )
    return data, kinds


def test_a_plant_with_incident_labels_gets_its_own_classifier(tmp_path):
    data, kinds = small_plant(with_incidents=True)
    entry = train_safety_plant(data, tmp_path, PlantOptions())
    assert entry["training"]["source"] == "test plant (10 machines)"
    assert entry["training"]["held_out"].startswith("held-out machines")
    assert {c["baseline"] for c in entry["card"]["comparisons"]} >= {
        "3-split tree on raw readings",
        "physical limits alone",
    }
    model = SafetyModel.load(tmp_path)
    assert model.classifier is not None
    # It knows the plant's own machines, and names their hazards.
    assert (1, 0) in model.normals.known
    probabilities, _ = model.assess(data.columns, SafetySettings())
    named = np.asarray(CLASSES)[probabilities.argmax(axis=1)]
    hazards = kinds != "NONE"
    assert (named[hazards] == kinds[hazards]).mean() > 0.8
    assert (named[~hazards] == "NONE").mean() > 0.99


def test_a_plant_without_incident_labels_gets_the_limits_only(tmp_path):
    data, _ = small_plant(with_incidents=False)
    entry = train_safety_plant(data, tmp_path, PlantOptions())
    assert entry["files"] == {} and entry["card"]["limits_only"] is True
    model = SafetyModel.load(tmp_path)
    assert model.classifier is None
    hot = {k: v[:2].copy() for k, v in data.columns.items()}
    hot["temperature_c"][1] = 140.0
    probabilities, exceeded = model.assess(hot, SafetySettings())
    assert (probabilities[:, 0] == 1.0).all()
    assert exceeded[0] is None and exceeded[1] is not None and exceeded[1][0] == "FIRE_RISK"


def test_plant_data_without_a_needed_reading_is_refused_naming_it(tmp_path):
    data, _ = small_plant(with_incidents=True)
    columns = {k: v for k, v in data.columns.items() if k != "vibration_hz"}
    with pytest.raises(TrainingError, match="vibration_hz"):
        train_safety_plant(PlantData(columns, data.labels, "x"), tmp_path, PlantOptions())
