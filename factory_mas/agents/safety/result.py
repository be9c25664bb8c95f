"""What safety_agent says about one record."""

from __future__ import annotations

from ..result import AgentResult


class SafetyResult(AgentResult):
    hazard_score: float  # 0..1, smoothed
    hazard_score_raw: float
    hazard_type: str  # NONE below the caution score, else the likeliest hazard
    safety_score: float  # 0..100
    evacuation_required: bool
    # The physical limit exceeded, in words ("temperature_c 131 C is above its limit of
    # 115 C"); empty when none is.
    limit: str = ""
