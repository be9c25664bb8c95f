"""Predictive-maintenance models: a failure classifier and a RUL regressor (RandomForest)
over one record's readings, each judged against its own machine's healthy normal.

The readings enter as z-scores against the machine's robust normal in its operation mode
(ml/normal.py), so a furnace that always runs at 75 C or a 30 kW line is not taken for a
worn machine: wear is what moves a machine away from its own normal. A record's
maintenance_score (a health index some plants have, 0..1) is an input when the record has
it; the forests are trained with it left out of half the rows, so a plant without one is
judged by the readings alone.

Unlike the other agents' normals, a machine's healthy normal must not follow the wear it
is meant to reveal, however often records come: it is learnt from the machine's first
records per mode (its warm-up) and then held, until a repair starts a new life and it is
learnt again from the first records after it. `features()` is the one place the model inputs
are computed, for training and serving alike.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestClassifier, ForestRegressor
from ...ml.normal import Normals
from ..safety.model import MODE_CODES, normal_keys

AGENT_ID = "pm_agent"
CHANNELS: tuple[str, ...] = (
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "error_rate_pct",
    "defect_rate_pct",
    "production_speed",
)
# Below these a machine's spread is noise in the sensor, not its normal variation.
MIN_SPREAD: tuple[float, ...] = (1.0, 0.1, 0.05, 0.2, 0.2, 5.0)
FEATURES: tuple[str, ...] = (
    *(f"{name}_z" for name in CHANNELS),
    "mode_active",
    "mode_idle",
    "maintenance_score",
    "maintenance_score_given",
)
# Where a record has no maintenance_score: outside its 0..1 range, so a tree tells it from
# every real score (and the flag beside it says so outright).
NO_SCORE = -1.0
# The regressor learns a capped RUL: far from the end of life the readings look alike, so
# beyond this horizon the honest answer is "a long time", as in the C-MAPSS literature.
RUL_CAP_HOURS = 400.0
# The classifier's label: the machine fails within this many hours.
FAILURE_HORIZON_HOURS = 24.0
# A training row with at least this much life left (a week) is healthy: the normal is
# learnt from such rows.
HEALTHY_RUL_HOURS = 168.0
MAINTENANCE = MODE_CODES["Maintenance"]
IN_SERVICE = (MODE_CODES["Active"], MODE_CODES["Idle"])


def readings(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (n, len(CHANNELS)) readings the normals are learnt over."""
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in CHANNELS])


def fitted_normals(keys: Sequence[Hashable], x: np.ndarray, healthy: np.ndarray) -> Normals:
    """Each (machine, mode)'s normal from its healthy training rows, or from all its rows
    where too few are known to be healthy (a machine that fails every few days): a normal
    a little worn beats the plant's prior for a machine unlike the rest."""
    healthy = np.asarray(healthy, bool)
    if not healthy.any():
        healthy = np.ones(len(keys), bool)
    normals = Normals.fitted(
        CHANNELS,
        [keys[i] for i in np.flatnonzero(healthy).tolist()],
        x[healthy],
        min_spread=MIN_SPREAD,
    )
    lacking = np.asarray([key not in normals.known for key in keys], bool)
    if lacking.any():
        fallback = Normals.fitted(
            CHANNELS,
            [keys[i] for i in np.flatnonzero(lacking).tolist()],
            x[lacking],
            min_spread=MIN_SPREAD,
        )
        normals.known.update(fallback.known)
    return normals


def features(
    z: np.ndarray, operation_mode: np.ndarray, maintenance_score: np.ndarray | None = None
) -> np.ndarray:
    """The model inputs from the readings' z-scores, the operation mode and the
    maintenance score (NaN or None where not given)."""
    mode = np.asarray(operation_mode)
    score = (
        np.full(len(mode), np.nan)
        if maintenance_score is None
        else np.asarray(maintenance_score, np.float64)
    )
    given = np.isfinite(score)
    return np.column_stack(
        [
            z,
            (mode == "Active").astype(np.float64),
            (mode == "Idle").astype(np.float64),
            np.where(given, score, NO_SCORE),
            given.astype(np.float64),
        ]
    )


def relative(columns: Mapping[str, np.ndarray], normals: Normals) -> np.ndarray:
    """The (n, len(CHANNELS)) z-scores of records in order, each against its machine's
    normal in its mode before it; `normals` learn from the records as they go. A normal
    learns from its first `warmup` records and is then held; until then its records count
    as normal (z 0: a normal of a few readings is too rough to judge by, and a hot machine
    just seen must not look worn). A Maintenance record (a repair) starts a new life: the
    machine's normals in service are learnt again from its first records after it. As
    nothing here depends on the model's answers, a batch scores exactly as its records one
    by one would."""
    keys, x = normal_keys(columns), readings(columns).tolist()
    z = np.zeros((len(keys), len(CHANNELS)))
    for i, (key, row) in enumerate(zip(keys, x, strict=True)):
        if key[1] == MAINTENANCE:
            for mode_code in IN_SERVICE:
                normals.known.pop((key[0], mode_code), None)
            continue
        m = normals.normal_of(key)
        if normals.warmed(key):
            z[i] = [(v - c) / s for v, c, s in zip(row, m.loc, m.spread, strict=True)]
        else:
            normals.learn(m, row)
    return z


class PmModel:
    def __init__(
        self,
        classifier: ForestClassifier,
        regressor: ForestRegressor,
        normals: Mapping[str, np.ndarray],
        version: str,
    ) -> None:
        # The failure probability is the column of class 1 ("fails within the horizon").
        if classifier.classes != ("0", "1"):
            raise ArtifactError(
                f"{AGENT_ID}: the classifier knows classes {list(classifier.classes)}, "
                "expected ['0', '1']"
            )
        self.classifier = classifier
        self.regressor = regressor
        self.normal_arrays = dict(normals)
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> PmModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        classifier, arrays = load_forest(
            entry, "classifier", ForestClassifier, Normals.array_names()
        )
        regressor, _ = load_forest(entry, "regressor", ForestRegressor)
        model = cls(classifier, regressor, arrays, entry.version)
        try:
            model.fresh_normals()
        except ValueError as exc:
            raise ArtifactError(f"{AGENT_ID}: {entry.paths['classifier']}: {exc}") from None
        return model

    def fresh_normals(self) -> Normals:
        """The machines' normals as training left them, for an agent to go on learning."""
        return Normals.from_arrays(CHANNELS, self.normal_arrays)

    def assess(
        self, columns: Mapping[str, np.ndarray], normals: Normals
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For records in order: the failure probability, the RUL in hours, and the
        z-scores against each machine's normal in `normals` (`relative`)."""
        z = relative(columns, normals)
        x = features(z, np.asarray(columns["operation_mode"]), columns.get("maintenance_score"))
        probability, rul = self.predict(x)
        return probability, rul, z

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Failure probability within the horizon, and remaining useful life in hours."""
        failure_probability = self.classifier.predict_proba(x)[:, 1]
        rul_hours = np.clip(self.regressor.predict(x), 0.0, RUL_CAP_HOURS)
        return failure_probability, rul_hours
