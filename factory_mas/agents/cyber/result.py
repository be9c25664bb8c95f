"""What cyber_agent says about one record."""

from __future__ import annotations

from typing import Any

from ..result import AgentResult
from .logic import ThreatLevel


class CyberResult(AgentResult):
    anomaly_score: float  # smoothed
    anomaly_score_raw: float
    is_anomaly: bool
    threat_level: ThreatLevel
    consecutive_anomalies: int
    # The features far from normal traffic, farthest first: {"feature", "value", "zscore"}.
    indicators: list[dict[str, Any]]
