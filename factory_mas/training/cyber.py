"""Train the network anomaly model, on simulated traffic or on a plant's own history.

Unsupervised: each machine's normal (`Normals`) and the forest learn from normal traffic
only (the simulator's attack episodes and a plant's CYBER_ATTACK incidents are left out);
the two thresholds are set so that `target_alert_rate` of the normal training records
score above them, half of it each. The card judges the model on held-out rows against a
one-reading threshold and against each channel's robust z alone: its false alarms on
normal traffic, and how many of the faults injected into that traffic it catches (one
channel failing alone, or all three rising together as in a flood).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from ..agents.cyber.model import (
    AGENT_ID,
    FEATURES,
    MAX_GAP_S,
    MIN_SPREAD,
    READINGS,
    Calibration,
    CyberModel,
    LastReadings,
    Scored,
    epoch_seconds,
    features,
)
from ..errors import TrainingError
from ..ml.forest import ForestIsolation
from ..ml.normal import Normals, prior_only
from ..sim.synthetic import SHIFTED_PLANTS, FactorySimulator, SimParams
from .cards import Comparison, card
from .common import ForestFile, Simulation, is_held_out, save_models
from .forests import compile_as
from .plant import PlantData, PlantOptions, held_out_rows, threshold_for_rate, utc_ms

# One record per machine per minute, as the dataset and the replay send them: the deltas
# the model learns are changes over one minute.
STEP_MINUTES = 1.0
# Faults injected into held-out normal traffic, added to the readings (so they mean the
# same on a slow network as on a fast one): one channel failing alone, and a flood that
# raises all three moderately at once.
FAULTS: dict[str, dict[str, float]] = {
    "latency": {"network_latency_ms": 150.0},
    "loss": {"packet_loss_pct": 15.0},
    "errors": {"error_rate_pct": 20.0},
    "multi": {"network_latency_ms": 40.0, "packet_loss_pct": 4.0, "error_rate_pct": 5.0},
}
# One record in this many of the held-out rows gets each fault: isolated records, so the
# faults do not become each machine's normal.
FAULT_EVERY = 25
MIN_FIT_ROWS = 200
# Robust z from which a plant's unlabelled reading is taken for an anomaly, not normal
# traffic: about 1e-15 of a normal distribution's readings lie beyond it.
FENCE_Z = 8.0
SIM_LATENCY_BASELINE_MS = 32.0
SHIFTED_MACHINE_IDS = 10_000


def far_out(cols: Mapping[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Of `rows`, those with a reading beyond FENCE_Z robust spreads above its machine's
    normal among these rows: a plant's history holds attacks and failures nobody
    labelled, and a threshold set on them would let the next ones through."""
    ids = np.asarray(cols["machine_id"])[rows].tolist()
    x = np.column_stack([np.asarray(cols[name], np.float64)[rows] for name in READINGS])
    normals = Normals.fitted(READINGS, ids, x, min_spread=MIN_SPREAD)
    mask = np.zeros(len(rows), bool)
    mask[rows] = normals.zscores(ids, x, learn=False).max(axis=1) > FENCE_Z
    return mask


def fitted_model(
    cols: Mapping[str, np.ndarray], fit: np.ndarray, rate: float, seed: int, trees: int
) -> CyberModel:
    """The normals, forest and thresholds from the rows `fit` (normal traffic) of `cols`
    (which carry the deltas)."""
    ids = np.asarray(cols["machine_id"])[fit]
    x = features(cols)[fit]
    k = len(READINGS)
    normals = Normals.fitted(READINGS, ids.tolist(), x[:, :k], min_spread=MIN_SPREAD)
    # Each training row against its machine's fitted normal, as the forest will see it.
    loc = np.array([normals.normal_of(m).loc for m in ids.tolist()])
    spread = np.array([normals.normal_of(m).spread for m in ids.tolist()])
    relative = np.column_stack([(x[:, :k] - loc) / spread, x[:, k:] / spread])
    fitted = IsolationForest(n_estimators=trees, max_samples=256, random_state=seed, n_jobs=1)
    forest = compile_as(fitted.fit(relative), ForestIsolation)
    raw = -forest.score_samples(relative)
    channel = relative[:, :k].max(axis=1)
    calibration = Calibration(
        raw_median=float(np.median(raw)),
        raw_threshold=threshold_for_rate(raw, rate / 2),
        channel_median=float(np.median(channel)),
        channel_threshold=threshold_for_rate(channel, rate / 2),
    )
    return CyberModel(forest, calibration, normals.arrays(), version="")


def score_rows(model: CyberModel, cols: Mapping[str, np.ndarray]) -> Scored:
    """The model's decisions on these rows in time order per machine, with the normals
    learning on from training's as the agent's do (smoothing_records 1, the default,
    makes these the agent's is_anomaly)."""
    with_deltas = LastReadings().add_deltas(cols, epoch_seconds(cols["timestamp"]))
    ids = np.asarray(cols["machine_id"]).tolist()
    return model.score(ids, features(with_deltas), model.fresh_normals())


def injected(cols: Mapping[str, np.ndarray], fault: str, seed: int) -> tuple[dict, np.ndarray]:
    """`cols` with `fault` added to one record in FAULT_EVERY, and the mask of those."""
    rng = np.random.default_rng(seed)
    n = len(cols["machine_id"])
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: max(1, n // FAULT_EVERY)]] = True
    out = {name: np.asarray(v).copy() for name, v in cols.items()}
    for name, added in FAULTS[fault].items():
        out[name] = np.where(mask, out[name] + added, out[name])
    return out, mask


@dataclass(frozen=True)
class Evaluation:
    """False alarms on normal rows and recall per injected fault, for the model and for
    each baseline (name -> the same figures)."""

    false_alarm_rate: dict[str, float]
    recall: dict[str, dict[str, float]]

    def fault_recall(self, name: str) -> float:
        return float(np.mean(list(self.recall[name].values())))


def evaluate(
    model: CyberModel,
    normal: Mapping[str, np.ndarray],
    baselines: Mapping[str, tuple[int, float]],
    seed: int,
) -> Evaluation:
    """`baselines` maps a name to (feature column, cut): the model's own per-machine z of
    that feature (index < 3) above the cut, or, as index -1 - j, reading j above it."""

    def flags(scored: Scored, cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"model": scored.flagged}
        for name, (j, cut) in baselines.items():
            values = scored.zscores[:, j] if j >= 0 else np.asarray(cols[READINGS[-1 - j]])
            out[name] = values > cut
        return out

    clean = flags(score_rows(model, normal), normal)
    recall: dict[str, dict[str, float]] = {name: {} for name in clean}
    for i, fault in enumerate(FAULTS):
        cols, mask = injected(normal, fault, seed + i)
        for name, flagged in flags(score_rows(model, cols), cols).items():
            recall[name][fault] = round(float(flagged[mask].mean()), 4)
    return Evaluation({n: round(float(f.mean()), 5) for n, f in clean.items()}, recall)


def channel_baselines(model: CyberModel, fit_cols: Mapping[str, np.ndarray], rate: float) -> dict:
    """Each channel's robust z alone, its cut at `rate` of the training rows."""
    z = score_rows(model, fit_cols).zscores
    return {
        f"robust z of {name} alone": (j, threshold_for_rate(z[:, j], rate))
        for j, name in enumerate(READINGS)
    }


def comparisons(result: Evaluation, data: str, target_rate: float) -> list[Comparison]:
    """The gating comparisons: fault recall beside every baseline, and false alarms
    within twice the target alert rate (the issue's 1 % at the default 0.5 %)."""
    out = [
        Comparison(
            "fault_recall",
            result.fault_recall("model"),
            name,
            result.fault_recall(name),
            lower_is_better=False,
            data=f"{data}, faults injected into 1 in {FAULT_EVERY} normal records",
        )
        for name in result.recall
        if name != "model"
    ]
    out.append(
        Comparison(
            "false_alarm_rate",
            result.false_alarm_rate["model"],
            f"target (2 x alert rate {target_rate:g})",
            2 * target_rate,
            lower_is_better=True,
            data=f"{data}, normal records",
        )
    )
    return out


def _fit_split(cols: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(v)[rows] for name, v in cols.items()}


def train_cyber(
    out_dir: Path,
    seed: int = 1234,
    ticks: int = 4000,
    machines: int = 50,
    trees: int = 100,
    target_alert_rate: float = 0.005,
    shifted_ticks: int = 1500,
    shifted_machines: int = 10,
) -> dict[str, Any]:
    frame = FactorySimulator(seed=seed, machines=machines, step_minutes=STEP_MINUTES).run(ticks)
    raw_cols = frame.columns
    cols = LastReadings().add_deltas(raw_cols, epoch_seconds(raw_cols["timestamp"]))
    attack = np.asarray(cols["cyber_attack"], bool)
    held_out = is_held_out(cols["machine_id"], machines)
    fit = ~held_out & ~attack
    model = fitted_model(cols, fit, target_alert_rate, seed, trees)

    latency = (-1, SIM_LATENCY_BASELINE_MS)
    baselines = {
        "latency > 32 ms": latency,
        **channel_baselines(model, _fit_split(raw_cols, fit), target_alert_rate),
    }
    test = _fit_split(raw_cols, held_out)
    scored = score_rows(model, test)
    y = attack[held_out]
    f1 = {
        "model": _f1(scored.flagged, y),
        "latency > 32 ms": _f1(test["network_latency_ms"] > 32.0, y),
    }
    normal_test = _fit_split(raw_cols, held_out & ~attack)
    result = evaluate(model, normal_test, baselines, seed)
    where = f"held-out machines {machines * 4 // 5 + 1}..{machines}"
    rows = comparisons(result, where, target_alert_rate)
    rows.append(
        Comparison(
            "f1", f1["model"], "latency > 32 ms", f1["latency > 32 ms"], False,
            f"{where}, the simulator's attack episodes (a flood the threshold was tuned to)",
            gate=False,
        )
    )  # fmt: skip
    shifted = {}
    for name, params in SHIFTED_PLANTS.items():
        far, baseline_far = _shifted_false_alarms(
            model, params, seed, shifted_ticks, shifted_machines
        )
        shifted[name] = far
        rows.append(
            Comparison(
                "false_alarm_rate", far, "latency > 32 ms", baseline_far, True,
                f"shifted plant '{name}', normal records", gate=False,
            )
        )  # fmt: skip
    metrics = {
        "false_alarm_rate": result.false_alarm_rate["model"],
        "fault_recall": result.recall["model"],
        "attack_f1": f1["model"],
        "attack_recall": round(float(scored.flagged[y].mean()), 4),
        "shifted_false_alarm_rate": shifted,
        "train_rows": int(fit.sum()),
        "test_rows": int(held_out.sum()),
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
            "target_alert_rate": target_alert_rate,
            "threshold": "forest and channel check each at half the target alert rate "
            "of the normal training records",
        },
        # The held-out machines were judged from the prior, as every machine of a plant
        # or of the demo starts from it.
        forests={"model": _forest_file(model, machines=False)},
        card=card(rows, baseline_recall=result.recall),
    )


def _forest_file(model: CyberModel, machines: bool = True) -> ForestFile:
    """The model's file; with `machines` False its normals are the prior alone."""
    normals = model.normal_arrays if machines else prior_only(model.normal_arrays)
    return ForestFile("cyber_model.npz", model.forest, {**model.calibration.arrays(), **normals})


def _f1(flagged: np.ndarray, y: np.ndarray) -> float:
    true_pos = float((flagged & y).sum())
    return round(2 * true_pos / max(1.0, float(flagged.sum() + y.sum())), 4)


def _shifted_false_alarms(
    model: CyberModel, params: SimParams, seed: int, ticks: int, machines: int
) -> tuple[float, float]:
    """Model and `latency > 32 ms` false alarms on a shifted plant's normal traffic. Its
    machines are numbered apart from the training plant's: they are other machines, which
    start from the prior and learn their own normal."""
    sim = FactorySimulator(
        seed=seed + 1, machines=machines, step_minutes=STEP_MINUTES, params=params
    )
    cols = sim.run(ticks).columns
    normal = _fit_split(cols, ~np.asarray(cols["cyber_attack"], bool))
    normal["machine_id"] = normal["machine_id"] + SHIFTED_MACHINE_IDS
    flagged = score_rows(model, normal).flagged
    baseline = np.asarray(normal["network_latency_ms"]) > SIM_LATENCY_BASELINE_MS
    return round(float(flagged.mean()), 5), round(float(baseline.mean()), 5)


def attack_rows(data: PlantData) -> np.ndarray:
    """Rows inside a CYBER_ATTACK incident; one without a machine covers the whole plant."""
    mask = np.zeros(len(data), bool)
    ids, times = data.columns["machine_id"], data.columns["timestamp"]
    for label in data.labelled("incident"):
        if label.detail != "CYBER_ATTACK":
            continue
        start, end = (utc_ms(t) for t in (label.start, label.end or label.start))
        inside = (times >= start) & (times <= end)
        mask |= inside if label.machine_id is None else inside & (ids == label.machine_id)
    return mask


def train_cyber_plant(
    data: PlantData, out_dir: Path, options: PlantOptions, trees: int = 100
) -> dict[str, Any]:
    """The model from a plant's own history; no labels needed (CYBER_ATTACK incidents, if
    given, are left out of the fit and their recall reported)."""
    needed = ["machine_id", "timestamp", *READINGS]
    missing = [name for name in needed if not data.has(name)]
    if missing:
        raise TrainingError(
            f"{AGENT_ID}: the plant data lacks {', '.join(missing)}, needed for the network "
            f"model ({data.source or 'plant data'})"
        )
    raw_cols = {name: data.columns[name] for name in needed}
    for name in READINGS:
        bad = np.flatnonzero(~np.isfinite(raw_cols[name]))
        if bad.size:
            raise TrainingError(
                f"{AGENT_ID}: {name} is empty or not a number in {bad.size} row(s) "
                f"(first: row {bad[0] + 1} of {data.source or 'the plant data'})"
            )
    attack = attack_rows(data)
    held_out, how = held_out_rows(data, options.held_out_share)
    unlabelled = far_out(raw_cols, ~held_out & ~attack) | far_out(raw_cols, held_out & ~attack)
    normal = ~attack & ~unlabelled
    fit, test = ~held_out & normal, held_out & normal
    if fit.sum() < MIN_FIT_ROWS or test.sum() < FAULT_EVERY:
        raise TrainingError(
            f"{AGENT_ID}: {int(fit.sum())} normal training and {int(test.sum())} held-out "
            f"rows ({how}); at least {MIN_FIT_ROWS} and {FAULT_EVERY} are needed"
        )
    cols = LastReadings().add_deltas(raw_cols, epoch_seconds(raw_cols["timestamp"]))
    rate = options.target_alert_rate
    model = fitted_model(cols, fit, rate, options.seed, trees)
    fit_cols = _fit_split(raw_cols, fit)
    latency_cut = float(np.quantile(fit_cols["network_latency_ms"], 1 - rate))
    baselines = {
        f"latency > {latency_cut:.4g} ms (training p{100 * (1 - rate):g})": (-1, latency_cut),
        **channel_baselines(model, fit_cols, rate),
    }
    result = evaluate(model, _fit_split(raw_cols, test), baselines, options.seed)
    metrics: dict[str, Any] = {
        "false_alarm_rate": result.false_alarm_rate["model"],
        "fault_recall": result.recall["model"],
        "train_rows": int(fit.sum()),
        "test_rows": int(held_out.sum()),
        "attack_rows_left_out": int(attack.sum()),
        # Counted apart from false alarms: beyond FENCE_Z, not normal traffic.
        "unlabelled_outlier_rows": int(unlabelled.sum()),
    }
    if (attack & held_out).any():
        flagged = score_rows(model, _fit_split(raw_cols, held_out)).flagged
        metrics["labelled_attack_recall"] = round(float(flagged[attack[held_out]].mean()), 4)
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        {"source": data.source, "held_out": how},
        training={"trees": trees, "seed": options.seed, "target_alert_rate": rate},
        forests={"model": _forest_file(model)},
        card=card(
            comparisons(result, how, rate),
            baseline_false_alarm_rate=result.false_alarm_rate,
            baseline_recall=result.recall,
        ),
    )
