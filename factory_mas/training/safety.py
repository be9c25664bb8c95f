"""Train the hazard classifier on simulated plant history.

Hazards are rare (a few per machine-year each), so the simulation runs them ten times as
often and most hazard-free rows are left out of the fit: the forest then sees every kind
often enough to learn it. The held-out machines (the last fifth of the ids) are scored
in full, and the false-alarm rate on their hazard-free rows does not depend on how often
hazards occur, so it carries over to the plant.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ..agents.safety.model import AGENT_ID, CLASSES, FEATURES, SafetyModel, features
from ..ml.forest import ForestClassifier
from ..sim.synthetic import DEFAULT_PARAMS, FactorySimulator
from .common import ForestFile, Simulation, is_held_out, save_models
from .forests import compile_as

# "A hazard is likelier than not": the default warning cut, where alerts start.
ALERT_SCORE = 0.5


def train_safety(
    out_dir: Path,
    seed: int = 1234,
    ticks: int = 4000,
    max_normal_rows: int = 40_000,
    hazard_rate_factor: float = 10.0,
) -> dict[str, Any]:
    machines, step_minutes = 50, 5.0
    p = DEFAULT_PARAMS
    params = replace(
        p,
        fire_risk_rate_per_h=p.fire_risk_rate_per_h * hazard_rate_factor,
        mechanical_hazard_rate_per_h=p.mechanical_hazard_rate_per_h * hazard_rate_factor,
        electrical_hazard_rate_per_h=p.electrical_hazard_rate_per_h * hazard_rate_factor,
    )
    simulator = FactorySimulator(
        seed=seed, machines=machines, step_minutes=step_minutes, params=params
    )
    cols = simulator.run(ticks).columns
    x = features(cols)
    y = np.asarray(cols["hazard_type"]).astype(str)
    held_out = is_held_out(cols["machine_id"], machines)

    rng = np.random.default_rng(seed)
    train_idx = np.flatnonzero(~held_out)
    normal = train_idx[y[train_idx] == "NONE"]
    if len(normal) > max_normal_rows:
        normal = rng.choice(normal, max_normal_rows, replace=False)
    train_idx = np.sort(np.concatenate([train_idx[y[train_idx] != "NONE"], normal]))
    test_idx = np.flatnonzero(held_out)

    # Half the features per split, not the usual square root: with two of eight, many
    # splits cannot see temperature at all, and fire rows kept a share of "no hazard".
    fitted = RandomForestClassifier(
        n_estimators=60,
        max_features=0.5,
        max_depth=14,
        min_samples_leaf=3,
        random_state=seed,
        n_jobs=1,
    ).fit(x[train_idx], y[train_idx])
    classifier = compile_as(fitted, ForestClassifier)

    probabilities = SafetyModel(classifier, version="").predict(x[test_idx])
    predicted = np.asarray(CLASSES)[probabilities.argmax(axis=1)]
    truth = y[test_idx]
    precision, recall, _, support = precision_recall_fscore_support(
        truth, predicted, labels=list(CLASSES), zero_division=0
    )
    hazard = 1.0 - probabilities[:, 0]
    calm = truth == "NONE"
    metrics = {
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "macro_f1": round(
            float(f1_score(truth, predicted, labels=list(CLASSES), average="macro")), 4
        ),
        **{f"precision_{c}": round(float(v), 4) for c, v in zip(CLASSES, precision, strict=True)},
        **{f"recall_{c}": round(float(v), 4) for c, v in zip(CLASSES, recall, strict=True)},
        "false_alarm_rate_at_0.5": round(float((hazard[calm] >= ALERT_SCORE).mean()), 5),
        "hazard_recall_at_0.5": round(float((hazard[~calm] >= ALERT_SCORE).mean()), 4),
        "train_rows": len(train_idx),
        "test_rows": len(test_idx),
        **{f"test_rows_{c}": int(n) for c, n in zip(CLASSES, support, strict=True)},
    }
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        Simulation(seed, machines, ticks, step_minutes),
        training={
            "hazard_rate_factor": hazard_rate_factor,
            "max_normal_rows": max_normal_rows,
        },
        forests={"classifier": ForestFile("safety_classifier.npz", classifier)},
    )
