"""safety_agent's SCADA points: the highest hazard, evacuation, and the hazard thresholds."""

from __future__ import annotations

from ..points import PERCENT, MachineReading, Reading, ScadaPoints, Setting
from .result import SafetyResult

POINTS: ScadaPoints[SafetyResult] = ScadaPoints(
    folder="WorkplaceSafety",
    agent=(
        Reading(key="max_hazard_score", browse_name="MaxHazardScore", description="highest "
                "hazard score over all machines", type="Float", unit="%", scale=10,
                normal_range=PERCENT,
                value=lambda latest: 100 * max((r.hazard_score for r in latest.values()),
                                               default=0.0)),
        Reading(key="evacuation_required", browse_name="EvacuationRequired", description="some "
                "machine calls for evacuation", type="Boolean",
                value=lambda latest: any(r.evacuation_required for r in latest.values())),
        Setting(key="hazard_score_warning", description="WARNING from this hazard score",
                scale=1000),
        Setting(key="hazard_score_critical", description="CRITICAL from this hazard score",
                scale=1000),
    ),
    machine=(
        MachineReading(slot=4, key="hazard_score", browse_suffix="HazardScore",
                       description="safety hazard score", type="Float", unit="%", scale=10,
                       normal_range=PERCENT, value=lambda r: 100 * r.hazard_score),
    ),
)  # fmt: skip
