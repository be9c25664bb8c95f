"""Predictive-maintenance models: a failure classifier and a RUL regressor (RandomForest).

`features()` is the one place the model inputs are computed, for training and serving alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestClassifier, ForestRegressor

AGENT_ID = "pm_agent"
FEATURES: tuple[str, ...] = (
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "maintenance_score",
    "error_rate_pct",
    "defect_rate_pct",
    "production_speed",
    "mode_active",
    "mode_idle",
)
# The regressor learns a capped RUL: far from the end of life the readings look alike, so
# beyond this horizon the honest answer is "a long time", as in the C-MAPSS literature.
RUL_CAP_HOURS = 400.0
# The classifier's label: the machine fails within this many hours.
FAILURE_HORIZON_HOURS = 24.0


def features(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    mode = np.asarray(columns["operation_mode"])
    return np.column_stack(
        [np.asarray(columns[name], dtype=np.float64) for name in FEATURES[:-2]]
        + [(mode == "Active").astype(np.float64), (mode == "Idle").astype(np.float64)]
    )


class PmModel:
    def __init__(
        self, classifier: ForestClassifier, regressor: ForestRegressor, version: str
    ) -> None:
        # The failure probability is the column of class 1 ("fails within the horizon").
        if classifier.classes != ("0", "1"):
            raise ArtifactError(
                f"{AGENT_ID}: the classifier knows classes {list(classifier.classes)}, "
                "expected ['0', '1']"
            )
        self.classifier = classifier
        self.regressor = regressor
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> PmModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        classifier, _ = load_forest(entry, "classifier", ForestClassifier)
        regressor, _ = load_forest(entry, "regressor", ForestRegressor)
        return cls(classifier, regressor, entry.version)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Failure probability within the horizon, and remaining useful life in hours."""
        failure_probability = self.classifier.predict_proba(x)[:, 1]
        rul_hours = np.clip(self.regressor.predict(x), 0.0, RUL_CAP_HOURS)
        return failure_probability, rul_hours
