"""Network anomaly model: an IsolationForest on link quality and its short-term change.

The features are the three network readings and each one's change since the same
machine's previous record. `LastReadings` keeps that previous record per machine and
walks a batch row by row in order, so a batch scores exactly as its records one by one
would, in training and in serving alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestIsolation

AGENT_ID = "cyber_agent"
READINGS: tuple[str, ...] = ("network_latency_ms", "packet_loss_pct", "error_rate_pct")
FEATURES: tuple[str, ...] = READINGS + tuple(f"{name}_delta" for name in READINGS)
# A previous reading older than this says nothing about the short term; nor does one that
# is newer than the record at hand (records arriving out of order): either gives delta 0.
MAX_GAP_S = 300.0
# anomaly_score maps a typical training record to this value and the threshold to 0.5.
TYPICAL_SCORE = 0.01
# The arrays saved beside the forest in the model file, one per `Calibration` field.
CALIBRATION_ARRAYS = ("raw_median", "raw_threshold", "median", "scale")

Reading = tuple[float, float, float, float]  # timestamp_s, then READINGS in order


class LastReadings:
    """Each machine's newest network reading, the base of the deltas."""

    def __init__(self, known: Mapping[int, Reading] | None = None) -> None:
        self.known: dict[int, Reading] = dict(known or {})

    def add_deltas(
        self, columns: Mapping[str, np.ndarray], timestamps_s: Iterable[float]
    ) -> dict[str, np.ndarray]:
        """The columns plus one `<reading>_delta` column each; remembers the new readings."""
        ids = np.asarray(columns["machine_id"]).tolist()
        values = np.column_stack([np.asarray(columns[n], np.float64) for n in READINGS]).tolist()
        deltas = np.zeros((len(ids), len(READINGS)))
        for i, (machine, now, current) in enumerate(zip(ids, timestamps_s, values, strict=True)):
            previous = self.known.get(machine)
            if previous is not None:
                gap_s = now - previous[0]
                if gap_s <= 0:
                    continue  # not newer than the reading kept: no delta, keep the newer one
                if gap_s <= MAX_GAP_S:
                    deltas[i] = [c - p for c, p in zip(current, previous[1:], strict=True)]
            self.known[machine] = (now, *current)
        return {
            **columns,
            **{f"{name}_delta": deltas[:, j] for j, name in enumerate(READINGS)},
        }


def epoch_seconds(timestamps: np.ndarray) -> list[float]:
    """datetime64 column -> seconds since the epoch, as records' datetimes give them."""
    return (np.asarray(timestamps, "datetime64[ms]").astype(np.int64) / 1000.0).tolist()


def features(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The model input from columns that already carry the deltas (`LastReadings`)."""
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in FEATURES])


@dataclass(frozen=True)
class Calibration:
    """What training learnt about normal traffic, saved beside the forest.

    `raw_median` and `raw_threshold` are the forest's outlier score (the negated
    `score_samples`) of a typical training record and the decision threshold chosen on
    training data; `median` and `scale` (1.4826 * MAD) per feature give robust z-scores.
    """

    raw_median: float
    raw_threshold: float
    median: np.ndarray
    scale: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name), np.float64) for name in CALIBRATION_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: Path) -> Calibration:
        shapes = [arrays[name].shape for name in CALIBRATION_ARRAYS]
        if shapes != [(), (), (len(FEATURES),), (len(FEATURES),)]:
            raise ArtifactError(
                f"{AGENT_ID}: {source} has calibration arrays of shapes "
                f"{dict(zip(CALIBRATION_ARRAYS, shapes, strict=True))}"
            )
        calibration = cls(
            float(arrays["raw_median"]),
            float(arrays["raw_threshold"]),
            arrays["median"],
            arrays["scale"],
        )
        # The logistic of anomaly_scores needs the threshold above the typical record,
        # the z-scores a finite median and a positive scale.
        usable = (
            calibration.raw_threshold > calibration.raw_median
            and np.isfinite(calibration.median).all()
            and (calibration.scale > 0).all()
        )
        if not usable:
            raise ArtifactError(f"{AGENT_ID}: {source} has an unusable calibration")
        return calibration


class CyberModel:
    """The forest plus its `Calibration`."""

    def __init__(self, forest: ForestIsolation, calibration: Calibration, version: str) -> None:
        self.forest = forest
        self.calibration = calibration
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> CyberModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        forest, arrays = load_forest(entry, "model", ForestIsolation, CALIBRATION_ARRAYS)
        return cls(forest, Calibration.from_arrays(arrays, entry.paths["model"]), entry.version)

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(x)

    def anomaly_scores(self, raw: np.ndarray) -> np.ndarray:
        """0..1 on a logistic through two anchors of the training distribution: the
        typical record scores TYPICAL_SCORE and the threshold scores 0.5."""
        c = self.calibration
        width = (c.raw_threshold - c.raw_median) / np.log((1 - TYPICAL_SCORE) / TYPICAL_SCORE)
        return 1.0 / (1.0 + np.exp(-(raw - c.raw_threshold) / width))

    def zscores(self, x: np.ndarray) -> np.ndarray:
        return (x - self.calibration.median) / self.calibration.scale

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """anomaly_score, is_anomaly and the robust z-score of every feature, per row."""
        raw = self.raw_scores(x)
        return self.anomaly_scores(raw), raw >= self.calibration.raw_threshold, self.zscores(x)
