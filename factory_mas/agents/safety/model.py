"""Hazard classifier (RandomForest) over one record's physical readings, each judged
against its own machine's learned normal.

The readings enter as z-scores against the machine's robust normal (ml/normal.py): a
furnace that always runs at 75 C is not a fire risk, and a 30 kW line is not an
electrical fault. `features()` is the one place the model inputs are computed, for
training and serving alike. Network readings are left out on purpose: a hazard is
physical, and an attack on the network must not look like one. maintenance_score is left
out too: few plants have it.

A model may come without a classifier (a plant trained without incident labels): it then
serves the physical limits of the settings alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestClassifier
from ...ml.normal import Normals
from ...settings import SafetySettings
from .logic import LIMITED, limit_exceeded

AGENT_ID = "safety_agent"
CHANNELS: tuple[str, ...] = (
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "defect_rate_pct",
    "production_speed",
)
# Below these a machine's spread is noise in the sensor, not its normal variation.
MIN_SPREAD: tuple[float, ...] = (1.0, 0.1, 0.05, 0.2, 5.0)
FEATURES: tuple[str, ...] = (*(f"{name}_z" for name in CHANNELS), "mode_active", "mode_idle")
MODE_CODES: dict[str, int] = {"Active": 0, "Idle": 1, "Maintenance": 2}
HAZARDS: tuple[str, ...] = ("FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD")
CLASSES: tuple[str, ...] = ("NONE", *HAZARDS)


def readings(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """The (n, len(CHANNELS)) physical readings the normals are learnt over."""
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in CHANNELS])


def normal_keys(columns: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
    """(machine id, mode code) per row: a machine's normal in each mode of operation, as
    an idle machine draws and heats far less than a working one, and one normal over
    both would be too wide to see an electrical fault's doubled draw."""
    ids = np.asarray(columns["machine_id"]).tolist()
    modes = [MODE_CODES.get(m, len(MODE_CODES)) for m in np.asarray(columns["operation_mode"])]
    return list(zip(ids, modes, strict=True))


def fitted_normals(keys: Sequence[tuple[int, int]], x: np.ndarray) -> Normals:
    """Each (machine, mode)'s normal from training rows."""
    return Normals.fitted(CHANNELS, keys, x, min_spread=MIN_SPREAD)


def features(z: np.ndarray, operation_mode: np.ndarray) -> np.ndarray:
    """The model inputs from the readings' z-scores and the operation mode."""
    mode = np.asarray(operation_mode)
    return np.column_stack(
        [z, (mode == "Active").astype(np.float64), (mode == "Idle").astype(np.float64)]
    )


def _rounds(keys: Sequence[tuple[int, int]]) -> np.ndarray:
    """Each row's place among its key's rows: 0 for a key's first, 1 for its second..."""
    count: dict[tuple[int, int], int] = {}
    out = np.empty(len(keys), np.int64)
    for i, key in enumerate(keys):
        out[i] = count.get(key, 0)
        count[key] = out[i] + 1
    return out


# How much wider than its learnt spread a normal still warming up is taken to be.
WARMUP_WIDENING = 2.0


class SafetyModel:
    def __init__(self, classifier: ForestClassifier | None, normals: Normals, version: str) -> None:
        if classifier is not None:
            known = list(classifier.classes)
            if sorted(known) != sorted(CLASSES):
                raise ArtifactError(
                    f"{AGENT_ID}: the classifier knows classes {known}, expected {list(CLASSES)}"
                )
            # predict_proba orders columns as training did (sorted); the rest uses CLASSES.
            self._columns = [known.index(c) for c in CLASSES]
        self.classifier = classifier
        self.normals = normals
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> SafetyModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        if "classifier" not in entry.paths:
            # Limits only: nothing learnt, so no normals worth keeping either.
            return cls(None, Normals(CHANNELS, np.zeros(len(CHANNELS)), MIN_SPREAD), entry.version)
        classifier, extras = load_forest(
            entry, "classifier", ForestClassifier, Normals.array_names()
        )
        try:
            normals = Normals.from_arrays(CHANNELS, extras)
        except ValueError as exc:
            raise ArtifactError(f"{AGENT_ID}: {exc}") from None
        return cls(classifier, normals, entry.version)

    def assess(
        self, columns: Mapping[str, np.ndarray], t: SafetySettings
    ) -> tuple[np.ndarray, list[tuple[str, str] | None]]:
        """For records in order: the class probabilities (CLASSES order) against each
        machine's normal, and the physical limit each exceeds (logic.limit_exceeded).

        The normals learn from the records as they go, except from those beyond a limit
        or, once warmed up, scored from the caution score up: a hazard is not learnt as
        normal. Rows are
        taken in rounds (each machine's first row of the batch, then its second...), so
        a batch scores exactly as its records one by one would, a round at a time."""
        ids = np.asarray(columns["machine_id"]).tolist()
        limited = np.column_stack([np.asarray(columns[n], np.float64) for _, n, _ in LIMITED])
        exceeded = [
            limit_exceeded(machine, values, t)
            for machine, values in zip(ids, limited.tolist(), strict=True)
        ]
        keys, x = normal_keys(columns), readings(columns)
        mode = np.asarray(columns["operation_mode"])
        rounds = _rounds(keys)
        probabilities = np.empty((len(keys), len(CLASSES)))
        for r in range(int(rounds.max(initial=-1)) + 1):
            rows = np.flatnonzero(rounds == r)
            these = [keys[i] for i in rows.tolist()]
            z = self.normals.zscores(these, x[rows], learn=False)
            # A machine (or a mode of it) still learning its normal is judged against a
            # rough one, the plant's prior at first: its distances count for less until it
            # is warmed up, so a machine that simply runs hot raises nothing on arrival
            # while a fire, tens of spreads out, still does.
            learning = np.asarray([not self.normals.warmed(k) for k in these], bool)
            z[learning] /= WARMUP_WIDENING
            p = self.predict(features(z, mode[rows]))
            probabilities[rows] = p
            # A round holds each key once, so `learning` still holds as each row learns.
            in_round = zip(rows.tolist(), these, p[:, 0].tolist(), learning.tolist(), strict=True)
            for i, key, p_none, warming in in_round:
                # Until a machine's normal is warmed up, it learns all but limit breaches:
                # a hot machine scored against the plant's prior must not stay in alarm
                # for want of ever being learnt.
                calm = 1.0 - p_none < t.hazard_score_caution or warming
                if exceeded[i] is None and calm:
                    self.normals.learn(self.normals.normal_of(key), x[i].tolist())
        return probabilities, exceeded

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities per row, one column per class in CLASSES order (NONE first);
        without a classifier, "no hazard" for every row."""
        if self.classifier is None:
            return np.column_stack([np.ones(len(x)), np.zeros((len(x), len(HAZARDS)))])
        return self.classifier.predict_proba(x)[:, self._columns]
