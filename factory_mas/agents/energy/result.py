"""What energy_agent says about one record."""

from __future__ import annotations

from ..result import AgentResult


class EnergyResult(AgentResult):
    consumption_kw: float  # what the machine drew
    forecast_kw: float  # what the model expected it to draw
    baseline_kw: float  # what it usually draws in this mode
    anomaly_score: float  # smoothed
    anomaly_score_raw: float
    is_anomaly: bool
    efficiency_score: float  # 0..100
    recommendations: list[str]
