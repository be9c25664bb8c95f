"""Train the hazard classifier, on simulated plant history or on a plant's own incidents.

Hazards are rare (a few per machine-year each), so the simulation runs them ten times as
often and most hazard-free rows are left out of the fit: the forest then sees every kind
often enough to learn it. The held-out machines (the last fifth of the ids) are scored
in full, as served: new to the model, each machine's normal learnt from its own readings
as they come. The false-alarm rate on their hazard-free rows does not depend on how
often hazards occur, so it carries over to the plant.

A plant's own data teaches the classifier only with incident labels (FIRE_RISK,
MECHANICAL_HAZARD, ELECTRICAL_HAZARD): rows of the incident's machine from its start to
its end are that hazard. Without them nothing can be learnt about hazards, and the model
saved is limits only: the physical limits of the settings, no classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score
from sklearn.tree import DecisionTreeClassifier

from ..agents.safety.model import (
    AGENT_ID,
    CHANNELS,
    CLASSES,
    FEATURES,
    HAZARDS,
    MIN_SPREAD,
    SafetyModel,
    features,
    fitted_normals,
    normal_keys,
    readings,
)
from ..errors import TrainingError
from ..ml.forest import ForestClassifier
from ..ml.normal import Normals
from ..settings import SafetySettings
from ..sim.synthetic import DEFAULT_PARAMS, SHIFTED_PLANTS, FactorySimulator, SimParams
from .cards import Comparison, card
from .common import ForestFile, Simulation, held_out_from, is_held_out, save_models
from .forests import compile_as
from .plant import PlantData, PlantOptions, held_out_rows, utc_ms

# "A hazard is likelier than not": the default warning cut, where alerts start.
ALERT_SCORE = 0.5
SHIFTED = ("hot", "big", "small")
TREE_BASELINE = "3-split tree on raw readings"
LIMITS_BASELINE = "physical limits alone"


def boosted_hazards(params: SimParams, factor: float) -> SimParams:
    return replace(
        params,
        fire_risk_rate_per_h=params.fire_risk_rate_per_h * factor,
        mechanical_hazard_rate_per_h=params.mechanical_hazard_rate_per_h * factor,
        electrical_hazard_rate_per_h=params.electrical_hazard_rate_per_h * factor,
    )


def _raw(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The readings as they are (no machine's normal): the baseline tree's inputs."""
    return features(readings(columns), columns["operation_mode"])


def _served(model: SafetyModel, columns: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The class each row is served as (a limit exceeded names its hazard) and whether it
    alerts, by the default settings."""
    probabilities, exceeded = model.assess(columns, SafetySettings())
    named = np.asarray(CLASSES)[probabilities.argmax(axis=1)]
    limit = np.asarray([e is not None for e in exceeded])
    named = np.where(limit, [e[0] if e else "" for e in exceeded], named)
    return named, limit | (1.0 - probabilities[:, 0] >= ALERT_SCORE)


def _fit(x: np.ndarray, y: np.ndarray, seed: int) -> ForestClassifier:
    # Half the features per split, not the usual square root: with two of seven, many
    # splits cannot see temperature at all, and fire rows kept a share of "no hazard".
    fitted = RandomForestClassifier(
        n_estimators=60,
        max_features=0.5,
        max_depth=14,
        min_samples_leaf=3,
        random_state=seed,
        n_jobs=1,
    ).fit(x, y)
    return compile_as(fitted, ForestClassifier)


def _macro_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(f1_score(truth, predicted, labels=list(CLASSES), average="macro", zero_division=0))


def _false_alarms(truth: np.ndarray, alerting: np.ndarray) -> float:
    calm = truth == "NONE"
    return float(alerting[calm].mean()) if calm.any() else 0.0


def _limits_model() -> SafetyModel:
    return SafetyModel(None, Normals(CHANNELS, np.zeros(len(CHANNELS)), MIN_SPREAD), "")


def _compare(
    model: SafetyModel,
    tree: DecisionTreeClassifier,
    columns: Mapping[str, np.ndarray],
    truth: np.ndarray,
    data: str,
) -> tuple[list[Comparison], dict[str, float]]:
    """The held-out comparisons: served macro F1 beside the tree's and the limits' alone,
    and the false-alarm rate beside the tree's (which, like any rule on raw readings, can
    match a zero on a plant like the one it learnt from: for information)."""
    named, alerting = _served(model, columns)
    tree_named = tree.predict(_raw(columns))
    limits_named, _ = _served(_limits_model(), columns)
    f1, fa = _macro_f1(truth, named), _false_alarms(truth, alerting)
    tree_f1, tree_fa = _macro_f1(truth, tree_named), _false_alarms(truth, tree_named != "NONE")
    comparisons = [
        Comparison("macro_f1", f1, TREE_BASELINE, tree_f1, False, data),
        Comparison("macro_f1", f1, LIMITS_BASELINE, _macro_f1(truth, limits_named), False, data),
        Comparison("false_alarm_rate", fa, TREE_BASELINE, tree_fa, True, data, gate=False),
    ]
    metrics = {
        "accuracy": round(float((named == truth).mean()), 4),
        "macro_f1": round(f1, 4),
        "false_alarm_rate": round(fa, 5),
        "hazard_recall": round(float(alerting[truth != "NONE"].mean()), 4)
        if (truth != "NONE").any()
        else 0.0,
        "test_rows": len(truth),
        **{f"test_rows_{c}": int((truth == c).sum()) for c in CLASSES},
    }
    return comparisons, metrics


def _baseline_tree(x: np.ndarray, y: np.ndarray, seed: int) -> DecisionTreeClassifier:
    return DecisionTreeClassifier(max_leaf_nodes=4, random_state=seed).fit(x, y)


# A hazard-free reading this many spreads from its machine's normal (a power surge, the
# heat of a worn bearing) is what the classifier must learn is not a hazard.
UNUSUAL_Z = 3.0


def _fit_rows(
    y: np.ndarray, rows: np.ndarray, max_normal: int, seed: int, unusual: np.ndarray
) -> np.ndarray:
    """The training rows: every hazard row, every unusual hazard-free one, and at most
    `max_normal` of the other hazard-free ones. Sampled away, the rare surges and worn
    machines left the forest to guess, and each guess was an alarm."""
    rng = np.random.default_rng(seed)
    none = y[rows] == "NONE"
    normal = rows[none & ~unusual[rows]]
    if len(normal) > max_normal:
        normal = rng.choice(normal, max_normal, replace=False)
    return np.sort(np.concatenate([rows[~none | unusual[rows]], normal]))


def _trained(
    columns: Mapping[str, np.ndarray], y: np.ndarray, rows: np.ndarray, max_normal: int, seed: int
) -> tuple[SafetyModel, DecisionTreeClassifier, int]:
    """The forest on each training machine's z-scores against its own normal, the baseline
    tree on the raw readings, and how many rows they learnt from."""
    x = readings(columns)
    keys = normal_keys(columns)
    train_keys = [keys[i] for i in rows.tolist()]
    normals = fitted_normals(train_keys, x[rows])
    z = normals.zscores(train_keys, x[rows], learn=False)
    unusual = np.abs(z).max(axis=1) > UNUSUAL_Z
    fit = _fit_rows(y[rows], np.arange(len(rows)), max_normal, seed, unusual)
    mode = np.asarray(columns["operation_mode"])[rows]
    classifier = _fit(features(z, mode)[fit], y[rows][fit], seed)
    tree = _baseline_tree(_raw(columns)[rows][fit], y[rows][fit], seed)
    return SafetyModel(classifier, normals, ""), tree, len(fit)


def _fresh(model: SafetyModel, machines: bool = True) -> SafetyModel:
    """The model as a new deployment serves it: the normals as saved, not as evaluating
    has taught them; with `machines` False the plant-wide prior alone, for a model of
    simulated machines, whose ids mean nothing in a real plant."""
    assert model.classifier is not None
    normals = Normals.from_arrays(CHANNELS, model.normals.arrays())
    if not machines:
        normals.known.clear()
    return SafetyModel(model.classifier, normals, "")


def _save(
    out_dir: Path,
    model: SafetyModel,
    metrics: Mapping[str, Any],
    trained_on: Simulation | Mapping[str, Any],
    training: Mapping[str, Any],
    comparisons: list[Comparison],
    **facts: Any,
) -> dict[str, Any]:
    assert model.classifier is not None
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        trained_on,
        training=training,
        forests={
            "classifier": ForestFile(
                "safety_classifier.npz", model.classifier, model.normals.arrays()
            )
        },
        card=card(comparisons, **facts),
    )


def train_safety(
    out_dir: Path,
    seed: int = 1234,
    ticks: int = 4000,
    max_normal_rows: int = 40_000,
    hazard_rate_factor: float = 10.0,
    shifted_ticks: int = 1000,
) -> dict[str, Any]:
    machines, step_minutes = 50, 5.0
    cols = (
        FactorySimulator(
            seed=seed,
            machines=machines,
            step_minutes=step_minutes,
            params=boosted_hazards(DEFAULT_PARAMS, hazard_rate_factor),
        )
        .run(ticks)
        .columns
    )
    y = np.asarray(cols["hazard_type"]).astype(str)
    held_out = is_held_out(cols["machine_id"], machines)
    model, tree, fit_rows = _trained(cols, y, np.flatnonzero(~held_out), max_normal_rows, seed)
    saved = _fresh(model, machines=False)

    test = {k: np.asarray(v)[held_out] for k, v in cols.items()}
    comparisons, metrics = _compare(
        _fresh(saved),
        tree,
        test,
        y[held_out],
        f"held-out machines {held_out_from(machines)}..{machines}",
    )
    for name in SHIFTED:
        shifted = (
            FactorySimulator(
                seed=seed + 1,
                machines=10,
                step_minutes=step_minutes,
                params=boosted_hazards(SHIFTED_PLANTS[name], hazard_rate_factor),
            )
            .run(shifted_ticks)
            .columns
        )
        truth = np.asarray(shifted["hazard_type"]).astype(str)
        _, alerting = _served(_fresh(saved), shifted)
        tree_alerting = tree.predict(_raw(shifted)) != "NONE"
        fa = _false_alarms(truth, alerting)
        metrics[f"false_alarm_rate_{name}"] = round(fa, 5)
        comparisons.append(
            Comparison(
                "false_alarm_rate",
                fa,
                TREE_BASELINE,
                _false_alarms(truth, tree_alerting),
                True,
                f"shifted plant: {name} (10 new machines)",
                gate=False,
            )
        )
    metrics["train_rows"] = fit_rows
    return _save(
        out_dir,
        saved,
        metrics,
        Simulation(seed, machines, ticks, step_minutes),
        {
            "hazard_rate_factor": hazard_rate_factor,
            "max_normal_rows": max_normal_rows,
            "shifted_ticks": shifted_ticks,
        },
        comparisons,
    )


def incident_classes(data: PlantData) -> np.ndarray:
    """Each row's hazard from the incident labels: NONE outside every incident."""
    y = np.full(len(data), "NONE", dtype="<U17")
    ids = data.columns["machine_id"]
    times = data.columns["timestamp"]
    for label in data.labelled("incident"):
        if label.detail not in HAZARDS or label.machine_id is None:
            continue
        start, end = (utc_ms(t) for t in (label.start, label.end or label.start))
        y[(ids == label.machine_id) & (times >= start) & (times <= end)] = label.detail
    return y


def train_safety_plant(
    data: PlantData,
    out_dir: Path,
    options: PlantOptions,
    max_normal_rows: int = 40_000,
) -> dict[str, Any]:
    """The classifier from the plant's incident labels, or, without any, a limits-only
    model (the entry lists no classifier; the agent then serves the physical limits)."""
    needed = ["machine_id", "timestamp", "operation_mode", *CHANNELS]
    missing = [name for name in needed if not data.has(name)]
    if missing:
        raise TrainingError(
            f"{AGENT_ID}: the plant data lacks {', '.join(missing)}, needed for the hazard "
            f"model ({data.source or 'plant data'})"
        )
    y = incident_classes(data)
    source = {"source": data.source}
    if not (y != "NONE").any():
        return save_models(
            out_dir,
            AGENT_ID,
            FEATURES,
            {"limits_only": True, "rows": len(data)},
            {**source, "held_out": "none: nothing learnt"},
            training={"limits_only": True},
            card=card(
                [],
                limits_only=True,
                why="no FIRE_RISK, MECHANICAL_HAZARD or ELECTRICAL_HAZARD incident labels: "
                "the physical limits of [agents.safety] serve alone",
            ),
        )
    held_out, how = held_out_rows(data, options.held_out_share)
    train_rows = np.flatnonzero(~held_out)
    if not (y[train_rows] != "NONE").any() or not (y[held_out] != "NONE").any():
        raise TrainingError(
            f"{AGENT_ID}: the incidents fall only in the "
            f"{'held-out' if (y[held_out] != 'NONE').any() else 'training'} rows ({how}); "
            "label incidents on more machines, or train without them (limits only)"
        )
    model, tree, fit_rows = _trained(data.columns, y, train_rows, max_normal_rows, options.seed)
    saved = _fresh(model)
    test = {k: np.asarray(v)[held_out] for k, v in data.columns.items()}
    comparisons, metrics = _compare(_fresh(saved), tree, test, y[held_out], how)
    metrics["train_rows"] = fit_rows
    return _save(
        out_dir,
        saved,
        metrics,
        {**source, "held_out": how},
        {"max_normal_rows": max_normal_rows, "seed": options.seed},
        comparisons,
        incidents=len(data.labelled("incident")),
    )
