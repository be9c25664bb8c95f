"""pm_agent's SCADA points: the machine most at risk, and the thresholds that make levels."""

from __future__ import annotations

from collections.abc import Mapping

from ..points import PERCENT, MachineReading, Range, Reading, ScadaPoints, Setting, Subject, Value
from .model import RUL_CAP_HOURS
from .result import PmResult

# The RUL model answers up to its cap.
RUL_RANGE: Range = (0.0, RUL_CAP_HOURS)


def _worst(latest: Mapping[Subject, PmResult]) -> tuple[Subject, PmResult] | None:
    return max(latest.items(), key=lambda item: item[1].failure_probability, default=None)


def _worst_machine(latest: Mapping[Subject, PmResult]) -> Value:
    worst = _worst(latest)
    return int(worst[0]) if worst is not None else 0


def _worst_failure_probability(latest: Mapping[Subject, PmResult]) -> Value:
    worst = _worst(latest)
    return 100 * worst[1].failure_probability if worst is not None else 0.0


def _worst_rul_hours(latest: Mapping[Subject, PmResult]) -> Value:
    return min((r.rul_hours for r in latest.values()), default=0.0)


POINTS: ScadaPoints[PmResult] = ScadaPoints(
    folder="PredictiveMaintenance",
    agent=(
        Reading(key="worst_machine", browse_name="WorstMachine", description="machine with "
                "the highest failure probability (0 = none yet)", type="Int32",
                value=_worst_machine),
        Reading(key="worst_failure_probability", browse_name="WorstFailureProbability",
                description="its probability of failing within 24 h", type="Float", unit="%",
                scale=10, normal_range=PERCENT, value=_worst_failure_probability),
        Reading(key="worst_rul_hours", browse_name="WorstRulHours", description="shortest "
                "remaining useful life over all machines", type="Float", unit="h", scale=10,
                normal_range=RUL_RANGE, value=_worst_rul_hours),
        Setting(key="failure_probability_emergency", description="EMERGENCY from this "
                "failure probability", scale=1000),
        Setting(key="rul_critical_hours", description="CRITICAL below this RUL", unit="h",
                scale=10, normal_range=RUL_RANGE),
        Setting(key="rul_warning_hours", description="WARNING below this RUL", unit="h",
                scale=10, normal_range=RUL_RANGE),
    ),
    machine=(
        MachineReading(slot=1, key="failure_probability", browse_suffix="FailureProbability",
                       description="probability of failing within 24 h", type="Float",
                       unit="%", scale=10, normal_range=PERCENT,
                       value=lambda r: 100 * r.failure_probability),
        MachineReading(slot=2, key="rul_hours", browse_suffix="RulHours", description="remaining "
                       "useful life", type="Float", unit="h", scale=10, normal_range=RUL_RANGE,
                       value=lambda r: r.rul_hours),
    ),
)  # fmt: skip
