"""Train the predictive-maintenance models on simulated plant history.

The held-out split is by machine (the last fifth of the machine ids), so the metrics say
how the models do on machines they never saw, each with its own baseline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.metrics import average_precision_score, mean_absolute_error, roc_auc_score

from ..agents.pm.model import AGENT_ID, FAILURE_HORIZON_HOURS, FEATURES, RUL_CAP_HOURS, features
from ..sim.synthetic import FactorySimulator
from .common import ForestFile, Simulation, is_held_out, save_models
from .forests import compile_forest


def train_pm(
    out_dir: Path, seed: int = 1234, ticks: int = 4000, max_train_rows: int = 80_000
) -> dict[str, Any]:
    machines = 50
    frame = FactorySimulator(seed=seed, machines=machines, step_minutes=5.0).run(ticks)
    cols = frame.columns
    # Rows under repair carry no information about the coming failure.
    keep = cols["operation_mode"] != "Maintenance"
    x = features(cols)[keep]
    rul = cols["rul_hours"][keep]
    fails = (rul <= FAILURE_HORIZON_HOURS).astype(np.int8)
    held_out = is_held_out(cols["machine_id"][keep], machines)

    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(~held_out)
    if len(train_idx) > max_train_rows:
        train_idx = np.sort(rng.choice(train_idx, max_train_rows, replace=False))
    test_idx = np.flatnonzero(held_out)

    # Small forests on purpose: the artifacts are committed, and a few dozen shallow trees
    # score a batch of a thousand records in a few milliseconds.
    classifier = RandomForestClassifier(
        n_estimators=40, max_depth=10, min_samples_leaf=40, random_state=seed, n_jobs=1
    ).fit(x[train_idx], fails[train_idx])
    regressor = RandomForestRegressor(
        n_estimators=40, max_depth=10, min_samples_leaf=40, random_state=seed, n_jobs=1
    ).fit(x[train_idx], np.minimum(rul[train_idx], RUL_CAP_HOURS))

    p = classifier.predict_proba(x[test_idx])[:, 1]
    rul_pred = regressor.predict(x[test_idx])
    y, rul_true = fails[test_idx], np.minimum(rul[test_idx], RUL_CAP_HOURS)
    near = rul_true < 168
    metrics = {
        "failure_roc_auc": round(float(roc_auc_score(y, p)), 4),
        "failure_average_precision": round(float(average_precision_score(y, p)), 4),
        "failure_recall_at_0.5": round(float(((p >= 0.5) & (y == 1)).sum() / max(1, y.sum())), 4),
        "rul_mae_hours": round(float(mean_absolute_error(rul_true, rul_pred)), 2),
        "rul_mae_hours_last_week": round(
            float(mean_absolute_error(rul_true[near], rul_pred[near])), 2
        ),
        "train_rows": len(train_idx),
        "test_rows": len(test_idx),
        "test_positive_rate": round(float(y.mean()), 4),
    }
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        Simulation(seed, machines, ticks, 5.0),
        training={
            "failure_horizon_hours": FAILURE_HORIZON_HOURS,
            "rul_cap_hours": RUL_CAP_HOURS,
        },
        forests={
            "classifier": ForestFile("pm_classifier.npz", compile_forest(classifier)),
            "regressor": ForestFile("pm_regressor.npz", compile_forest(regressor)),
        },
    )
