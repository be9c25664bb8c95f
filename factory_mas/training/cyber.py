"""Train the network anomaly model on simulated plant traffic with attack episodes.

The forest itself is unsupervised and sees the traffic as it comes, attacks included;
the generator's labels only choose the decision threshold (best F1 on the training
machines) and score the held-out machines (the last fifth of the ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from ..agents.cyber.model import (
    AGENT_ID,
    FEATURES,
    MAX_GAP_S,
    Calibration,
    CyberModel,
    LastReadings,
    epoch_seconds,
    features,
)
from ..ml.forest import ForestIsolation
from ..sim.synthetic import FactorySimulator
from .common import ForestFile, Simulation, is_held_out, save_models
from .forests import compile_as

# 1.4826 * MAD estimates the standard deviation of normally distributed data.
MAD_TO_SD = 1.4826
# One record per machine per minute, as the dataset and the replay send them: the deltas
# the model learns are changes over one minute.
STEP_MINUTES = 1.0


def best_f1_threshold(raw: np.ndarray, attack: np.ndarray) -> float:
    """The outlier score from which records are flagged, best F1 on these labels.

    The cut lies halfway between the last flagged record and the next one down, so it
    keeps a margin on both sides instead of sitting on a training point.
    """
    order = np.argsort(-raw, kind="stable")
    ranked, hits = raw[order], attack[order]
    true_pos = np.cumsum(hits)
    f1 = 2 * true_pos / (np.arange(1, len(ranked) + 1) + hits.sum())
    k = int(np.argmax(f1))
    below = ranked[k + 1] if k + 1 < len(ranked) else ranked[k]
    return float((ranked[k] + below) / 2)


def robust_spread(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.median(x, axis=0)
    scale = MAD_TO_SD * np.median(np.abs(x - median), axis=0)
    # A feature that never varied would make every change infinitely far from normal.
    return median, np.maximum(scale, 1e-6)


def train_cyber(
    out_dir: Path, seed: int = 1234, ticks: int = 4000, machines: int = 50, trees: int = 100
) -> dict[str, Any]:
    frame = FactorySimulator(seed=seed, machines=machines, step_minutes=STEP_MINUTES).run(ticks)
    cols = LastReadings().add_deltas(frame.columns, epoch_seconds(frame.columns["timestamp"]))
    x = features(cols)
    attack = np.asarray(cols["cyber_attack"], bool)
    held_out = is_held_out(cols["machine_id"], machines)
    train, test = ~held_out, held_out

    fitted = IsolationForest(n_estimators=trees, max_samples=256, random_state=seed, n_jobs=1)
    forest = compile_as(fitted.fit(x[train]), ForestIsolation)
    raw_train = -forest.score_samples(x[train])
    median, scale = robust_spread(x[train])
    calibration = Calibration(
        raw_median=float(np.median(raw_train)),
        raw_threshold=best_f1_threshold(raw_train, attack[train]),
        median=median,
        scale=scale,
    )
    if not calibration.raw_threshold > calibration.raw_median:
        raise ValueError("the threshold fell below a typical record; too few attacks to learn from")

    score, flagged, _ = CyberModel(forest, calibration, version="").predict(x[test])
    y = attack[test]
    true_pos = int((flagged & y).sum())
    metrics = {
        "roc_auc": round(float(roc_auc_score(y, score)), 4),
        "average_precision": round(float(average_precision_score(y, score)), 4),
        "precision": round(true_pos / max(1, int(flagged.sum())), 4),
        "recall": round(true_pos / max(1, int(y.sum())), 4),
        "false_alarm_rate": round(float(flagged[~y].mean()), 5),
        "train_rows": int(train.sum()),
        "test_rows": int(test.sum()),
        "test_attack_rows": int(y.sum()),
    }
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        Simulation(seed, machines, ticks, STEP_MINUTES),
        training={
            "trees": trees,
            "max_gap_s": MAX_GAP_S,
            "threshold": "best F1 on the training machines",
        },
        forests={"model": ForestFile("cyber_model.npz", forest, calibration.arrays())},
    )
