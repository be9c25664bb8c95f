"""What ppe_agent says about one camera frame."""

from __future__ import annotations

from ..result import AgentResult


class PpeResult(AgentResult):
    probabilities: dict[str, float]  # item -> the model's probability that it is worn
    missing_items: list[str]  # smoothed over the camera's window
    compliant: bool
    raw_missing: list[str]  # this frame alone
