"""Energy models: an LSTM power forecaster (served with LiteRT) and an IsolationForest.

The forecaster reads a machine's last `window` readings plus the operation mode and
production speed of the reading to forecast (both arrive with the reading; only its power
is in question) and answers the power a healthy machine would draw for it. The
IsolationForest then judges the actual draw against that forecast and against the
machine's baseline for the mode.

`encode()`, `next_baseline()` and `anomaly_features()` are the one place the model inputs
are computed, for training and serving alike. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError
from ...messages import OperationMode
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestIsolation
from ...ml.inference import LiteRtModel

AGENT_ID = "energy_agent"
MODES: tuple[OperationMode, ...] = ("Active", "Idle", "Maintenance")
MODE_CODE: dict[str, int] = {mode: code for code, mode in enumerate(MODES)}
# Mode code of a window slot that holds no reading yet.
EMPTY = -1

# One LSTM time step. The last step is the reading to forecast: its power is unknown, so
# `power_known` is 0 there, as in the empty slots of a short history.
STEP_FEATURES: tuple[str, ...] = (
    "power_consumption_kw",
    "power_known",
    "mode_active",
    "mode_idle",
    "mode_maintenance",
    "production_speed",
)
ANOMALY_FEATURES: tuple[str, ...] = ("residual_kw", "power_to_baseline", "power_consumption_kw")
FEATURES: tuple[str, ...] = tuple(f"lstm:{f}" for f in STEP_FEATURES) + tuple(
    f"iforest:{f}" for f in ANOMALY_FEATURES
)
# Below this a forecast or baseline means "the machine is off"; ratios to it would explode.
MIN_REFERENCE_KW = 0.5


@dataclass(frozen=True)
class Scaling:
    """Everything the models were fitted with besides their weights (energy_meta.json)."""

    window: int
    power_mean_kw: float
    power_std_kw: float
    speed_mean: float
    speed_std: float
    baseline_alpha: float
    baseline_step_kw: float
    # The IsolationForest's raw score (higher = stranger) at which is_anomaly was
    # calibrated, and the spread that maps the median normal reading to a score of 0.01.
    anomaly_threshold: float
    anomaly_spread: float

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scaling:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def encode(history: np.ndarray, mode: np.ndarray, speed: np.ndarray, s: Scaling) -> np.ndarray:
    """LSTM input (n, window + 1, len(STEP_FEATURES)) from raw readings.

    `history` is (n, window, 3): power kW, mode code (EMPTY for no reading) and speed,
    oldest first; `mode` and `speed` belong to the reading to forecast.
    """
    n, window = history.shape[:2]
    steps = np.zeros((n, window + 1, len(STEP_FEATURES)), np.float32)
    codes = np.concatenate([history[:, :, 1], np.asarray(mode, np.float64)[:, None]], axis=1)
    speeds = np.concatenate([history[:, :, 2], np.asarray(speed, np.float64)[:, None]], axis=1)
    known = history[:, :, 1] != EMPTY
    steps[:, :window, 0] = np.where(known, (history[:, :, 0] - s.power_mean_kw) / s.power_std_kw, 0)
    steps[:, :window, 1] = known
    for code in range(len(MODES)):
        steps[:, :, 2 + code] = codes == code
    steps[:, :, 5] = np.where(codes != EMPTY, (speeds - s.speed_mean) / s.speed_std, 0)
    return steps


def decode_power(y: np.ndarray, s: Scaling) -> np.ndarray:
    return np.asarray(y, np.float64).reshape(-1) * s.power_std_kw + s.power_mean_kw


def next_baseline(baseline: Any, power_kw: Any, s: Scaling) -> Any:
    """The per-mode EWMA after one more reading (scalars or arrays).

    Each reading moves it by at most alpha * step_kw, so a spike, however large, shifts
    the baseline no more than a slightly high reading would; a real change of level is
    still followed, only more slowly. The update does not depend on the model's verdict,
    which keeps a batch scoreable in one model call.
    """
    delta, step = power_kw - baseline, s.baseline_step_kw
    if isinstance(delta, float):  # the agent's per-record loop: numpy on scalars is slow
        return baseline + s.baseline_alpha * min(max(delta, -step), step)
    return baseline + s.baseline_alpha * np.clip(delta, -step, step)


def anomaly_features(power_kw: Any, forecast_kw: Any, baseline_kw: Any) -> np.ndarray:
    power_kw = np.asarray(power_kw, np.float64)
    return np.column_stack(
        [
            power_kw - np.asarray(forecast_kw, np.float64),
            power_kw / np.maximum(np.asarray(baseline_kw, np.float64), MIN_REFERENCE_KW),
            power_kw,
        ]
    )


def calibrate(raw: np.ndarray, s: Scaling) -> np.ndarray:
    """IsolationForest strangeness -> 0..1, exactly 0.5 at the calibrated threshold."""
    z = (np.asarray(raw, np.float64) - s.anomaly_threshold) / s.anomaly_spread
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def spread_for(normal_median: float, threshold: float) -> float:
    """The logistic spread that puts the median normal reading at 0.01."""
    return max((threshold - normal_median) / math.log(99.0), 1e-6)


class EnergyModel:
    def __init__(
        self,
        forecaster: LiteRtModel,
        iforest: ForestIsolation | None,
        scaling: Scaling,
        version: str,
    ) -> None:
        self.forecaster = forecaster
        # Training builds one without the forest to forecast before the forest exists.
        self.iforest = iforest
        self.scaling = scaling
        self.version = version

    @property
    def window(self) -> int:
        return self.scaling.window

    @classmethod
    def load(cls, models_dir: Path) -> EnergyModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        try:
            scaling = Scaling.from_json(json.loads(entry.paths["meta"].read_text("utf-8")))
            forecaster = LiteRtModel(entry.paths["forecaster"], entry.version)
        except (KeyError, TypeError, OSError, ValueError) as exc:
            raise ArtifactError(f"{AGENT_ID}: cannot load the model files: {exc}") from exc
        iforest, _ = load_forest(entry, "iforest", ForestIsolation)
        expected = (scaling.window + 1, len(STEP_FEATURES))
        if forecaster.input_shape[1:] != expected:
            raise ArtifactError(
                f"{AGENT_ID}: the forecaster takes steps of shape {forecaster.input_shape[1:]}, "
                f"energy_meta.json describes {expected}; rebuild them with "
                "`python -m factory_mas train`"
            )
        return cls(forecaster, iforest, scaling, entry.version)

    def forecast(self, history: np.ndarray, mode: np.ndarray, speed: np.ndarray) -> np.ndarray:
        """The power in kW each reading was expected to draw."""
        x = encode(history, mode, speed, self.scaling)
        return decode_power(self.forecaster.predict(x), self.scaling)

    def anomaly_score(
        self, power_kw: np.ndarray, forecast_kw: np.ndarray, baseline_kw: np.ndarray
    ) -> np.ndarray:
        if len(power_kw) == 0:
            return np.zeros(0)
        features = anomaly_features(power_kw, forecast_kw, baseline_kw)
        assert self.iforest is not None  # only training forecasts with a model that has none
        return calibrate(-self.iforest.score_samples(features), self.scaling)
