"""Network anomaly model: per-channel robust checks beside an IsolationForest.

Every reading is judged against its own machine's learned normal (`Normals`): its robust
z-score, and its change since the machine's previous record in the same spreads. One
channel far above its normal (a failed cable's loss, a switch port's errors) is flagged by
the channel check; the forest, fitted on those relative features, catches the combined
patterns of a flood where no single channel is that far out.

`LastReadings` keeps each machine's previous record and walks a batch row by row in
order, so a batch scores exactly as its records one by one would, in training and in
serving alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ArtifactError
from ...ml.artifacts import load_entry, load_forest
from ...ml.forest import ForestIsolation
from ...ml.normal import Normals

AGENT_ID = "cyber_agent"
READINGS: tuple[str, ...] = ("network_latency_ms", "packet_loss_pct", "error_rate_pct")
FEATURES: tuple[str, ...] = READINGS + tuple(f"{name}_delta" for name in READINGS)
# A previous reading older than this says nothing about the short term; nor does one that
# is newer than the record at hand (records arriving out of order): either gives delta 0.
MAX_GAP_S = 300.0
# anomaly_score maps a typical training record to this value and the threshold to 0.5.
TYPICAL_SCORE = 0.01
# The arrays saved beside the forest in the model file, one per `Calibration` field.
CALIBRATION_ARRAYS = ("raw_median", "raw_threshold", "channel_median", "channel_threshold")
# The least spread a channel's normal may have, in its units: a plant logging latency in
# whole milliseconds has many machines whose MAD is 0, and every 1 ms change would then be
# infinitely far from normal.
MIN_SPREAD = (0.5, 0.05, 0.05)

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
    """What training learnt about normal traffic, saved beside the forest and the normals.

    `raw_median` and `raw_threshold` are the forest's outlier score (the negated
    `score_samples`) of a typical training record and its decision threshold;
    `channel_median` and `channel_threshold` the same for the channel check's score, the
    highest z-score of the three readings against their machine's normal.
    """

    raw_median: float
    raw_threshold: float
    channel_median: float
    channel_threshold: float

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(getattr(self, name), np.float64) for name in CALIBRATION_ARRAYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], source: Path) -> Calibration:
        shapes = [arrays[name].shape for name in CALIBRATION_ARRAYS]
        if shapes != [()] * len(CALIBRATION_ARRAYS):
            raise ArtifactError(
                f"{AGENT_ID}: {source} has calibration arrays of shapes "
                f"{dict(zip(CALIBRATION_ARRAYS, shapes, strict=True))}"
            )
        calibration = cls(*(float(arrays[name]) for name in CALIBRATION_ARRAYS))
        # The logistic of anomaly scores needs each threshold above its typical record.
        if not (
            calibration.raw_threshold > calibration.raw_median
            and calibration.channel_threshold > calibration.channel_median
        ):
            raise ArtifactError(f"{AGENT_ID}: {source} has an unusable calibration")
        return calibration


def _logistic(raw: np.ndarray, typical: float, threshold: float) -> np.ndarray:
    """0..1 through two anchors of the training distribution: the typical record scores
    TYPICAL_SCORE and the threshold 0.5."""
    width = (threshold - typical) / np.log((1 - TYPICAL_SCORE) / TYPICAL_SCORE)
    return 1.0 / (1.0 + np.exp(-(raw - threshold) / width))


@dataclass(frozen=True)
class Scored:
    """A batch's verdicts: the anomaly score (0.5 = the threshold), each row's flag, the
    robust z of every feature against its machine's normal, and which check fired."""

    scores: np.ndarray
    flagged: np.ndarray
    zscores: np.ndarray
    by_channel: np.ndarray
    by_forest: np.ndarray


class CyberModel:
    """The forest, its `Calibration` and the machines' normals learnt in training."""

    def __init__(
        self,
        forest: ForestIsolation,
        calibration: Calibration,
        normals: Mapping[str, np.ndarray],
        version: str,
    ) -> None:
        self.forest = forest
        self.calibration = calibration
        self.normal_arrays = dict(normals)
        self.version = version

    @classmethod
    def load(cls, models_dir: Path) -> CyberModel:
        entry = load_entry(models_dir, AGENT_ID, FEATURES)
        names = CALIBRATION_ARRAYS + Normals.array_names()
        forest, arrays = load_forest(entry, "model", ForestIsolation, names)
        source = entry.paths["model"]
        model = cls(forest, Calibration.from_arrays(arrays, source), arrays, entry.version)
        try:
            model.fresh_normals()
        except ValueError as exc:
            raise ArtifactError(f"{AGENT_ID}: {source}: {exc}") from exc
        return model

    def fresh_normals(self) -> Normals:
        """The normals as training left them, for an agent to go on learning from."""
        return Normals.from_arrays(READINGS, self.normal_arrays)

    def raw_scores(self, relative: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(relative)

    def score(self, machines: Iterable[int], x: np.ndarray, normals: Normals) -> Scored:
        """Score rows of `features` in order against `normals`, which learn from each row
        the channel check passes, and from a machine's first reading whatever it is: that
        sets the machine's location, so one whose normal differs from the plant prior
        (a 60 ms link where the plant has 10 ms) settles instead of staying in alarm. The
        forest does not decide what is learnt, so a batch scores exactly as its records
        one by one would."""
        c = self.calibration
        relative = np.empty_like(x, dtype=np.float64)
        k = len(READINGS)
        for i, (machine, row) in enumerate(zip(machines, x.tolist(), strict=True)):
            m = normals.normal_of(machine)
            relative[i] = [
                (v - loc) / s for v, loc, s in zip(row[:k], m.loc, m.spread, strict=True)
            ] + [d / s for d, s in zip(row[k:], m.spread, strict=True)]
            if relative[i, :k].max() < c.channel_threshold or m.n == 0:
                normals.learn(m, row[:k])
        channel = relative[:, :k].max(axis=1)
        raw = self.raw_scores(relative)
        scores = np.maximum(
            _logistic(raw, c.raw_median, c.raw_threshold),
            _logistic(channel, c.channel_median, c.channel_threshold),
        )
        by_channel, by_forest = channel >= c.channel_threshold, raw >= c.raw_threshold
        return Scored(scores, by_channel | by_forest, relative, by_channel, by_forest)
