"""Train the predictive-maintenance models, on simulated plant history or on a plant's own
failure events.

Both models read each machine's readings against its own healthy normal (agents/pm/model.py):
the classifier whether the machine fails within FAILURE_HORIZON_HOURS, the regressor its
remaining useful life (RUL), capped at RUL_CAP_HOURS. The held-out machines are scored
as served, twice (`_judged`): with each one's normal learnt from its own history (gating)
and as machines new to the model (for information). The card sets each model beside the
same kind of model made linear, on the same features: logistic regression for the
failure average precision, linear regression for the RUL error in hours. A shifted plant
(hot machines) informs, it does not gate.

On a plant's data RUL comes from its failure labels (kind failure: the machine and when
it failed). A row's RUL is the time to its machine's next failure. Where that failure was
not seen (after a machine's last failure, on a machine that never failed, or when a
maintenance spell comes first and starts a new life) the RUL is right-censored: only a
lower bound is known, the time to the end of what was observed. Those rows are kept
wherever the bound settles the target: for the regressor when it reaches the cap (the
capped RUL is then the cap), for the classifier as a negative when it exceeds the failure
horizon. Only rows whose bound settles neither are left out of that model. Rows in
Maintenance mode or inside a maintenance or failure label's spell (start to end) are
left out: the machine is stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import average_precision_score, mean_absolute_error, roc_auc_score

from ..agents.pm.model import (
    AGENT_ID,
    CHANNELS,
    FAILURE_HORIZON_HOURS,
    FEATURES,
    HEALTHY_RUL_HOURS,
    RUL_CAP_HOURS,
    PmModel,
    features,
    fitted_normals,
    readings,
)
from ..agents.safety.model import normal_keys
from ..errors import TrainingError
from ..ml.forest import ForestClassifier, ForestRegressor
from ..ml.normal import Normals, prior_only
from ..sim.synthetic import DEFAULT_PARAMS, SHIFTED_PLANTS, FactorySimulator, SimParams
from .cards import Comparison, card
from .common import ForestFile, Simulation, held_out_from, is_held_out, save_models
from .forests import compile_as
from .plant import PlantData, PlantOptions, held_out_rows, utc_ms

LOGISTIC = "logistic regression on the same features"
LINEAR = "linear regression on the same features"
SHIFTED = "hot"
LABELS_HELP = (
    "give --labels FILE with kind=failure rows (machine_id, start = when it failed), "
    "see docs/models.md, pm_agent"
)
_MS_PER_HOUR = 3_600_000


@dataclass(frozen=True)
class Targets:
    """What each row teaches: its capped RUL and whether that is known, and whether it
    fails within the horizon and whether that is known."""

    rul: np.ndarray
    regress: np.ndarray
    fails: np.ndarray
    classify: np.ndarray

    def __getitem__(self, rows: np.ndarray) -> Targets:
        return Targets(self.rul[rows], self.regress[rows], self.fails[rows], self.classify[rows])

    def within(self, mask: np.ndarray) -> Targets:
        """Only the rows of `mask` teach or judge anything."""
        return Targets(self.rul, self.regress & mask, self.fails & mask, self.classify & mask)


def rul_targets(
    machine_id: np.ndarray,
    hours: np.ndarray,
    failures: Mapping[int, np.ndarray],
    stops: Mapping[int, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's hours to its machine's next failure, and whether that failure was seen.

    `failures` and `stops` (maintenance starts, which end a life unseen) are hours per
    machine. Where no failure comes before the next stop or the machine's last row, the
    value is the hours to that stop or row, a lower bound (right-censored), and observed
    is False."""
    rul = np.empty(len(hours))
    observed = np.zeros(len(hours), bool)
    for machine in np.unique(machine_id).tolist():
        rows = np.flatnonzero(machine_id == machine)
        t = hours[rows]
        end = np.full(len(rows), float(t.max()))
        ahead_f = _next(failures.get(machine), t)
        ahead_s = _next((stops or {}).get(machine), t)
        # A failure labelled after the machine's last reading is still seen.
        seen = np.isfinite(ahead_f) & (ahead_f <= ahead_s)
        rul[rows] = np.where(seen, ahead_f, np.minimum(ahead_s, end)) - t
        observed[rows] = seen
    return rul, observed


def _next(events: np.ndarray | None, t: np.ndarray) -> np.ndarray:
    """The first event at or after each time; infinity where there is none."""
    if events is None or not len(events):
        return np.full(len(t), np.inf)
    events = np.sort(np.asarray(events, np.float64))
    at = np.searchsorted(events, t, side="left")
    return np.where(at < len(events), events[np.minimum(at, len(events) - 1)], np.inf)


def targets_of(rul: np.ndarray, observed: np.ndarray) -> Targets:
    """The models' targets from (possibly censored) RUL: a censored bound at or beyond the
    cap still gives the capped RUL, and one beyond the horizon still says "does not fail
    within it"; a bound settling neither leaves the row out of that model."""
    beyond_horizon = rul > FAILURE_HORIZON_HOURS
    return Targets(
        rul=np.minimum(rul, RUL_CAP_HOURS),
        regress=observed | (rul >= RUL_CAP_HOURS),
        fails=observed & ~beyond_horizon,
        classify=observed | beyond_horizon,
    )


@dataclass(frozen=True)
class Fitted:
    """The forests, fitted on z-features of the training rows, and their linear twins."""

    classifier: ForestClassifier
    regressor: ForestRegressor
    logistic: LogisticRegression
    linear: LinearRegression
    classify_rows: int
    regress_rows: int


def _fit(x: np.ndarray, y: Targets, seed: int, max_rows: int) -> Fitted:
    rng = np.random.default_rng(seed)

    def sample(mask: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(mask)
        if len(rows) > max_rows:
            rows = np.sort(rng.choice(rows, max_rows, replace=False))
        return rows

    c, r = sample(y.classify), sample(y.regress)
    fails = y.fails.astype(np.int8)
    # Small forests on purpose: the artifacts are committed, and a few dozen shallow trees
    # score a batch of a thousand records in a few milliseconds.
    classifier = RandomForestClassifier(
        n_estimators=40, max_depth=10, min_samples_leaf=40, random_state=seed, n_jobs=1
    ).fit(x[c], fails[c])
    regressor = RandomForestRegressor(
        n_estimators=40, max_depth=10, min_samples_leaf=40, random_state=seed, n_jobs=1
    ).fit(x[r], y.rul[r])
    return Fitted(
        compile_as(classifier, ForestClassifier),
        compile_as(regressor, ForestRegressor),
        LogisticRegression(max_iter=1000).fit(x[c], fails[c]),
        LinearRegression().fit(x[r], y.rul[r]),
        len(c),
        len(r),
    )


def _normals(columns: Mapping[str, np.ndarray], rows: np.ndarray, y: Targets) -> Normals:
    """The normals of the machines of `rows`, from the rows known to have at least a week
    of life left (a censored bound says so as well as a seen RUL)."""
    keys = normal_keys(columns)
    healthy = y.rul[rows] >= HEALTHY_RUL_HOURS
    return fitted_normals([keys[i] for i in rows.tolist()], readings(columns)[rows], healthy)


def _train_features(
    columns: Mapping[str, np.ndarray], rows: np.ndarray, normals: Normals, seed: int
) -> np.ndarray:
    """The training rows' features against their machines' fitted normals (not learning),
    with the maintenance score, where the data has one, left out of a random half of the
    rows: the same forests then serve records with and without it."""
    keys = normal_keys(columns)
    z = normals.zscores([keys[i] for i in rows.tolist()], readings(columns)[rows], learn=False)
    score = _score_of(columns)
    if score is not None:
        score = score[rows].copy()
        score[np.random.default_rng(seed).random(len(rows)) < 0.5] = np.nan
    return features(z, np.asarray(columns["operation_mode"])[rows], score)


def _score_of(columns: Mapping[str, np.ndarray]) -> np.ndarray | None:
    raw = columns.get("maintenance_score")
    return None if raw is None else np.asarray(raw, np.float64)


def _without_score(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in columns.items() if k != "maintenance_score"}


def _model(fitted: Fitted, normals: Normals, machines: bool = True) -> PmModel:
    """The model with a copy of `normals`; with `machines` False the plant-wide prior
    alone, as a new machine starts from it (and a simulated machine's id means nothing in
    a plant)."""
    saved = normals.arrays() if machines else prior_only(normals.arrays())
    return PmModel(fitted.classifier, fitted.regressor, saved, "")


def _compare(
    model: PmModel,
    fitted: Fitted,
    columns: Mapping[str, np.ndarray],
    y: Targets,
    data: str,
    gate: bool = True,
) -> tuple[list[Comparison], dict[str, Any]]:
    """Score `columns` as served from the model's normals (each machine's rows in time
    order, the normals learning as they go) and compare on the rows each target is known
    for; the linear twins read the same features."""
    p, rul, z = model.assess(columns, model.fresh_normals())
    x = features(z, np.asarray(columns["operation_mode"]), _score_of(columns))
    c, r = y.classify, y.regress
    fails = y.fails[c]
    if fails.all() or not fails.any():
        raise TrainingError(
            f"{AGENT_ID}: the {data} hold no {'row far from' if fails.all() else 'failure within'}"
            f" {FAILURE_HORIZON_HOURS:g} h of a failure to evaluate on; label failures on "
            "more machines, or give more history"
        )
    ap = float(average_precision_score(fails, p[c]))
    ap_logistic = float(average_precision_score(fails, fitted.logistic.predict_proba(x[c])[:, 1]))
    mae = float(mean_absolute_error(y.rul[r], rul[r]))
    linear = np.clip(fitted.linear.predict(x[r]), 0.0, RUL_CAP_HOURS)
    mae_linear = float(mean_absolute_error(y.rul[r], linear))
    near = r & (y.rul < HEALTHY_RUL_HOURS)
    comparisons = [
        Comparison("failure_average_precision", ap, LOGISTIC, ap_logistic, False, data, gate),
        Comparison("rul_mae_hours", mae, LINEAR, mae_linear, True, data, gate),
    ]
    metrics: dict[str, Any] = {
        "failure_average_precision": round(ap, 4),
        "failure_roc_auc": round(float(roc_auc_score(fails, p[c])), 4),
        "failure_recall_at_0.5": round(float((p[c][fails] >= 0.5).mean()), 4),
        "rul_mae_hours": round(mae, 2),
        "rul_mae_hours_last_week": round(
            float(mean_absolute_error(y.rul[near], rul[near])) if near.any() else 0.0, 2
        ),
        "test_rows": int(c.sum()),
        "test_positive_rate": round(float(fails.mean()), 4),
    }
    return comparisons, metrics


def _judged(
    fitted: Fitted,
    trained: Normals,
    columns: Mapping[str, np.ndarray],
    y: Targets,
    data: str,
    gate: bool = True,
) -> tuple[list[Comparison], dict[str, Any]]:
    """The comparisons on machines the forests never saw, twice: each machine's normal
    learnt from its own history, as a model trained on a plant's data serves that plant's
    machines (gating, unless `gate` is False), and each starting from the plant-wide prior
    at its first record, as a machine new to the model (for information: a machine first
    seen late in its life takes that for its normal until its next repair). `trained` are
    the training machines' normals, whose prior a new machine starts from."""
    rows = np.flatnonzero(y.classify | y.regress)
    known = _normals(columns, rows, y)
    comparisons, metrics = _compare(_model(fitted, known), fitted, columns, y, data, gate)
    cold, cold_metrics = _compare(
        _model(fitted, trained, machines=False),
        fitted,
        columns,
        y,
        f"{data}, new to the model (normals from their first records)",
        gate=False,
    )
    metrics["new_machines"] = {
        k: cold_metrics[k] for k in ("failure_average_precision", "rul_mae_hours")
    }
    return comparisons + cold, metrics


def _save(
    out_dir: Path,
    model: PmModel,
    metrics: Mapping[str, Any],
    trained_on: Simulation | Mapping[str, Any],
    training: Mapping[str, Any],
    comparisons: list[Comparison],
    **facts: Any,
) -> dict[str, Any]:
    return save_models(
        out_dir,
        AGENT_ID,
        FEATURES,
        metrics,
        trained_on,
        training={
            "failure_horizon_hours": FAILURE_HORIZON_HOURS,
            "rul_cap_hours": RUL_CAP_HOURS,
            **training,
        },
        forests={
            "classifier": ForestFile("pm_classifier.npz", model.classifier, model.normal_arrays),
            "regressor": ForestFile("pm_regressor.npz", model.regressor),
        },
        card=card(comparisons, **facts),
    )


def _simulated(
    seed: int, machines: int, ticks: int, params: SimParams = DEFAULT_PARAMS
) -> tuple[dict[str, np.ndarray], Targets]:
    """Simulated history and its targets: the simulator knows every machine's RUL, so
    nothing is censored; rows under repair teach and judge nothing."""
    cols = FactorySimulator(seed=seed, machines=machines, step_minutes=5.0, params=params)
    columns = cols.run(ticks).columns
    rul = np.asarray(columns["rul_hours"], np.float64)
    y = targets_of(rul, np.ones(len(rul), bool))
    return columns, y.within(np.asarray(columns["operation_mode"]) != "Maintenance")


def _rows_of(columns: Mapping[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v)[mask] for k, v in columns.items()}


def train_pm(
    out_dir: Path,
    seed: int = 1234,
    ticks: int = 4000,
    max_train_rows: int = 80_000,
    shifted_machines: int = 20,
    shifted_ticks: int = 2000,
) -> dict[str, Any]:
    machines = 50
    cols, y = _simulated(seed, machines, ticks)
    held_out = is_held_out(cols["machine_id"], machines)
    train_rows = np.flatnonzero(~held_out & y.classify)
    normals = _normals(cols, train_rows, y)
    fitted = _fit(
        _train_features(cols, train_rows, normals, seed), y[train_rows], seed, max_train_rows
    )
    held = _rows_of(cols, held_out)
    where = f"held-out machines {held_out_from(machines)}..{machines}"
    # Judged without the simulator's maintenance score, as a plant without one is served;
    # with it, the demo plant's machines new to the model, for information.
    comparisons, metrics = _judged(fitted, normals, _without_score(held), y[held_out], where)
    scored, scored_metrics = _compare(
        _model(fitted, normals, machines=False),
        fitted,
        held,
        y[held_out],
        f"{where}, new to the model, with maintenance_score",
        gate=False,
    )
    comparisons += scored
    metrics["with_maintenance_score"] = {
        k: scored_metrics[k] for k in ("failure_average_precision", "rul_mae_hours")
    }
    hot, hot_y = _simulated(seed + 1, shifted_machines, shifted_ticks, SHIFTED_PLANTS[SHIFTED])
    shifted, shifted_metrics = _judged(
        fitted,
        normals,
        _without_score(hot),
        hot_y,
        f"shifted plant: {SHIFTED} machines 65-78 C ({shifted_machines} new machines)",
        gate=False,
    )
    metrics[SHIFTED] = {
        k: shifted_metrics[k]
        for k in ("failure_average_precision", "rul_mae_hours", "new_machines")
    }
    metrics["train_rows"] = fitted.classify_rows
    # Saved with the plant-wide prior alone: the demo's simulated machines are new to it.
    return _save(
        out_dir,
        _model(fitted, normals, machines=False),
        metrics,
        Simulation(seed, machines, ticks, 5.0),
        {"shifted_machines": shifted_machines, "shifted_ticks": shifted_ticks},
        comparisons + shifted,
    )


def _spells(data: PlantData, kind: str) -> list[tuple[int, np.datetime64, np.datetime64]]:
    return [
        (label.machine_id, utc_ms(label.start), utc_ms(label.end or label.start))
        for label in data.labelled(kind)
        if label.machine_id is not None
    ]


def plant_targets(data: PlantData) -> tuple[Targets, np.ndarray, np.ndarray]:
    """The targets of a plant's rows from its failure and maintenance labels, the rows
    that are in service (not in Maintenance mode nor inside a labelled spell), and whether
    each row's RUL was seen (False: censored)."""
    ids, times = data.columns["machine_id"], data.columns["timestamp"]
    failures = _spells(data, "failure")
    if not failures:
        raise TrainingError(
            f"{AGENT_ID} needs failure events to learn remaining life from, and "
            f"{data.source or 'the data'} has none: {LABELS_HELP}"
        )
    maintenance = _spells(data, "maintenance")
    in_service = np.asarray(data.columns["operation_mode"]) != "Maintenance"
    for machine, start, end in failures + maintenance:
        in_service &= ~((ids == machine) & (times >= start) & (times <= end))

    def hours(events: list[tuple[int, np.datetime64, np.datetime64]]) -> dict[int, np.ndarray]:
        out: dict[int, list[float]] = {}
        for machine, start, _ in events:
            out.setdefault(machine, []).append(float(start.astype(np.int64)) / _MS_PER_HOUR)
        return {m: np.asarray(v) for m, v in out.items()}

    t = times.astype("datetime64[ms]").astype(np.int64) / _MS_PER_HOUR
    rul, observed = rul_targets(ids, t, hours(failures), hours(maintenance))
    return targets_of(rul, observed).within(in_service), in_service, observed


def train_pm_plant(
    data: PlantData, out_dir: Path, options: PlantOptions, max_train_rows: int = 80_000
) -> dict[str, Any]:
    """The models from a plant's readings and failure labels (see the module docstring for
    the censored rows); TrainingError without failure labels or the readings needed."""
    needed = ["machine_id", "timestamp", "operation_mode", *CHANNELS]
    missing = [name for name in needed if not data.has(name)]
    if missing:
        raise TrainingError(
            f"{AGENT_ID}: the plant data lacks {', '.join(missing)}, needed for remaining "
            f"life ({data.source or 'plant data'})"
        )
    y, in_service, observed = plant_targets(data)
    held_out, how = held_out_rows(data, options.held_out_share)
    train_rows = np.flatnonzero(~held_out & in_service)
    if not y.fails[train_rows].any():
        raise TrainingError(
            f"{AGENT_ID}: no failure falls in the training rows ({how} are held out); "
            f"label failures on more machines: {LABELS_HELP}"
        )
    cols = data.columns
    normals = _normals(cols, train_rows, y)
    fitted = _fit(
        _train_features(cols, train_rows, normals, options.seed),
        y[train_rows],
        options.seed,
        max_train_rows,
    )
    comparisons, metrics = _judged(fitted, normals, _rows_of(cols, held_out), y[held_out], how)
    metrics["train_rows"] = fitted.classify_rows
    # Saved with the normals of every machine of the data, which it serves from then on.
    return _save(
        out_dir,
        _model(fitted, _normals(cols, np.flatnonzero(in_service), y)),
        metrics,
        {"source": data.source, "held_out": how},
        {"max_train_rows": max_train_rows, "seed": options.seed},
        comparisons,
        failures=len(data.labelled("failure")),
        censored_rows=int((~observed & in_service).sum()),
    )
