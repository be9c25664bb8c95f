"""Train the energy models, on simulated plant history or on a plant's own power readings.

Every reading is taken against its machine's own normal in its mode (model.py): the
normals are fitted on the training rows, the LSTM learns to forecast in their units and the
IsolationForest judges the draw in spreads from the forecast and from the normal, beside
a check of the spreads from the normal alone. Their thresholds are the scores that half of
`target_alert_rate` of the normal training readings reach each (`threshold_for_rate`), not
cuts tuned to the simulator's anomalies.

On the simulator the forecaster learns the power a healthy machine draws: its targets are
the readings that are neither an injected power anomaly nor an electrical hazard, while
anomalous readings stay in its input windows. On a plant's data nothing is labelled: the
forecaster learns every reading, and the threshold is set on the readings within
LEARN_FENCE_Z spreads of their normal (a history holds faults nobody labelled, and a
threshold set on them would let the next ones through).

The card judges the model as the agent serves it, on held-out data: each held-out machine
new to the model starts from the plant's prior and learns its own normal; its scores are
smoothed and gated (on-delay) with the default [agents.energy] settings, so a false alarm
or a caught fault is an alert the orchestrator would have been told. The forecaster goes
through a SavedModel to .tflite, and every metric is computed with the converted model.
TensorFlow is imported inside the functions, so importing this package stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from ..agents.conditioning import Conditioner, Gate, gate_step
from ..agents.energy import logic
from ..agents.energy.model import (
    AGENT_ID,
    EMPTY,
    FEATURES,
    LEARN_FENCE_Z,
    MODE_CODE,
    STEP_FEATURES,
    WARMUP,
    Z_CLIP,
    EnergyModel,
    Scaling,
    Tracked,
    anomaly_features,
    encode,
    fitted_normals,
    normals_arrays,
    normals_from_arrays,
    persistence_z,
    spread_for,
    track,
)
from ..errors import FactoryError, TrainingError
from ..levels import RANK, Level
from ..ml.forest import ForestIsolation
from ..ml.inference import LiteRtModel
from ..settings import EnergySettings
from ..sim.synthetic import SHIFTED_PLANTS, FactorySimulator
from .cards import Comparison, card
from .common import ForestFile, Simulation, held_out_from, save_models, to_tflite
from .forests import compile_as
from .plant import PlantData, PlantOptions, held_out_rows, threshold_for_rate

WINDOW = 16
STEP_MINUTES = 1.0
HORIZON_MINUTES = 15.0
# A share of the training windows is cut short, so the forecaster also answers for a
# machine it has seen only a few readings of (a new machine, or the first after a start).
SHORT_HISTORY_SHARE = 0.2
# The converted model must answer what Keras answers (in spreads); more is a broken export.
CONVERSION_TOLERANCE_Z = 1e-3
# Faults injected into held-out normal readings: a surge of 30-60 % of the machine's
# normal working draw, and a stall of a working machine to a fifth of its draw, each for
# EPISODE_READINGS readings, one episode in FAULT_EVERY readings of each machine (after
# its normals have warmed up), so the faults do not become its normal.
SURGE_SHARE = (0.3, 0.6)
STALL_TO = 0.2
EPISODE_READINGS = 5
FAULT_EVERY = 60
FIRST_FAULT = 2 * WARMUP
MIN_FIT_ROWS = 200
MIN_TEST_ROWS = FIRST_FAULT + EPISODE_READINGS
# Forecast origins sampled for the recursive forecast 15 minutes ahead.
HORIZON_ORIGINS = 4000
SHIFTED_MACHINE_IDS = 10_000
RAW_BASELINE = "power > its training p{pct:g} ({cut:.4g} kW)"
Z_BASELINE = "robust z of power alone (|z| > {cut:.3g})"


@dataclass(frozen=True)
class Series:
    """Readings sorted by (machine, time), as the agent sees them, with what is known
    about them: `normal` False where a reading is a labelled (or injected) event."""

    machine: np.ndarray
    mode: np.ndarray
    power: np.ndarray
    speed: np.ndarray
    at_s: np.ndarray
    normal: np.ndarray

    def __len__(self) -> int:
        return len(self.machine)

    def take(self, rows: np.ndarray) -> Series:
        return Series(*(getattr(self, f.name)[rows] for f in fields(self)))

    def position(self) -> np.ndarray:
        """Each reading's place in its machine's sequence: 0 for its first."""
        starts = np.r_[True, self.machine[1:] != self.machine[:-1]]
        first = np.maximum.accumulate(np.where(starts, np.arange(len(self)), 0))
        return np.arange(len(self)) - first


def history_of(
    steps: np.ndarray, position: np.ndarray, rows: np.ndarray, window: int
) -> np.ndarray:
    """(len(rows), window, 3): the steps of the `window` readings of the same machine
    before each row, oldest first, padded with empty slots."""
    j = np.arange(window)[None, :]
    back = position[rows][:, None] - window + j
    history = steps[np.maximum(rows[:, None] - window + j, 0)]
    history[back < 0] = (0.0, EMPTY, 0.0)
    return history


# -- fitting ------------------------------------------------------------------------------


def build_forecaster(window: int, units: int) -> Any:
    import keras

    # unroll=True: the converter cannot lower the looped LSTM (TensorListReserve).
    # Every name fixed: Keras numbers unnamed models and layers per process and the numbers
    # end up in the .tflite, so a second training in one process would write other bytes.
    return keras.Sequential(
        [
            keras.Input((window + 1, len(STEP_FEATURES)), name="steps"),
            keras.layers.LSTM(units, unroll=True, name="lstm"),
            keras.layers.Dense(units // 2, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="power"),
        ],
        name="energy_forecaster",
    )


def fit_forecaster(
    x: np.ndarray, y: np.ndarray, *, seed: int, window: int, units: int, epochs: int
) -> Any:
    """A Keras LSTM fitted on inputs and targets in spreads, seeded and deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = build_forecaster(window, units)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="huber")
    model.fit(x, y, batch_size=256, epochs=epochs, shuffle=True, verbose=0)
    return model


def _sample(rows: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most n of `rows`, in their original order."""
    return np.sort(rng.choice(rows, min(n, rows.size), replace=False))


def _shorten(history: np.ndarray, rng: np.random.Generator) -> None:
    n, window = history.shape[:2]
    emptied = np.where(rng.random(n) < SHORT_HISTORY_SHARE, rng.integers(1, window + 1, n), 0)
    history[np.arange(window)[None, :] < emptied[:, None]] = (0.0, EMPTY, 0.0)


@dataclass(frozen=True)
class Fitted:
    model: EnergyModel
    keras_model: Any
    train_windows: int
    # The single-feature baselines, cut on the same normal training readings.
    raw_cut_kw: float
    z_cut: float


def _fit(
    fit: Series,
    targets: np.ndarray,
    calibrate_on: np.ndarray,
    scaling: Scaling,
    files: dict[str, Path],
    *,
    rate: float,
    seed: int,
    units: int,
    epochs: int,
    max_train_windows: int,
    max_iforest_rows: int,
) -> Fitted:
    """The normals, forecaster and forest from training readings: `targets` are the rows
    the forecaster learns to forecast, `calibrate_on` the normal ones the forest and the
    threshold are fitted on."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([fit.power, fit.speed])
    normals = fitted_normals(fit.machine, fit.mode, x)
    arrays = normals_arrays(normals)
    tracked = track(
        normals_from_arrays(arrays), fit.machine.tolist(), fit.mode, fit.power, fit.speed
    )
    position = fit.position()
    rows = _sample(np.flatnonzero(targets), max_train_windows, rng)
    history = history_of(tracked.steps, position, rows, scaling.window)
    _shorten(history, rng)
    target = np.column_stack([fit.mode[rows], tracked.steps[rows, 2]])
    keras_model = fit_forecaster(
        encode(history, target),
        (tracked.steps[rows, 0] - persistence_z(history, target)).astype(np.float32),
        seed=seed,
        window=scaling.window,
        units=units,
        epochs=epochs,
    )
    files["forecaster"].write_bytes(to_tflite(keras_model))
    # From here on the forecasts come from the converted model, the one the agent serves.
    forecaster = LiteRtModel(files["forecaster"], "training")
    bare = EnergyModel(forecaster, None, scaling, arrays, "training")
    normal = calibrate_on & tracked.warmed(fit.mode)
    normal &= np.abs(tracked.level_z(fit.mode, fit.power)) < LEARN_FENCE_Z
    if normal.sum() < MIN_FIT_ROWS:
        raise TrainingError(
            f"{AGENT_ID}: {int(normal.sum())} normal training readings; at least "
            f"{MIN_FIT_ROWS} are needed"
        )
    picked = _sample(np.flatnonzero(normal), max_iforest_rows, rng)
    code = fit.mode[picked]
    loc, spread = tracked.loc[picked, code, 0], tracked.spread[picked, code, 0]
    history = history_of(tracked.steps, position, picked, scaling.window)
    forecast = loc + spread * bare.forecast_z(
        history, np.column_stack([fit.mode[picked], tracked.steps[picked, 2]])
    )
    features = anomaly_features(fit.power[picked], forecast, loc, spread)
    # 50 trees, not the usual 100: scikit-learn scores a forest tree by tree through joblib
    # at ~0.1 ms per tree, which dominates a lone record.
    fitted = IsolationForest(n_estimators=50, max_samples=512, random_state=seed, n_jobs=1)
    iforest = compile_as(fitted.fit(features), ForestIsolation)
    bare = EnergyModel(forecaster, iforest, scaling, arrays, "training")
    raw, level = bare.raw_scores(fit.power[picked], forecast, loc, spread)
    # Half the target rate each, as cyber's forest and channel check.
    cut, level_cut = threshold_for_rate(raw, rate / 2), threshold_for_rate(level, rate / 2)
    scaling = replace(
        scaling,
        anomaly_threshold=_rounded(cut),
        anomaly_spread=_rounded(spread_for(float(np.median(raw)), cut)),
        level_threshold=_rounded(level_cut),
        level_spread=_rounded(spread_for(float(np.median(level)), level_cut)),
    )
    return Fitted(
        model=EnergyModel(forecaster, iforest, scaling, arrays, "training"),
        keras_model=keras_model,
        train_windows=len(rows),
        raw_cut_kw=float(np.quantile(fit.power[normal], 1 - rate)),
        z_cut=threshold_for_rate(level, rate),
    )


def _rounded(value: float) -> float:
    return round(float(value), 6)


def _conversion_error(fitted: Fitted, test: Series) -> float:
    """How far the .tflite forecasts are from Keras on held-out readings, in spreads."""
    model = fitted.model
    rows = np.arange(min(2048, len(test)))
    tracked = track(model.fresh_normals(), test.machine.tolist(), test.mode, test.power, test.speed)
    history = history_of(tracked.steps, test.position(), rows, model.window)
    target = np.column_stack([test.mode[rows], tracked.steps[rows, 2]])
    keras_y = np.asarray(fitted.keras_model.predict(encode(history, target), verbose=0))
    keras_z = np.clip(persistence_z(history, target) + keras_y.reshape(-1), -Z_CLIP, Z_CLIP)
    error = float(np.abs(keras_z - model.forecast_z(history, target)).max())
    if not error <= CONVERSION_TOLERANCE_Z:
        raise FactoryError(f"{AGENT_ID}: the .tflite forecaster differs from Keras by {error:.2g}")
    return error


# -- serving as the agent does ----------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A series scored as the agent scores it."""

    tracked: Tracked
    history: np.ndarray
    forecast: np.ndarray
    loc: np.ndarray
    spread: np.ndarray
    warmed: np.ndarray
    score: np.ndarray


def serve(model: EnergyModel, series: Series) -> Served:
    """The series through fresh normals (the model's as saved), the forecaster and the
    forest, every machine's readings in order."""
    tracked = track(
        model.fresh_normals(), series.machine.tolist(), series.mode, series.power, series.speed
    )
    history = history_of(tracked.steps, series.position(), np.arange(len(series)), model.window)
    judged = model.judge(history, tracked, series.mode, series.power)
    loc, spread = tracked.own(series.mode)
    return Served(
        tracked, history, judged.forecast_kw, loc, spread, tracked.warmed(series.mode), judged.score
    )


@dataclass(frozen=True)
class Alarms:
    """What the orchestrator would have been told: where an alert was raised, and where
    an alarm stood (raised and not yet back to normal)."""

    raised: np.ndarray
    standing: np.ndarray


def told(series: Series, levels: list[Level], t: EnergySettings) -> Alarms:
    """Each reading's level through the gate's on-delay and off-delay (record time), as
    the agent's alerts reach the orchestrator."""
    on_s, off_s = t.delays_for("POWER_ANOMALY")
    gates: dict[int, Gate] = {}
    raised, standing = np.zeros(len(series), bool), np.zeros(len(series), bool)
    floor = RANK[t.alert_min_level]
    for i, (machine, at, level) in enumerate(
        zip(series.machine.tolist(), series.at_s.tolist(), levels, strict=True)
    ):
        gate = gates.setdefault(machine, Gate())
        step = gate_step(gate, level, at, t.alert_min_level, on_s, off_s, t.on_delay_skip_level)
        raised[i] = step == "alert"
        standing[i] = RANK[gate.reported] >= floor
    return Alarms(raised, standing)


def model_alerts(series: Series, served: Served, t: EnergySettings) -> Alarms:
    """The served agent's alerts: each machine's score smoothed, read with hysteresis,
    WARNING or CRITICAL as `logic` levels an anomaly, then gated."""
    memory = Conditioner()
    levels: list[Level] = []
    for machine, at, raw, power, forecast in zip(
        series.machine.tolist(),
        series.at_s.tolist(),
        served.score.tolist(),
        series.power.tolist(),
        served.forecast.tolist(),
        strict=True,
    ):
        score = memory.smooth(machine, "anomaly", raw, t.smoothing_records)
        anomalous = logic.is_anomaly(score, memory.previous_level(machine), t)
        level: Level = "NORMAL"
        if anomalous:
            level = "CRITICAL" if power >= t.critical_forecast_ratio * forecast else "WARNING"
        levels.append(memory.level(machine, level, at))
    return told(series, levels, t)


def flag_alerts(series: Series, flags: np.ndarray, t: EnergySettings) -> Alarms:
    """A single-feature baseline's alerts: its flags as WARNING through the same gate."""
    levels: list[Level] = ["WARNING" if f else "NORMAL" for f in flags.tolist()]
    return told(series, levels, t)


# -- evaluation ---------------------------------------------------------------------------


def horizon_steps(series: Series) -> int:
    """Readings in HORIZON_MINUTES at the data's median sampling interval (at least one)."""
    same = series.machine[1:] == series.machine[:-1]
    gaps = np.diff(series.at_s)[same]
    gaps = gaps[gaps > 0]
    if gaps.size == 0:
        return 1
    return max(1, round(HORIZON_MINUTES * 60.0 / float(np.median(gaps))))


def forecast_ahead(
    model: EnergyModel, series: Series, served: Served, origins: np.ndarray, steps: int
) -> np.ndarray:
    """The kW forecast `steps` readings after each origin reading, made right after it:
    recursively, each forecast fed back as the next reading, with the known mode and speed
    of the readings to come and the normals as they stood then."""
    tr = served.tracked
    after = origins + 1  # the normals and window as they stood once the origin was read
    history = served.history[after].copy()
    z = np.zeros(len(origins))
    for h in range(1, steps + 1):
        rows = origins + h
        code = series.mode[rows]
        loc, spread = tr.loc[after, code, 1], tr.spread[after, code, 1]
        speed_z = np.clip((series.speed[rows] - loc) / spread, -Z_CLIP, Z_CLIP)
        target = np.column_stack([code, speed_z])
        z = model.forecast_z(history, target)
        history = np.concatenate([history[:, 1:], np.column_stack([z, target])[:, None]], axis=1)
    code = series.mode[origins + steps]
    return tr.loc[after, code, 0] + tr.spread[after, code, 0] * z


def _origins(
    series: Series, judged: np.ndarray, steps: int, rng: np.random.Generator
) -> np.ndarray:
    """Sampled readings whose reading `steps` later, of the same machine, is judged."""
    n = len(series)
    rows = np.arange(max(0, n - steps))
    same = series.machine[rows + steps] == series.machine[rows]
    return _sample(rows[same & judged[rows + steps]], HORIZON_ORIGINS, rng)


def injected(
    series: Series, fault: str, normal: np.ndarray, seed: int
) -> tuple[Series, list[np.ndarray]]:
    """The series with `fault` ("surge" or "stall") injected into its `normal` readings,
    and each episode's rows."""
    rng = np.random.default_rng(seed)
    power = series.power.copy()
    changed = np.zeros(len(series), bool)
    episodes: list[np.ndarray] = []
    for machine in np.unique(series.machine):
        mine = np.flatnonzero(series.machine == machine)
        active = mine[series.mode[mine] == MODE_CODE["Active"]]
        working = float(np.median(series.power[active if active.size else mine]))
        last = len(mine) - EPISODE_READINGS  # the latest start an episode fits at
        if last < FIRST_FAULT:
            continue
        # Each machine's episodes start at its own offset, within the readings it has.
        offset = int(rng.integers(0, min(FAULT_EVERY - EPISODE_READINGS, last - FIRST_FAULT) + 1))
        for start in range(FIRST_FAULT + offset, last + 1, FAULT_EVERY):
            rows = mine[start : start + EPISODE_READINGS]
            if not normal[rows].all():
                continue
            if fault == "surge":
                power[rows] += rng.uniform(*SURGE_SHARE) * working
            elif series.mode[rows].tolist() == [MODE_CODE["Active"]] * EPISODE_READINGS:
                power[rows] *= STALL_TO
            else:
                continue
            changed[rows] = True
            episodes.append(rows)
    return replace(series, power=power, normal=series.normal & ~changed), episodes


@dataclass(frozen=True)
class Baselines:
    raw_cut_kw: float
    z_cut: float
    rate: float

    @property
    def names(self) -> tuple[str, str]:
        pct = 100 * (1 - self.rate)
        return RAW_BASELINE.format(pct=pct, cut=self.raw_cut_kw), Z_BASELINE.format(cut=self.z_cut)

    def alerts(self, series: Series, served: Served, t: EnergySettings) -> dict[str, Alarms]:
        raw, z = self.names
        level_z = np.abs(series.power - served.loc) / served.spread
        return {
            raw: flag_alerts(series, series.power > self.raw_cut_kw, t),
            z: flag_alerts(series, (level_z > self.z_cut) & served.warmed, t),
        }


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return round(float(np.abs(a - b).mean()), 4) if a.size else float("nan")


def evaluate(
    model: EnergyModel, test: Series, baselines: Baselines, seed: int, data: str
) -> tuple[list[Comparison], dict[str, Any]]:
    """The card's gating comparisons and the metrics behind them, on held-out readings."""
    t = EnergySettings()
    rng = np.random.default_rng(seed)
    served = serve(model, test)
    # Judged: readings of a mode whose normal is warmed up (the agent does not alarm
    # before) that are normal, a labelled event excluded; on a plant's data also those
    # LEARN_FENCE_Z spreads or more from their normal, which nobody labelled.
    level_z = (test.power - served.loc) / served.spread
    judged = served.warmed & test.normal & (np.abs(level_z) < LEARN_FENCE_Z)
    rows = np.flatnonzero(judged & (test.position() >= 1))
    steps = horizon_steps(test)
    origins = _origins(test, judged, steps, rng)
    ahead = forecast_ahead(model, test, served, origins, steps)
    minutes = f"{steps} reading(s), {HORIZON_MINUTES:g} min"
    forecast = {
        "forecast_mae_kw": _mae(served.forecast[rows], test.power[rows]),
        "persistence_mae_kw": _mae(test.power[rows - 1], test.power[rows]),
        "moving_average_mae_kw": _mae(served.loc[rows], test.power[rows]),
        "forecast_mae_kw_ahead": _mae(ahead, test.power[origins + steps]),
        "persistence_mae_kw_ahead": _mae(test.power[origins], test.power[origins + steps]),
        "horizon_readings": steps,
    }
    alarms = {"model": model_alerts(test, served, t), **baselines.alerts(test, served, t)}
    false_alarms = {name: _share(a.standing, judged) for name, a in alarms.items()}
    recall: dict[str, dict[str, float]] = {name: {} for name in false_alarms}
    episodes = 0
    for i, fault in enumerate(("surge", "stall")):
        faulty, found = injected(test, fault, judged, seed + i)
        if not found:
            # A stall needs a working machine; a surge any machine long enough to learn.
            if fault == "surge":
                raise TrainingError(
                    f"{AGENT_ID}: no held-out machine has the {FIRST_FAULT + EPISODE_READINGS} "
                    f"normal readings in a row a fault is injected into ({data})"
                )
            continue
        episodes += len(found)
        faulty_served = serve(model, faulty)
        caught = {"model": model_alerts(faulty, faulty_served, t)}
        caught.update(baselines.alerts(faulty, faulty_served, t))
        for name, a in caught.items():
            recall[name][fault] = round(float(np.mean([a.raised[e].any() for e in found])), 4)
    raw_name, z_name = baselines.names

    def mean_recall(name: str) -> float:
        return float(np.mean(list(recall[name].values())))

    where = f"{data}, {EPISODE_READINGS}-reading faults injected 1 in {FAULT_EVERY} readings"
    comparisons = [
        Comparison("forecast_mae_kw", forecast["forecast_mae_kw"], "persistence (last reading)",
                   forecast["persistence_mae_kw"], True, f"{data}, one reading ahead"),
        Comparison("forecast_mae_kw", forecast["forecast_mae_kw"],
                   "moving average (the machine's normal in the mode)",
                   forecast["moving_average_mae_kw"], True, f"{data}, one reading ahead"),
        Comparison("forecast_mae_kw", forecast["forecast_mae_kw_ahead"],
                   "persistence (last reading)", forecast["persistence_mae_kw_ahead"], True,
                   f"{data}, {minutes} ahead"),
        Comparison("fault_recall", mean_recall("model"), raw_name, mean_recall(raw_name), False,
                   f"{where} (surge +30-60 % of normal, stall to 20 %), alerts as served"),
        Comparison("fault_recall", mean_recall("model"), z_name, mean_recall(z_name), False,
                   f"{where}, alerts as served", gate=False),
        Comparison("false_alarm_rate", false_alarms["model"],
                   f"target (2 x alert rate {baselines.rate:g})", 2 * baselines.rate, True,
                   f"{data}, normal readings, alerts as served"),
    ]  # fmt: skip
    metrics = {
        **forecast,
        "false_alarm_rate": false_alarms["model"],
        "flagged_rate": _share(served.score >= t.anomaly_score_threshold, judged),
        "fault_recall": recall["model"],
        "baseline_false_alarm_rate": {k: v for k, v in false_alarms.items() if k != "model"},
        "baseline_fault_recall": {k: v for k, v in recall.items() if k != "model"},
        "test_readings": len(test),
        "judged_readings": int(judged.sum()),
        "fault_episodes": episodes,
    }
    return comparisons, metrics


def _share(flags: np.ndarray, rows: np.ndarray) -> float:
    return round(float(flags[rows].mean()), 5) if rows.any() else 0.0


# -- the simulator ------------------------------------------------------------------------


def simulated(
    seed: int, machines: int, ticks: int, params: Any = None, first_id: int = 0
) -> Series:
    """Simulated readings as a Series, events (power anomalies, electrical hazards) marked
    not normal."""
    kw = {} if params is None else {"params": params}
    cols = (
        FactorySimulator(seed=seed, machines=machines, step_minutes=STEP_MINUTES, **kw)
        .run(ticks)
        .columns
    )
    order = np.argsort(cols["machine_id"], kind="stable")  # tick-major -> machine-major
    event = np.asarray(cols["power_anomaly"], bool) | (cols["hazard_type"] == "ELECTRICAL_HAZARD")
    mode = np.vectorize(MODE_CODE.__getitem__, otypes=[np.int64])(cols["operation_mode"])
    at = np.asarray(cols["timestamp"], "datetime64[ms]").astype(np.int64) / 1000.0
    return Series(
        machine=np.asarray(cols["machine_id"], np.int64)[order] + first_id,
        mode=mode[order],
        power=np.asarray(cols["power_consumption_kw"], np.float64)[order],
        speed=np.asarray(cols["production_speed"], np.float64)[order],
        at_s=at[order],
        normal=~event[order],
    )


def _shifted(
    model: EnergyModel, baselines: Baselines, seed: int, ticks: int, machines: int
) -> tuple[list[Comparison], dict[str, Any]]:
    """False alarms on each shifted plant's normal readings (and the forecast on the big
    and the small), for information: their machines are new, with their own normals."""
    t = EnergySettings()
    rows: list[Comparison] = []
    metrics: dict[str, Any] = {}
    raw_name = baselines.names[0]
    for name, params in SHIFTED_PLANTS.items():
        series = simulated(seed + 1, machines, ticks, params, SHIFTED_MACHINE_IDS)
        served = serve(model, series)
        judged = served.warmed & series.normal
        far = _share(model_alerts(series, served, t).standing, judged)
        base = _share(baselines.alerts(series, served, t)[raw_name].standing, judged)
        metrics[f"false_alarm_rate_{name}"] = far
        data = f"shifted plant '{name}' ({machines} new machines), normal readings"
        rows.append(Comparison("false_alarm_rate", far, raw_name, base, True, data, gate=False))
        if name in ("big", "small"):
            r = np.flatnonzero(judged & (series.position() >= 1))
            mae = _mae(served.forecast[r], series.power[r])
            metrics[f"forecast_mae_kw_{name}"] = mae
            rows.append(Comparison(
                "forecast_mae_kw", mae, "persistence (last reading)",
                _mae(series.power[r - 1], series.power[r]), True,
                f"shifted plant '{name}', one reading ahead", gate=False,
            ))  # fmt: skip
    return rows, metrics


def _files(out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "forecaster": out_dir / "energy_forecaster.tflite",
        "iforest": out_dir / "energy_iforest.npz",
        "meta": out_dir / "energy_meta.json",
    }


def _save(
    out_dir: Path,
    files: dict[str, Path],
    fitted: Fitted,
    model: EnergyModel,
    metrics: dict[str, Any],
    trained_on: Simulation | dict[str, Any],
    training: dict[str, Any],
    comparisons: list[Comparison],
) -> dict[str, Any]:
    import keras
    import tensorflow as tf

    assert model.iforest is not None
    files["meta"].write_text(model.scaling.to_json(), encoding="utf-8")
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        {**metrics, "train_windows": fitted.train_windows},
        trained_on,
        training={
            **training,
            "window": model.window,
            "warmup_readings": WARMUP,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
        forests={"iforest": ForestFile(files["iforest"].name, model.iforest, model.normal_arrays)},
        written={"forecaster": files["forecaster"], "meta": files["meta"]},
        card=card(comparisons, alerts="counted as the agent tells them: smoothed, "
                  "hysteresis, on-delay (default [agents.energy] settings)"),
    )  # fmt: skip


def train_energy(
    out_dir: Path,
    seed: int = 1234,
    ticks: int = 6000,
    machines: int = 50,
    max_train_windows: int = 60_000,
    epochs: int = 6,
    units: int = 32,
    max_iforest_rows: int = 40_000,
    target_alert_rate: float = 0.005,
    shifted_ticks: int = 1500,
    shifted_machines: int = 10,
) -> dict[str, Any]:
    plant = simulated(seed, machines, ticks)
    train = plant.machine < held_out_from(machines)
    fit, test = plant.take(np.flatnonzero(train)), plant.take(np.flatnonzero(~train))
    files = _files(out_dir)
    scaling = Scaling.uncalibrated(WINDOW, True, True)
    fitted = _fit(
        fit, fit.normal, fit.normal, scaling, files,
        rate=target_alert_rate, seed=seed, units=units, epochs=epochs,
        max_train_windows=max_train_windows, max_iforest_rows=max_iforest_rows,
    )  # fmt: skip
    # The simulated machines' ids mean nothing in a plant: the model keeps the plant-wide
    # prior only, and every machine served learns its own normal.
    normals = normals_from_arrays(fitted.model.normal_arrays)
    for modal in normals:
        modal.known.clear()
    m = fitted.model
    model = EnergyModel(m.forecaster, m.iforest, m.scaling, normals_arrays(normals), "training")
    baselines = Baselines(fitted.raw_cut_kw, fitted.z_cut, target_alert_rate)
    where = f"held-out machines {held_out_from(machines)}..{machines}"
    comparisons, metrics = evaluate(model, test, baselines, seed, where)
    shifted_rows, shifted = _shifted(model, baselines, seed, shifted_ticks, shifted_machines)
    metrics.update(shifted)
    metrics["litert_vs_keras_max_abs_z"] = float(f"{_conversion_error(fitted, test):.2g}")
    return _save(
        out_dir, files, fitted, model, metrics,
        Simulation(seed, machines, ticks, STEP_MINUTES),
        {"lstm_units": units, "epochs": epochs, "train_windows_max": max_train_windows,
         "iforest_rows_max": max_iforest_rows, "target_alert_rate": target_alert_rate},
        comparisons + shifted_rows,
    )  # fmt: skip


# -- a plant's own data -------------------------------------------------------------------


def plant_series(data: PlantData) -> tuple[Series, Scaling, list[str]]:
    """The plant's readings as a Series, the scaling to fit (which of operation_mode and
    production_speed the model uses), and in words what stood in for a missing one."""
    cols = data.columns
    n = len(data)
    notes = []
    if data.has("operation_mode"):
        modes = np.asarray(cols["operation_mode"])
        unknown = sorted(set(np.unique(modes).tolist()) - set(MODE_CODE))
        if unknown:
            raise TrainingError(f"{AGENT_ID}: unknown operation modes {unknown}")
        mode = np.vectorize(MODE_CODE.__getitem__, otypes=[np.int64])(modes)
    else:
        mode = np.zeros(n, np.int64)
        notes.append("no operation_mode: every reading taken as Active")
    speed_known = data.has("production_speed") and bool(np.isfinite(cols["production_speed"]).all())
    speed = np.asarray(cols["production_speed"], np.float64) if speed_known else np.zeros(n)
    if not speed_known:
        notes.append("no production_speed: the forecaster does without it")
    series = Series(
        machine=np.asarray(cols["machine_id"], np.int64),
        mode=mode,
        power=np.asarray(cols["power_consumption_kw"], np.float64),
        speed=speed,
        at_s=np.asarray(cols["timestamp"], "datetime64[ms]").astype(np.int64) / 1000.0,
        normal=np.ones(n, bool),
    )
    return series, Scaling.uncalibrated(WINDOW, data.has("operation_mode"), speed_known), notes


def recent(data: PlantData, max_rows: int) -> PlantData:
    """At most about `max_rows` readings: each machine's latest, in proportion to how many
    it has. Tracking every reading takes about 150 bytes of memory."""
    n = len(data)
    if n <= max_rows:
        return data
    ids = data.columns["machine_id"]
    keep = np.zeros(n, bool)
    for machine in data.machines():
        rows = np.flatnonzero(ids == machine)  # sorted by time within the machine
        keep[rows[len(rows) - max(1, len(rows) * max_rows // n) :]] = True
    return replace(data, columns={name: col[keep] for name, col in data.columns.items()})


def train_energy_plant(
    data: PlantData,
    out_dir: Path,
    options: PlantOptions,
    epochs: int = 6,
    units: int = 32,
    max_train_windows: int = 60_000,
    max_iforest_rows: int = 40_000,
    max_rows: int = 1_000_000,
) -> dict[str, Any]:
    """The models from a plant's own power readings; no labels needed. machine_id,
    timestamp and power_consumption_kw are required; without operation_mode every reading
    is Active, without production_speed the forecaster does without it. Of a longer
    history the latest `max_rows` readings are used."""
    needed = ("machine_id", "timestamp", "power_consumption_kw")
    missing = [name for name in needed if not data.has(name)]
    if missing:
        raise TrainingError(
            f"{AGENT_ID}: the plant data lacks {', '.join(missing)}, needed for the power "
            f"models ({data.source or 'plant data'})"
        )
    bad = np.flatnonzero(~np.isfinite(data.columns["power_consumption_kw"]))
    if bad.size:
        raise TrainingError(
            f"{AGENT_ID}: power_consumption_kw is empty or not a number in {bad.size} row(s) "
            f"(first: row {bad[0] + 1} of {data.source or 'the plant data'})"
        )
    used = recent(data, max_rows)
    series, scaling, stand_ins = plant_series(used)
    held_out, how = held_out_rows(used, options.held_out_share)
    fit, test = series.take(np.flatnonzero(~held_out)), series.take(np.flatnonzero(held_out))
    if len(fit) < MIN_FIT_ROWS or len(test) < MIN_TEST_ROWS:
        raise TrainingError(
            f"{AGENT_ID}: {len(fit)} training and {len(test)} held-out readings ({how}); at "
            f"least {MIN_FIT_ROWS} and {MIN_TEST_ROWS} are needed"
        )
    files = _files(out_dir)
    rate = options.target_alert_rate
    everything = np.ones(len(fit), bool)
    fitted = _fit(
        fit, everything, everything, scaling, files,
        rate=rate, seed=options.seed, units=units, epochs=epochs,
        max_train_windows=max_train_windows, max_iforest_rows=max_iforest_rows,
    )  # fmt: skip
    baselines = Baselines(fitted.raw_cut_kw, fitted.z_cut, rate)
    comparisons, metrics = evaluate(fitted.model, test, baselines, options.seed, how)
    metrics["litert_vs_keras_max_abs_z"] = float(f"{_conversion_error(fitted, test):.2g}")
    metrics["train_readings"] = len(fit)
    metrics["readings_used"] = len(used)
    return _save(
        out_dir, files, fitted, fitted.model, metrics,
        {"source": data.source, "held_out": how, "stand_ins": stand_ins},
        {"lstm_units": units, "epochs": epochs, "train_windows_max": max_train_windows,
         "iforest_rows_max": max_iforest_rows, "seed": options.seed, "target_alert_rate": rate},
        comparisons,
    )  # fmt: skip
