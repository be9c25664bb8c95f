"""What pm_agent says about one record."""

from __future__ import annotations

from ..result import AgentResult


class PmResult(AgentResult):
    failure_probability: float  # of failing within 24 h, smoothed
    rul_hours: float  # remaining useful life, trended
    failure_probability_raw: float  # the model's answer for this record alone
    rul_hours_raw: float
    health_score: float  # 0..100
    confidence: float  # 0.5..1
    action: str
