"""cyber_agent's SCADA points: the worst threat, and how many anomalies make it HIGH."""

from __future__ import annotations

from ..points import MachineReading, Reading, ScadaPoints, Setting
from .result import CyberResult

THREAT_CODES = {"LOW": 0, "MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}


def _threat_code(r: CyberResult) -> int:
    return THREAT_CODES.get(r.threat_level, 0)


POINTS: ScadaPoints[CyberResult] = ScadaPoints(
    folder="CyberSecurity",
    agent=(
        Reading(key="threat_level", browse_name="ThreatLevel", description="worst threat: 0 "
                "LOW, 1 MEDIUM, 2 HIGH, 3 CRITICAL", type="Int32", lo=0, hi=3,
                value=lambda latest: max((_threat_code(r) for r in latest.values()), default=0)),
        Reading(key="anomalous_machines", browse_name="AnomalousMachines", description="machines "
                "whose latest network reading is anomalous", type="Int32",
                value=lambda latest: sum(r.is_anomaly for r in latest.values())),
        Setting(key="high_after_anomalies", description="consecutive anomalies for threat HIGH"),
    ),
    machine=(
        MachineReading(slot=5, key="threat_level", browse_suffix="ThreatLevel",
                       description="network threat: 0 LOW .. 3 CRITICAL", type="Int32", lo=0,
                       hi=3, value=_threat_code),
    ),
)  # fmt: skip
