"""The plant's own data as trainers get it: telemetry columns, labels, and the split."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from ..labels.model import Label

# Fewer machines than this and a held-out machine is too big a share of the plant: the
# split goes by time instead.
MIN_MACHINES_TO_HOLD_OUT = 5


@dataclass(frozen=True)
class PlantData:
    """Telemetry as columns: the snake_case TelemetryRecord fields the source has, rows
    sorted by (machine_id, timestamp). "timestamp" is datetime64[ms] (UTC), "machine_id"
    int64, "operation_mode" str, the rest float64. A field the source lacks is absent
    (a plant rarely has maintenance_score)."""

    columns: dict[str, np.ndarray]
    labels: tuple[Label, ...] = ()
    source: str = ""
    # Fields the source lacked, for trainers' error messages.
    missing: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.columns["machine_id"]) if "machine_id" in self.columns else 0

    def has(self, name: str) -> bool:
        return name in self.columns

    def machines(self) -> np.ndarray:
        return np.unique(self.columns["machine_id"])

    def labelled(self, kind: str) -> list[Label]:
        return [label for label in self.labels if label.kind == kind]


@dataclass(frozen=True)
class PlantOptions:
    seed: int = 1234
    # The share of normal records allowed to raise an anomaly alert.
    target_alert_rate: float = 0.005
    held_out_share: float = 0.2


def utc_ms(t: datetime) -> np.datetime64:
    """A label's time as the "timestamp" column holds it (UTC milliseconds); a naive time
    is read as UTC, as the readings' are."""
    naive = t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t
    return np.datetime64(naive, "ms")


def held_out_rows(data: PlantData, share: float) -> tuple[np.ndarray, str]:
    """A mask of the rows to evaluate on, and in words how they were chosen: the last
    `share` of the machine ids when there are enough machines (a model is then judged on
    machines it never saw), else the last `share` of each machine's time."""
    ids = data.columns["machine_id"]
    machines = data.machines()
    if len(machines) >= MIN_MACHINES_TO_HOLD_OUT:
        count = max(1, round(len(machines) * share))
        held = machines[-count:]
        return np.isin(ids, held), f"held-out machines {held[0]}..{held[-1]} ({count})"
    mask = np.zeros(len(ids), bool)
    for machine in machines:
        rows = np.flatnonzero(ids == machine)  # sorted by time within the machine
        mask[rows[int(len(rows) * (1 - share)) :]] = True
    return mask, f"the last {share:.0%} of each machine's time"


def threshold_for_rate(scores: np.ndarray, rate: float) -> float:
    """The score at or above which about `rate` of these (normal) scores lie, nudged up
    by a margin of a twentieth of their spread, so the held-out normal data of a plant
    lands under the target rather than on it."""
    scores = np.asarray(scores, np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("no finite scores to choose a threshold from")
    if not 0 < rate < 1:
        raise ValueError(f"the alert rate must be between 0 and 1, got {rate}")
    cut = float(np.quantile(scores, 1.0 - rate))
    spread = float(np.quantile(scores, 0.75) - np.quantile(scores, 0.25))
    return cut + 0.05 * spread
