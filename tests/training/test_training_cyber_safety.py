"""Training cyber_agent: repeatable, measured on held-out machines, useful.

Small runs keep these tests to seconds; the committed artifacts come from the same code
with the full sizes, and their recorded held-out metrics are checked too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sklearn

from factory_mas.agents.cyber.model import FEATURES as CYBER_FEATURES
from factory_mas.agents.cyber.model import CyberModel
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.sim.synthetic import SHIFTED_PLANTS, FactorySimulator
from factory_mas.training import TRAINERS
from factory_mas.training.cards import beats_baseline
from factory_mas.training.cyber import FAULTS, score_rows, train_cyber
from tests.support.paths import ARTIFACTS

# Training fits real models (scikit-learn, TensorFlow): minutes, so it runs with the
# integration layer.
pytestmark = pytest.mark.integration

SMALL_CYBER = {"ticks": 600, "trees": 30, "shifted_ticks": 200, "shifted_machines": 3}
FILES = ("cyber_model.npz",)
CYBER_METRICS = {
    "false_alarm_rate",
    "fault_recall",
    "attack_f1",
    "attack_recall",
    "shifted_false_alarm_rate",
    "train_rows",
    "test_rows",
    "test_attack_rows",
}


def entries(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))["models"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Both models trained twice with the same seed, into two folders."""
    folders = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for folder in folders:
        train_cyber(folder, **SMALL_CYBER)
    return folders


def test_both_trainers_are_registered():
    assert TRAINERS["cyber_agent"] is train_cyber


@pytest.mark.parametrize("name", FILES)
def test_training_twice_writes_identical_files(trained, name):
    first, second = trained
    assert sha256_file(first / name) == sha256_file(second / name)
    assert (first / name).stat().st_size < 3_000_000


def test_training_twice_gives_identical_entries(trained):
    first, second = (entries(folder) for folder in trained)
    assert first["cyber_agent"] == second["cyber_agent"]


def test_the_entries_describe_the_models(trained):
    found = entries(trained[0])
    cyber = found["cyber_agent"]
    assert cyber["version"].startswith("cyber-")
    assert cyber["features"] == list(CYBER_FEATURES)
    assert set(cyber["metrics"]) == CYBER_METRICS
    assert "libraries" not in cyber
    assert cyber["training"]["scikit-learn"] == sklearn.__version__
    assert cyber["training"]["seed"] == 1234
    assert cyber["training"]["ticks"] == 600
    assert cyber["training"]["held_out"] == "machines 41..50"
    assert cyber["metrics"]["test_attack_rows"] > 0


def test_a_small_run_already_catches_every_fault_kind_and_few_false_alarms(trained):
    cyber = entries(trained[0])["cyber_agent"]
    metrics = cyber["metrics"]
    assert set(metrics["fault_recall"]) == set(FAULTS)
    assert min(metrics["fault_recall"].values()) >= 0.9
    assert metrics["false_alarm_rate"] <= 0.01 and metrics["attack_recall"] > 0.9
    assert set(metrics["shifted_false_alarm_rate"]) == set(SHIFTED_PLANTS)
    baselines = {c["baseline"] for c in cyber["card"]["comparisons"]}
    assert "latency > 32 ms" in baselines
    assert beats_baseline(cyber["card"])


def test_the_committed_model_meets_the_targets_on_held_out_machines_and_shifted_plants():
    found = entries(ARTIFACTS)
    cyber = found["cyber_agent"]["metrics"]
    assert min(cyber["fault_recall"].values()) >= 0.9
    assert cyber["false_alarm_rate"] <= 0.01
    assert max(cyber["shifted_false_alarm_rate"].values()) <= 0.01
    assert beats_baseline(found["cyber_agent"]["card"])
    # ... and it loads: the manifest's hashes and feature lists match this code.
    assert CyberModel.load(ARTIFACTS).version == found["cyber_agent"]["version"]


def test_the_anomaly_score_is_calibrated_on_the_training_distribution(trained):
    model = CyberModel.load(trained[0])
    cols = FactorySimulator(seed=7, machines=50, step_minutes=1.0).run(600).columns
    scored = score_rows(model, cols)
    score, calm = scored.scores, ~cols["cyber_attack"]
    assert ((score >= 0) & (score <= 1)).all()
    # A typical record sits near the bottom; the threshold is the middle of the scale.
    assert np.median(score[calm]) < 0.05
    assert (scored.flagged == (score >= 0.5)).all()
    assert np.quantile(score[calm], 0.99) < 0.5 < np.quantile(score[~calm], 0.05)
    assert scored.zscores.shape == (len(score), len(CYBER_FEATURES))


def test_a_different_seed_gives_a_different_model(trained, tmp_path):
    train_cyber(tmp_path, seed=99, **SMALL_CYBER)
    assert sha256_file(tmp_path / FILES[0]) != sha256_file(trained[0] / FILES[0])
