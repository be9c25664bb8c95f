"""energy_agent's SCADA points: the plant's draw, its anomalies, and the anomaly threshold."""

from __future__ import annotations

from collections.abc import Mapping

from ...settings import Settings
from ..points import MachineReading, Range, Reading, ScadaPoints, Setting, Subject
from .result import EnergyResult

# A machine of the dataset draws up to 10 kW.
MACHINE_KW_MAX = 10.0


def _plant_kw_range(settings: Settings) -> Range:
    return (0.0, MACHINE_KW_MAX * settings.replay.machines)


def _anomalous(latest: Mapping[Subject, EnergyResult]) -> int:
    return sum(r.is_anomaly for r in latest.values())


POINTS: ScadaPoints[EnergyResult] = ScadaPoints(
    folder="EnergyOptimization",
    agent=(
        Reading(key="total_kw", browse_name="TotalPower", description="sum of every machine's "
                "latest draw", type="Float", unit="kW", scale=10, normal_range=_plant_kw_range,
                value=lambda latest: sum(r.consumption_kw for r in latest.values())),
        Reading(key="anomaly", browse_name="Anomaly", description="some machine's latest "
                "reading is a power anomaly", type="Boolean",
                value=lambda latest: _anomalous(latest) > 0),
        Reading(key="anomalous_machines", browse_name="AnomalousMachines", description="machines "
                "whose latest reading is a power anomaly", type="Int32", value=_anomalous),
        Setting(key="anomaly_score_threshold", description="anomaly from this score",
                scale=1000),
    ),
    machine=(
        MachineReading(slot=3, key="power_kw", browse_suffix="Power", description="latest power "
                       "draw", type="Float", unit="kW", scale=100,
                       normal_range=(0.0, MACHINE_KW_MAX), value=lambda r: r.consumption_kw),
    ),
)  # fmt: skip
