"""`train`: seeded and repeatable, verified by the manifest, loadable by the agent.

Small runs (600 ticks, 8000 training rows) keep these tests to a few seconds; the code
path is the one `python -m factory_mas train` runs with the full sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sklearn

from factory_mas.agents.pm.model import AGENT_ID, FEATURES, PmModel, features
from factory_mas.artifacts import MANIFEST, sha256_file
from factory_mas.data.synthetic import FactorySimulator
from factory_mas.training.pm import train_pm

SMALL = {"ticks": 600, "max_train_rows": 8000}
METRICS = {
    "failure_roc_auc",
    "failure_average_precision",
    "failure_recall_at_0.5",
    "rul_mae_hours",
    "rul_mae_hours_last_week",
    "train_rows",
    "test_rows",
    "test_positive_rate",
}
# Another agent's entry, as a later trainer writes it; retraining pm must not lose it.
OTHER_ENTRY = {
    "version": "energy-0123456789",
    "files": {"forecaster": {"path": "energy_forecaster.tflite", "sha256": "ab" * 32}},
    "features": ["power_consumption_kw"],
    "metrics": {"mae_kw": 0.3},
    "libraries": {},
    "training": {"seed": 1},
}


def manifest_of(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Two trainings with the same seed into two folders; the second folder already holds
    a manifest with another agent's entry."""
    first = tmp_path_factory.mktemp("first")
    second = tmp_path_factory.mktemp("second")
    (second / MANIFEST).write_text(
        json.dumps({"format": 1, "models": {"energy_agent": OTHER_ENTRY}}), encoding="utf-8"
    )
    train_pm(first, **SMALL)
    train_pm(second, **SMALL)
    return first, second


def test_training_twice_writes_identical_files(trained):
    first, second = trained
    for name in ("pm_classifier.joblib", "pm_regressor.joblib"):
        assert (first / name).is_file() and (second / name).is_file()
        assert sha256_file(first / name) == sha256_file(second / name), name


def test_training_twice_gives_identical_entries(trained):
    first, second = (manifest_of(d)["models"][AGENT_ID] for d in trained)
    assert first["metrics"] == second["metrics"]
    assert first["version"] == second["version"]
    assert first["files"] == second["files"]


def test_the_manifest_entry_describes_the_model(trained):
    models_dir = trained[0]
    entry = manifest_of(models_dir)["models"][AGENT_ID]
    assert entry["version"].startswith("pm-")
    assert entry["features"] == list(FEATURES)
    assert set(entry["metrics"]) == METRICS
    assert entry["libraries"] == {"scikit-learn": sklearn.__version__}
    assert entry["training"]["seed"] == 1234
    assert entry["training"]["ticks"] == SMALL["ticks"]
    assert set(entry["files"]) == {"classifier", "regressor"}
    for meta in entry["files"].values():
        assert meta["sha256"] == sha256_file(models_dir / meta["path"])
    assert entry["metrics"]["train_rows"] == SMALL["max_train_rows"]
    assert entry["metrics"]["test_rows"] > 0
    # Even a small run learns the wear-out structure well on held-out machines.
    assert entry["metrics"]["failure_roc_auc"] > 0.85


def test_another_agents_entry_is_kept(trained):
    manifest = manifest_of(trained[1])
    assert manifest["format"] == 1
    assert manifest["models"]["energy_agent"] == OTHER_ENTRY
    assert set(manifest["models"]) == {"energy_agent", AGENT_ID}
    assert not (trained[1] / (MANIFEST + ".tmp")).exists()


def test_the_trained_model_loads_and_predicts(trained):
    models_dir = trained[0]
    model = PmModel.load(models_dir)
    assert model.version == manifest_of(models_dir)["models"][AGENT_ID]["version"]
    cols = FactorySimulator(seed=5, machines=10, step_minutes=5).run(20).columns
    probability, rul = model.predict(features(cols))
    assert probability.shape == rul.shape == (200,)
    assert ((probability >= 0) & (probability <= 1)).all()
    assert (rul >= 0).all()


def test_a_different_seed_gives_a_different_model(trained, tmp_path):
    train_pm(tmp_path, seed=99, **SMALL)
    other = manifest_of(tmp_path)["models"][AGENT_ID]
    same_seed = manifest_of(trained[0])["models"][AGENT_ID]
    assert other["version"] != same_seed["version"]
    assert other["files"]["classifier"]["sha256"] != same_seed["files"]["classifier"]["sha256"]
