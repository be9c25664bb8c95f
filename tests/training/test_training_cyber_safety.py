"""Training cyber_agent and safety_agent: repeatable, measured on held-out machines, useful.

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
from factory_mas.agents.cyber.model import CyberModel, LastReadings, epoch_seconds
from factory_mas.agents.cyber.model import features as cyber_features
from factory_mas.agents.safety.model import CLASSES, SafetyModel
from factory_mas.agents.safety.model import FEATURES as SAFETY_FEATURES
from factory_mas.agents.safety.model import features as safety_features
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training import TRAINERS
from factory_mas.training.cyber import best_f1_threshold, robust_spread, train_cyber
from factory_mas.training.safety import train_safety
from tests.support.paths import ARTIFACTS

# Training fits real models (scikit-learn, TensorFlow): minutes, so it runs with the
# integration layer.
pytestmark = pytest.mark.integration

SMALL_CYBER = {"ticks": 600}
SMALL_SAFETY = {"ticks": 600, "max_normal_rows": 6000}
FILES = ("cyber_model.npz", "safety_classifier.npz")
CYBER_METRICS = {
    "roc_auc",
    "average_precision",
    "precision",
    "recall",
    "false_alarm_rate",
    "train_rows",
    "test_rows",
    "test_attack_rows",
}
SAFETY_METRICS = {
    "accuracy",
    "macro_f1",
    "false_alarm_rate_at_0.5",
    "hazard_recall_at_0.5",
    "train_rows",
    "test_rows",
    *(f"{kind}_{c}" for c in CLASSES for kind in ("precision", "recall", "test_rows")),
}


def entries(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))["models"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Both models trained twice with the same seed, into two folders."""
    folders = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    for folder in folders:
        train_cyber(folder, **SMALL_CYBER)
        train_safety(folder, **SMALL_SAFETY)
    return folders


def test_both_trainers_are_registered():
    assert TRAINERS["cyber_agent"] is train_cyber
    assert TRAINERS["safety_agent"] is train_safety


@pytest.mark.parametrize("name", FILES)
def test_training_twice_writes_identical_files(trained, name):
    first, second = trained
    assert sha256_file(first / name) == sha256_file(second / name)
    assert (first / name).stat().st_size < 3_000_000


def test_training_twice_gives_identical_entries(trained):
    first, second = (entries(folder) for folder in trained)
    for agent in ("cyber_agent", "safety_agent"):
        assert first[agent] == second[agent]


def test_the_entries_describe_the_models(trained):
    found = entries(trained[0])
    cyber, safety = found["cyber_agent"], found["safety_agent"]
    assert cyber["version"].startswith("cyber-") and safety["version"].startswith("safety-")
    assert cyber["features"] == list(CYBER_FEATURES)
    assert safety["features"] == list(SAFETY_FEATURES)
    assert set(cyber["metrics"]) == CYBER_METRICS
    assert set(safety["metrics"]) == SAFETY_METRICS
    for entry in (cyber, safety):
        assert "libraries" not in entry
        assert entry["training"]["scikit-learn"] == sklearn.__version__
        assert entry["training"]["seed"] == 1234
        assert entry["training"]["ticks"] == 600
        assert entry["training"]["held_out"] == "machines 41..50"
    assert cyber["metrics"]["test_attack_rows"] > 0
    assert all(safety["metrics"][f"test_rows_{c}"] > 0 for c in CLASSES)


def test_a_small_run_already_separates_attacks_and_hazards(trained):
    found = entries(trained[0])
    cyber, safety = found["cyber_agent"]["metrics"], found["safety_agent"]["metrics"]
    assert cyber["roc_auc"] > 0.99
    assert cyber["precision"] > 0.9 and cyber["recall"] > 0.9
    assert cyber["false_alarm_rate"] < 0.005
    assert safety["macro_f1"] > 0.9
    assert safety["false_alarm_rate_at_0.5"] < 0.005


def test_the_committed_models_are_good_on_held_out_machines():
    found = entries(ARTIFACTS)
    cyber, safety = found["cyber_agent"]["metrics"], found["safety_agent"]["metrics"]
    assert cyber["roc_auc"] > 0.99
    assert cyber["precision"] > 0.95 and cyber["recall"] > 0.95
    assert safety["macro_f1"] > 0.95 and safety["accuracy"] > 0.99
    for c in CLASSES:
        assert safety[f"recall_{c}"] > 0.95, c
    assert safety["hazard_recall_at_0.5"] > 0.98
    assert safety["false_alarm_rate_at_0.5"] < 0.001
    # ... and they load: the manifest's hashes and feature lists match this code.
    assert CyberModel.load(ARTIFACTS).version == found["cyber_agent"]["version"]
    assert SafetyModel.load(ARTIFACTS).version == found["safety_agent"]["version"]


def test_the_anomaly_score_is_calibrated_on_the_training_distribution(trained):
    model = CyberModel.load(trained[0])
    cols = FactorySimulator(seed=7, machines=50, step_minutes=1.0).run(600).columns
    x = cyber_features(LastReadings().add_deltas(cols, epoch_seconds(cols["timestamp"])))
    score, flagged, zscores = model.predict(x)
    calm = ~cols["cyber_attack"]
    assert ((score >= 0) & (score <= 1)).all()
    # A typical record sits near the bottom; the threshold is the middle of the scale.
    assert np.median(score[calm]) == pytest.approx(0.01, abs=0.01)
    assert (flagged == (score >= 0.5)).all()
    assert np.quantile(score[calm], 0.99) < 0.5 < np.quantile(score[~calm], 0.05)
    assert zscores.shape == x.shape
    assert np.median(np.abs(zscores[calm]), axis=0).max() < 1.5


def test_the_trained_hazard_classifier_gives_a_probability_per_class(trained):
    model = SafetyModel.load(trained[0])
    cols = FactorySimulator(seed=5, machines=10, step_minutes=5.0).run(20).columns
    probabilities = model.predict(safety_features(cols))
    assert probabilities.shape == (200, len(CLASSES))
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities[:, 0] > 0.5).mean() > 0.95, "NONE first, and most rows are calm"


def test_a_different_seed_gives_a_different_model(trained, tmp_path):
    train_cyber(tmp_path, seed=99, **SMALL_CYBER)
    assert sha256_file(tmp_path / FILES[0]) != sha256_file(trained[0] / FILES[0])


@pytest.mark.parametrize(
    ("raw", "attack", "threshold"),
    [
        # Separable: halfway between the calm and the attacked records.
        ([0.1, 0.2, 0.8, 0.9], [False, False, True, True], 0.5),
        # Overlapping: the cut with the best F1 (flag the top three, F1 0.8).
        ([0.1, 0.5, 0.6, 0.9], [False, True, False, True], 0.3),
        ([0.9, 0.1, 0.6, 0.5], [True, False, False, True], 0.3),
    ],
)
def test_best_f1_threshold(raw, attack, threshold):
    assert best_f1_threshold(np.array(raw), np.array(attack)) == pytest.approx(threshold)


def test_robust_spread_ignores_outliers_and_never_divides_by_zero():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0], [1000.0, 5.0]])
    median, scale = robust_spread(x)
    assert median.tolist() == [3.0, 5.0]
    assert scale[0] == pytest.approx(1.4826 * 1.0)
    assert 0 < scale[1] < 1e-5
