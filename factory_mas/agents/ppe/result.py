"""What ppe_agent says about one camera frame."""

from __future__ import annotations

from ..result import AgentResult


class PpeResult(AgentResult):
    probabilities: dict[str, float]  # item -> the model's probability that it is worn
    missing_items: list[str]  # smoothed over the camera's window
    compliant: bool
    raw_missing: list[str]  # this frame alone
    # Whether the frame shows anyone: without a person no item is missing. person_score is
    # the model's probability, None for a model without a person output (always present).
    person_present: bool = True
    person_score: float | None = None
