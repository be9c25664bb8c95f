"""Energy models: each machine's learned normal draw, an LSTM forecaster in the units of
that normal (served with LiteRT), and an IsolationForest judging the actual draw.

A plant's machines differ in size: a pump draws 1 kW, a line 30 kW. Every reading is
therefore taken relative to its own machine's normal in its operation mode (`Normals`, a
robust location and spread per machine, one set per mode, since a machine at rest draws
a fraction of its working level): its z, (kW - location) / spread, and likewise its
production speed. The forecaster reads a machine's last `window` readings in those units
plus the mode and speed of the reading to forecast (both arrive with the reading; only its
power is in question) and answers the z a healthy machine would draw; the agent shows it
back in kW. The IsolationForest judges the actual draw by its distance from the forecast
and from the normal, both in spreads, and a level check beside it flags a draw far from
its normal on its own (a meter without operation modes has a wide normal, in which the
forest alone lets surges through), so a big machine is not always in alarm and a small
one not always calm.

`track()`, `encode()` and `anomaly_features()` are the one place the model inputs are
computed, for training and serving alike. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ArtifactError
from ...messages import OperationMode
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestIsolation
from ...ml.inference import LiteRtModel
from ...ml.normal import Normals

AGENT_ID = "energy_agent"
MODES: tuple[OperationMode, ...] = ("Active", "Idle", "Maintenance")
MODE_CODE: dict[str, int] = {mode: code for code, mode in enumerate(MODES)}
# Mode code of a window slot that holds no reading yet.
EMPTY = -1
# The channels of each machine's normal, per mode.
CHANNELS: tuple[str, ...] = ("power_consumption_kw", "production_speed")
# Below these a machine's spread is the meter's resolution, not its variation: 10 W, and
# one unit an hour (a machine at rest makes nothing, and every unit would be infinitely
# far from its normal).
MIN_SPREAD: tuple[float, float] = (0.01, 1.0)
# A machine in a mode new to the model is learnt for this many readings before it can
# alarm: its spread starts from the plant's and is not its own yet.
WARMUP = 20
NORMAL_ALPHA = 0.01
# Once warmed, a reading this many spreads from its normal is not learnt: a surge or a
# stall must not become the normal it is judged against.
LEARN_FENCE_Z = 8.0
# The forecaster's inputs and outputs are z clipped to this: a machine switched off, or a
# kettle on a household meter, must not saturate the LSTM for the next `window` readings.
Z_CLIP = 10.0
# The forest's features are clipped further out: beyond this, stranger is not stranger.
FOREST_CLIP = 50.0

# One LSTM time step. The last step is the reading to forecast: its power is unknown, so
# `power_known` is 0 there, as in the empty slots of a short history.
STEP_FEATURES: tuple[str, ...] = (
    "power_z",
    "power_known",
    "mode_active",
    "mode_idle",
    "mode_maintenance",
    "speed_z",
)
ANOMALY_FEATURES: tuple[str, ...] = ("residual_z", "level_z")
FEATURES: tuple[str, ...] = tuple(f"lstm:{f}" for f in STEP_FEATURES) + tuple(
    f"iforest:{f}" for f in ANOMALY_FEATURES
)


def normal_prefix(code: int) -> str:
    """The .npz array prefix of one mode's normals."""
    return f"normal_{MODES[code].lower()}"


@dataclass(frozen=True)
class Scaling:
    """Everything the models were fitted with besides their weights (energy_meta.json)."""

    window: int
    # Whether the training data had these columns: without them every reading is taken
    # as Active, and the speed as unknown (z 0), whatever a record says.
    uses_modes: bool
    uses_speed: bool
    # The IsolationForest's raw score (higher = stranger) at which is_anomaly was
    # calibrated, and the spread that maps the median normal reading to a score of 0.01;
    # the same for the level check, the reading's |z| against its normal.
    anomaly_threshold: float
    anomaly_spread: float
    level_threshold: float
    level_spread: float

    @classmethod
    def uncalibrated(cls, window: int, uses_modes: bool, uses_speed: bool) -> Scaling:
        """What training starts from: the thresholds are set once the forest is fitted."""
        return cls(window, uses_modes, uses_speed, 0.0, 1.0, 0.0, 1.0)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scaling:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def new_normals(prior_loc: np.ndarray, prior_spread: np.ndarray) -> Normals:
    return Normals(
        CHANNELS,
        prior_loc,
        prior_spread,
        alpha=NORMAL_ALPHA,
        warmup=WARMUP,
        min_spread=MIN_SPREAD,
    )


def fitted_normals(machines: np.ndarray, mode: np.ndarray, x: np.ndarray) -> list[Normals]:
    """Per mode, each machine's normal from training rows (kW, speed); a mode no row shows
    gets the Active prior."""
    out: list[Normals | None] = []
    for code in range(len(MODES)):
        rows = mode == code
        if not rows.any():
            out.append(None)
            continue
        out.append(
            Normals.fitted(
                CHANNELS,
                machines[rows].tolist(),
                x[rows],
                alpha=NORMAL_ALPHA,
                warmup=WARMUP,
                min_spread=MIN_SPREAD,
            )
        )
    fallback = next(n for n in out if n is not None)
    return [
        n
        if n is not None
        else new_normals(np.asarray(fallback.prior_loc), np.asarray(fallback.prior_spread))
        for n in out
    ]


def normals_arrays(normals: Sequence[Normals]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for code, n in enumerate(normals):
        out.update(n.arrays(normal_prefix(code)))
    return out


def normals_from_arrays(arrays: dict[str, np.ndarray]) -> list[Normals]:
    return [
        Normals.from_arrays(
            CHANNELS, arrays, normal_prefix(code), alpha=NORMAL_ALPHA, warmup=WARMUP
        )
        for code in range(len(MODES))
    ]


@dataclass(frozen=True)
class Tracked:
    """Records against their machines' normals as they stood before each record."""

    # (n, 3): the window step each record becomes: power z, mode code, speed z.
    steps: np.ndarray
    # (n, modes, channels): the machine's normal in every mode, and (n, modes) how many
    # readings taught it (0: a mode the machine has not shown, the prior stands in).
    loc: np.ndarray
    spread: np.ndarray
    count: np.ndarray

    def own(self, mode: np.ndarray, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The location and spread of each record's own mode."""
        rows = np.arange(len(mode))
        return self.loc[rows, mode, channel], self.spread[rows, mode, channel]

    def warmed(self, mode: np.ndarray) -> np.ndarray:
        return self.count[np.arange(len(mode)), mode] >= WARMUP

    def level_z(self, mode: np.ndarray, power: np.ndarray) -> np.ndarray:
        loc, spread = self.own(mode)
        return (power - loc) / spread


def readings(mode: np.ndarray, speed: np.ndarray, s: Scaling) -> tuple[np.ndarray, np.ndarray]:
    """The mode codes and speeds as the model takes them (all Active, speed 0 for a model
    trained without them)."""
    mode = np.asarray(mode, np.int64) if s.uses_modes else np.zeros(len(mode), np.int64)
    speed = np.asarray(speed, np.float64) if s.uses_speed else np.zeros(len(speed))
    return mode, speed


def track(
    normals: Sequence[Normals],
    machines: Sequence[int],
    mode: np.ndarray,
    power: np.ndarray,
    speed: np.ndarray,
) -> Tracked:
    """Each record against its machine's normal in its mode, in order; then the record
    teaches that normal, unless the normal is warmed up and the power is LEARN_FENCE_Z
    spreads or more from it. What is learnt does not depend on the models' verdicts, so a
    batch is scored by one model call and exactly as its records one by one would be.

    A mode's first reading sets its location, so its step is z 0 whatever the prior was.
    """
    n, k, m = len(machines), len(CHANNELS), len(normals)
    steps = np.empty((n, 3))
    loc, spread = np.empty((n, m, k)), np.empty((n, m, k))
    count = np.zeros((n, m), np.int64)
    priors = [(n_.prior_loc, n_.prior_spread) for n_ in normals]
    rows = zip(machines, mode.tolist(), power.tolist(), speed.tolist(), strict=True)
    for i, (machine, code, p, s) in enumerate(rows):
        for c, modal in enumerate(normals):
            known = modal.known.get(machine)
            if known is None:
                loc[i, c], spread[i, c] = priors[c]
            else:
                loc[i, c], spread[i, c], count[i, c] = known.loc, known.spread, known.n
        own = normals[code].normal_of(machine)
        if own.n == 0:
            steps[i] = (0.0, code, 0.0)
        else:
            z_power = (p - own.loc[0]) / own.spread[0]
            steps[i] = (z_power, code, (s - own.loc[1]) / own.spread[1])
        if own.n < WARMUP or abs(steps[i, 0]) < LEARN_FENCE_Z:
            normals[code].learn(own, (p, s))
    np.clip(steps[:, 0], -Z_CLIP, Z_CLIP, out=steps[:, 0])
    np.clip(steps[:, 2], -Z_CLIP, Z_CLIP, out=steps[:, 2])
    return Tracked(steps, loc, spread, count)


def encode(history: np.ndarray, target: np.ndarray) -> np.ndarray:
    """LSTM input (n, window + 1, len(STEP_FEATURES)).

    `history` is (n, window, 3) steps as `track` makes them (EMPTY mode for no reading),
    oldest first; `target` (n, 2) the mode code and speed z of the reading to forecast.
    """
    n, window = history.shape[:2]
    x = np.zeros((n, window + 1, len(STEP_FEATURES)), np.float32)
    codes = np.concatenate([history[:, :, 1], target[:, :1]], axis=1)
    known = history[:, :, 1] != EMPTY
    x[:, :window, 0] = np.where(known, history[:, :, 0], 0.0)
    x[:, :window, 1] = known
    for code in range(len(MODES)):
        x[:, :, 2 + code] = codes == code
    speeds = np.concatenate([history[:, :, 2], target[:, 1:]], axis=1)
    x[:, :, 5] = np.where(codes != EMPTY, speeds, 0.0)
    return x


def persistence_z(history: np.ndarray, target: np.ndarray) -> np.ndarray:
    """What the forecaster's answer is added to: the last reading's z when it was in the
    mode of the reading to forecast, else 0 (the mode's normal). The LSTM thus learns how
    the next reading differs from "same as the last", and a plant whose draw drifts
    slowly is forecast no worse than persistence even by a briefly trained model."""
    last = history[:, -1]
    return np.where(last[:, 1] == target[:, 0], last[:, 0], 0.0)


def anomaly_features(power_kw: Any, forecast_kw: Any, loc_kw: Any, spread_kw: Any) -> np.ndarray:
    """The draw's distance from the forecast and from the machine's normal, in spreads."""
    power, spread = np.asarray(power_kw, np.float64), np.asarray(spread_kw, np.float64)
    return np.clip(
        np.column_stack([(power - forecast_kw) / spread, (power - loc_kw) / spread]),
        -FOREST_CLIP,
        FOREST_CLIP,
    )


def calibrate(raw: np.ndarray, threshold: float, spread: float) -> np.ndarray:
    """A raw score (higher = stranger) -> 0..1, exactly 0.5 at the calibrated threshold."""
    z = (np.asarray(raw, np.float64) - threshold) / spread
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def spread_for(normal_median: float, threshold: float) -> float:
    """The logistic spread that puts the median normal reading at 0.01."""
    return max((threshold - normal_median) / math.log(99.0), 1e-6)


@dataclass(frozen=True)
class Judged:
    """A batch judged by the models: forecast and usual draw in kW, the anomaly score."""

    forecast_kw: np.ndarray
    # The normal's location in the record's mode; NaN for a mode the machine has not
    # shown (the forecast then stands in, in the agent).
    baseline_kw: np.ndarray
    # The machine's Active location; NaN while it has never been seen Active.
    active_baseline_kw: np.ndarray
    score: np.ndarray


class EnergyModel:
    def __init__(
        self,
        forecaster: LiteRtModel,
        iforest: ForestIsolation | None,
        scaling: Scaling,
        normals: dict[str, np.ndarray],
        version: str,
    ) -> None:
        self.forecaster = forecaster
        # Training builds one without the forest to forecast before the forest exists.
        self.iforest = iforest
        self.scaling = scaling
        self.normal_arrays = normals
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
        names = tuple(
            name for code in range(len(MODES)) for name in Normals.array_names(normal_prefix(code))
        )
        iforest, arrays = load_forest(entry, "iforest", ForestIsolation, names)
        expected = (scaling.window + 1, len(STEP_FEATURES))
        if forecaster.input_shape[1:] != expected:
            raise ArtifactError(
                f"{AGENT_ID}: the forecaster takes steps of shape {forecaster.input_shape[1:]}, "
                f"energy_meta.json describes {expected}; rebuild them with "
                "`python -m factory_mas train`"
            )
        model = cls(forecaster, iforest, scaling, arrays, entry.version)
        try:
            model.fresh_normals()
        except ValueError as exc:
            raise ArtifactError(f"{AGENT_ID}: {entry.paths['iforest']}: {exc}") from exc
        return model

    def fresh_normals(self) -> list[Normals]:
        """Per mode, the machines' normals as training left them, to go on learning from."""
        return normals_from_arrays(self.normal_arrays)

    def forecast_z(self, history: np.ndarray, target: np.ndarray) -> np.ndarray:
        y = np.asarray(self.forecaster.predict(encode(history, target)), np.float64).reshape(-1)
        return np.clip(persistence_z(history, target) + y, -Z_CLIP, Z_CLIP)

    def judge(
        self, history: np.ndarray, tracked: Tracked, mode: np.ndarray, power: np.ndarray
    ) -> Judged:
        """Forecast, baseline and anomaly score of records tracked in order: `history` is
        each one's window, `mode` the codes as `readings` gives them."""
        loc, spread = tracked.own(mode)
        target = np.column_stack([mode, tracked.steps[:, 2]])
        forecast = loc + spread * self.forecast_z(history, target)
        seen = tracked.count[np.arange(len(mode)), mode] > 0
        active = tracked.count[:, MODE_CODE["Active"]] > 0
        return Judged(
            forecast_kw=forecast,
            baseline_kw=np.where(seen, loc, np.nan),
            active_baseline_kw=np.where(active, tracked.loc[:, MODE_CODE["Active"], 0], np.nan),
            score=self.anomaly_score(power, forecast, loc, spread, tracked.warmed(mode)),
        )

    def raw_scores(
        self, power: np.ndarray, forecast: np.ndarray, loc: np.ndarray, spread: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The forest's strangeness and the level check's |z| of each reading."""
        assert self.iforest is not None  # only training forecasts with a model that has none
        features = anomaly_features(power, forecast, loc, spread)
        return -self.iforest.score_samples(features), np.abs(features[:, 1])

    def anomaly_score(
        self,
        power: np.ndarray,
        forecast: np.ndarray,
        loc: np.ndarray,
        spread: np.ndarray,
        warmed: np.ndarray,
    ) -> np.ndarray:
        """0..1, 0.5 where the forest or the level check reaches its calibrated threshold;
        0 while the machine's normal in the mode is still being learnt."""
        if len(power) == 0:
            return np.zeros(0)
        s = self.scaling
        forest, level = self.raw_scores(power, forecast, loc, spread)
        score = np.maximum(
            calibrate(forest, s.anomaly_threshold, s.anomaly_spread),
            calibrate(level, s.level_threshold, s.level_spread),
        )
        return np.where(warmed, score, 0.0)
