"""ppe_agent's SCADA points: whether every camera's workers wear their PPE."""

from __future__ import annotations

from collections.abc import Mapping

from ..points import Reading, ScadaPoints, Setting, Subject
from .result import PpeResult


def _noncompliant(latest: Mapping[Subject, PpeResult]) -> int:
    return sum(not r.compliant for r in latest.values())


POINTS: ScadaPoints[PpeResult] = ScadaPoints(
    folder="PPECompliance",
    agent=(
        Reading(key="compliant", browse_name="Compliant", description="every camera's workers "
                "wear their PPE", type="Boolean", value=lambda latest: _noncompliant(latest) == 0),
        Reading(key="cameras_noncompliant", browse_name="CamerasNonCompliant",
                description="cameras that see a worker without an item", type="Int32",
                value=_noncompliant),
        Setting(key="threshold", description="an item is seen from this probability",
                scale=1000),
    ),
)  # fmt: skip
