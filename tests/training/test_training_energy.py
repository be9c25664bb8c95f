"""Training the energy models: repeatable to the byte, measured honestly, served faithfully.

Small runs (20 machines, 3000 minutes, 3 epochs) keep these tests to about half a minute;
the code path is the one `python -m factory_mas train` runs with the full sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn

from factory_mas.agents.energy.model import (
    AGENT_ID,
    FEATURES,
    EnergyModel,
    Scaling,
    anomaly_features,
    encode,
)
from factory_mas.ml.artifacts import MANIFEST, sha256_file
from factory_mas.ml.inference import LiteRtModel
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training.common import to_tflite
from factory_mas.training.energy import (
    WINDOW,
    fit_forecaster,
    gather,
    machine_series,
    sliding_windows,
    train_energy,
)

# Training fits real models (scikit-learn, TensorFlow): minutes, so it runs with the
# integration layer.
pytestmark = pytest.mark.integration

SMALL = {
    "ticks": 3000,
    "machines": 20,
    "max_train_windows": 8000,
    "epochs": 3,
    "max_iforest_rows": 8000,
}
FILES = {"forecaster", "iforest", "meta"}
METRICS = {
    "forecast_mae_kw",
    "naive_last_value_mae_kw",
    "forecast_mae_kw_all_readings",
    "naive_last_value_mae_kw_all_readings",
    "anomaly_roc_auc",
    "anomaly_precision",
    "anomaly_recall",
    "anomaly_precision_counting_electrical_hazards",
    "litert_vs_keras_max_abs_kw",
    "train_windows",
    "test_readings",
    "test_anomaly_readings",
}


def manifest_of(models_dir: Path) -> dict:
    return json.loads((models_dir / MANIFEST).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Two trainings with the same seed, one after the other in this process."""
    first = tmp_path_factory.mktemp("first")
    second = tmp_path_factory.mktemp("second")
    train_energy(first, **SMALL)
    train_energy(second, **SMALL)
    return first, second


def test_training_twice_writes_identical_bytes(trained):
    first, second = (manifest_of(d)["models"][AGENT_ID] for d in trained)
    assert set(first["files"]) == FILES
    for role, meta in first["files"].items():
        a, b = trained[0] / meta["path"], trained[1] / second["files"][role]["path"]
        assert sha256_file(a) == sha256_file(b), role
    assert first == second


def test_the_manifest_entry_describes_the_model(trained):
    models_dir = trained[0]
    entry = manifest_of(models_dir)["models"][AGENT_ID]
    assert entry["version"].startswith("energy-")
    assert entry["features"] == list(FEATURES)
    # TensorFlow made the .tflite and scikit-learn fitted the forest: loading must demand
    # neither version, only record them.
    assert "libraries" not in entry
    assert entry["training"]["scikit-learn"] == sklearn.__version__
    assert entry["training"]["tensorflow"]
    assert entry["training"]["window"] == WINDOW
    assert entry["training"]["held_out"] == "machines 17..20"
    for meta in entry["files"].values():
        path = models_dir / meta["path"]
        assert meta["sha256"] == sha256_file(path)
    assert sum((models_dir / m["path"]).stat().st_size for m in entry["files"].values()) < 2e6


def test_held_out_metrics(trained):
    m = manifest_of(trained[0])["models"][AGENT_ID]["metrics"]
    assert set(m) == METRICS
    assert m["train_windows"] == SMALL["max_train_windows"]
    assert m["test_readings"] == 4 * (SMALL["ticks"] - 1)
    assert m["test_anomaly_readings"] > 0, "the held-out machines should see an anomaly"
    # The LSTM beats forecasting the last reading on machines it never saw.
    assert m["forecast_mae_kw"] < 0.85 * m["naive_last_value_mae_kw"]
    assert m["forecast_mae_kw_all_readings"] < m["naive_last_value_mae_kw_all_readings"]
    assert m["anomaly_roc_auc"] > 0.95
    assert m["anomaly_recall"] > 0.5
    assert m["anomaly_precision_counting_electrical_hazards"] > 0.5
    assert m["litert_vs_keras_max_abs_kw"] < 1e-3


def test_the_trained_model_loads_and_judges_fresh_data(trained):
    model = EnergyModel.load(trained[0])
    assert model.version == manifest_of(trained[0])["models"][AGENT_ID]["version"]
    machines = 5
    cols = FactorySimulator(seed=8, machines=machines, step_minutes=1.0).run(600).columns
    series = machine_series(cols, machines)
    machine, tick = np.nonzero(np.ones((machines, 600), bool))
    history, mode, speed, power = gather(sliding_windows(series, WINDOW), machine, tick)
    forecast = model.forecast(history, mode, speed)
    assert forecast.shape == (machines * 600,)
    normal = ~(series["anomaly"] | series["electrical"])[machine, tick] & (tick >= WINDOW)
    assert np.abs(forecast - power)[normal].mean() < 0.4
    score = model.anomaly_score(power, forecast, forecast)
    assert ((score >= 0) & (score <= 1)).all()
    assert np.median(score[normal]) < 0.1


def test_litert_answers_what_keras_answers(tmp_path):
    machines = 4
    cols = FactorySimulator(seed=2, machines=machines, step_minutes=1.0).run(400).columns
    series = machine_series(cols, machines)
    machine, tick = np.nonzero(np.ones((machines, 400), bool))
    history, mode, speed, power = gather(sliding_windows(series, WINDOW), machine, tick)
    scaling = Scaling(
        window=WINDOW,
        power_mean_kw=5.0,
        power_std_kw=1.6,
        speed_mean=250.0,
        speed_std=135.0,
        baseline_alpha=0.02,
        baseline_step_kw=0.5,
        anomaly_threshold=0.7,
        anomaly_spread=0.05,
    )
    x = encode(history, mode, speed, scaling)
    y = ((power - 5.0) / 1.6).astype(np.float32)
    model = fit_forecaster(x, y, seed=3, window=WINDOW, units=16, epochs=1)
    path = tmp_path / "forecaster.tflite"
    path.write_bytes(to_tflite(model))
    served = LiteRtModel(path, "test")
    # Batch sizes off the power-of-two buckets too, and a single row.
    for rows in (x[:1], x[:37], x[:300], x):
        keras_out = model.predict(rows, verbose=0)
        litert_out = served.predict(rows)
        assert litert_out.shape == keras_out.shape
        np.testing.assert_allclose(litert_out, keras_out, rtol=0, atol=1e-4)
    assert np.isfinite(served.predict(x)).all()


def test_anomaly_features_are_residual_ratio_and_draw():
    f = anomaly_features(np.array([9.0, 0.2]), np.array([6.0, 2.0]), np.array([4.5, 0.1]))
    np.testing.assert_allclose(f, [[3.0, 2.0, 9.0], [-1.8, 0.4, 0.2]])


def test_importing_the_trainers_does_not_import_tensorflow():
    # `train --only pm_agent` must not pay for TensorFlow's import, nor need it installed.
    code = (
        "import sys, factory_mas.training; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
