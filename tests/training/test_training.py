"""`train`: seeded and repeatable, verified by the manifest, loadable by the agent.

Small runs (600 ticks, 8000 training rows) keep these tests to a few seconds; the code
path is the one `python -m factory_mas train` runs with the full sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
from sklearn.ensemble import IsolationForest, RandomForestClassifier, RandomForestRegressor

from factory_mas.agents.cyber.model import FEATURES as CYBER_FEATURES
from factory_mas.agents.cyber.model import CyberModel
from factory_mas.agents.pm.model import AGENT_ID, FEATURES, PmModel, features, readings
from factory_mas.errors import ArtifactError
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.ml.forest import ForestClassifier, ForestIsolation, ForestRegressor, read_forest
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training.pm import train_pm
from factory_mas.training.upgrade import upgrade

# Training fits real models (scikit-learn, TensorFlow): minutes, so it runs with the
# integration layer.
pytestmark = pytest.mark.integration

SMALL = {"ticks": 600, "max_train_rows": 8000, "shifted_machines": 20, "shifted_ticks": 600}
METRICS = {
    "failure_roc_auc",
    "failure_average_precision",
    "failure_recall_at_0.5",
    "rul_mae_hours",
    "rul_mae_hours_last_week",
    "train_rows",
    "test_rows",
    "test_positive_rate",
    "new_machines",
    "with_maintenance_score",
    "hot",
}
# Another agent's entry, as a later trainer writes it; retraining pm must not lose it.
OTHER_ENTRY = {
    "version": "energy-0123456789",
    "files": {"forecaster": {"path": "energy_forecaster.tflite", "sha256": "ab" * 32}},
    "features": ["power_consumption_kw"],
    "metrics": {"mae_kw": 0.3},
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
    for name in ("pm_classifier.npz", "pm_regressor.npz"):
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
    # The .npz files need no scikit-learn to serve: its version is a record only.
    assert "libraries" not in entry
    assert entry["training"]["scikit-learn"] == sklearn.__version__
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
    probability, rul, _ = model.assess(cols, model.fresh_normals())
    assert probability.shape == rul.shape == (200,)
    assert ((probability >= 0) & (probability <= 1)).all()
    assert (rul >= 0).all()


def test_a_different_seed_gives_a_different_model(trained, tmp_path):
    train_pm(tmp_path, seed=99, **SMALL)
    other = manifest_of(tmp_path)["models"][AGENT_ID]
    same_seed = manifest_of(trained[0])["models"][AGENT_ID]
    assert other["version"] != same_seed["version"]
    assert other["files"]["classifier"]["sha256"] != same_seed["files"]["classifier"]["sha256"]


# ------------------------------------------------------------------ upgrading old folders


def _pickled_folder(folder: Path, sklearn_version: str = sklearn.__version__) -> dict:
    """A models folder as releases before the compiled forests wrote it: joblib pickles
    (cyber's a bundle of forest and calibration) and entries demanding scikit-learn."""
    cols = FactorySimulator(seed=5, machines=10, step_minutes=5).run(100).columns
    x = features(readings(cols), cols["operation_mode"])
    fitted = {
        "pm_classifier": RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0).fit(
            x, (x[:, 0] > np.median(x[:, 0])).astype(int)
        ),
        "pm_regressor": RandomForestRegressor(n_estimators=5, max_depth=6, random_state=0).fit(
            x, x[:, 1]
        ),
        "cyber_model": {
            "forest": IsolationForest(n_estimators=10, random_state=0).fit(x[:, :6]),
            "raw_median": 0.4,
            "raw_threshold": 0.6,
            "median": np.arange(6.0),
            "scale": np.ones(6),
        },
    }
    for name, obj in fitted.items():
        joblib.dump(obj, folder / f"{name}.joblib", compress=3)

    def entry(agent: str, files: dict[str, str], features: list[str]) -> dict:
        return {
            "version": f"{agent}-0123456789",
            "files": {
                role: {"path": f"{name}.joblib", "sha256": sha256_file(folder / f"{name}.joblib")}
                for role, name in files.items()
            },
            "features": features,
            "metrics": {"roc_auc": 0.9},
            "libraries": {"scikit-learn": sklearn_version},
            "training": {"seed": 1},
        }

    manifest = {
        "format": 1,
        "models": {
            AGENT_ID: entry(
                "pm", {"classifier": "pm_classifier", "regressor": "pm_regressor"}, list(FEATURES)
            ),
            "cyber_agent": entry("cyber", {"model": "cyber_model"}, list(CYBER_FEATURES)),
            "energy_agent": OTHER_ENTRY,
        },
    }
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return {"x": x, **fitted}


def test_a_folder_of_pickles_is_upgraded_to_the_same_models(tmp_path):
    old = _pickled_folder(tmp_path)
    with pytest.raises(ArtifactError, match=r"factory_mas\.training\.upgrade"):
        PmModel.load(tmp_path)

    assert upgrade(tmp_path) == [AGENT_ID, "cyber_agent"]

    assert not list(tmp_path.glob("*.joblib")) and not list(tmp_path.glob("*.tmp"))
    entries = manifest_of(tmp_path)["models"]
    assert entries["energy_agent"] == OTHER_ENTRY
    for agent in (AGENT_ID, "cyber_agent"):
        entry = entries[agent]
        assert entry["version"].endswith("-0123456789")
        assert entry["metrics"] == {"roc_auc": 0.9}
        assert entry["training"] == {"seed": 1, "scikit-learn": sklearn.__version__}
        assert "libraries" not in entry
        assert {meta["path"][-4:] for meta in entry["files"].values()} == {".npz"}
    x = old["x"]
    # The forests are converted as they were; serving them needs the per-machine normals
    # today's pm model saves beside them, so it asks for a retrain.
    classifier, _ = read_forest(tmp_path / "pm_classifier.npz", ForestClassifier)
    regressor, _ = read_forest(tmp_path / "pm_regressor.npz", ForestRegressor)
    assert np.array_equal(classifier.predict_proba(x), old["pm_classifier"].predict_proba(x))
    assert np.array_equal(regressor.predict(x), old["pm_regressor"].predict(x))
    with pytest.raises(ArtifactError, match="factory_mas train"):
        PmModel.load(tmp_path)
    # The forest and its calibration are converted as they were; serving it needs the
    # per-channel normals today's cyber model saves beside them, so it asks for a retrain.
    bundle = old["cyber_model"]
    forest, extras = read_forest(
        tmp_path / "cyber_model.npz", ForestIsolation, ("raw_median", "raw_threshold", "median")
    )
    assert isinstance(forest, ForestIsolation)
    assert np.array_equal(forest.score_samples(x[:, :6]), bundle["forest"].score_samples(x[:, :6]))
    assert (float(extras["raw_median"]), float(extras["raw_threshold"])) == (0.4, 0.6)
    assert extras["median"].tolist() == list(range(6))
    with pytest.raises(ArtifactError, match="factory_mas train"):
        CyberModel.load(tmp_path)
    # Nothing left to convert the second time.
    assert upgrade(tmp_path) == []


def test_pickles_of_another_scikit_learn_are_left_alone(tmp_path):
    _pickled_folder(tmp_path, sklearn_version="1.2.2")
    before = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(ArtifactError, match=r"scikit-learn 1\.2\.2.*scikit-learn==1\.2\.\*"):
        upgrade(tmp_path)
    assert (tmp_path / MANIFEST).read_bytes() == before
    assert len(list(tmp_path.glob("*.joblib"))) == 3
