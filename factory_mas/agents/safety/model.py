"""Hazard classifier (RandomForest) over one record's physical readings.

`features()` is the one place the model inputs are computed, for training and serving alike.
Network readings are left out on purpose: a hazard is physical, and an attack on the
network must not look like one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestClassifier

AGENT_ID = "safety_agent"
FEATURES: tuple[str, ...] = (
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "defect_rate_pct",
    "production_speed",
    "maintenance_score",
    "mode_active",
    "mode_idle",
)
HAZARDS: tuple[str, ...] = ("FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD")
CLASSES: tuple[str, ...] = ("NONE", *HAZARDS)


def features(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    mode = np.asarray(columns["operation_mode"])
    return np.column_stack(
        [np.asarray(columns[name], dtype=np.float64) for name in FEATURES[:-2]]
        + [(mode == "Active").astype(np.float64), (mode == "Idle").astype(np.float64)]
    )


class SafetyModel:
    def __init__(self, classifier: ForestClassifier, version: str) -> None:
        known = list(classifier.classes)
        if sorted(known) != sorted(CLASSES):
            raise ArtifactError(
                f"{AGENT_ID}: the classifier knows classes {known}, expected {list(CLASSES)}"
            )
        self.classifier = classifier
        # predict_proba orders columns as training did (sorted); the rest uses CLASSES.
        self._columns = [known.index(c) for c in CLASSES]
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> SafetyModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        classifier, _ = load_forest(entry, "classifier", ForestClassifier)
        return cls(classifier, entry.version)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities per row, one column per class in CLASSES order (NONE first)."""
        return self.classifier.predict_proba(x)[:, self._columns]
