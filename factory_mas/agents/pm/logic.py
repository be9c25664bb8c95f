"""Predictive-maintenance rules: pure functions of the model's outputs and the settings."""

from __future__ import annotations

import math

from ...levels import Level, worst
from ...settings import PmSettings
from ..conditioning import level_with_deadband

ACTIONS: dict[str, str] = {
    "EMERGENCY": "Stop the machine now and inspect it: failure is imminent",
    "CRITICAL": "Schedule maintenance within 24 hours",
    "WARNING": "Plan maintenance within 3 days and order parts",
    "CAUTION": "Watch the trend; plan maintenance within the week",
    "NORMAL": "No action needed",
}
IN_MAINTENANCE_ACTION = "Machine is in maintenance; scores resume when it is back in service"


def level_for(
    failure_probability: float,
    rul_hours: float,
    in_maintenance: bool,
    t: PmSettings,
    previous: Level | None = None,
) -> Level:
    """The level of (smoothed) scores, with hysteresis against the machine's previous
    level: the worse of what the failure probability and the remaining life say."""
    if in_maintenance:
        # A machine under repair is not at risk of failing in service; its readings
        # (cold, stopped) say nothing about the life that follows.
        return "NORMAL"
    by_risk = level_with_deadband(
        failure_probability,
        [
            (t.failure_probability_warning, "WARNING"),
            (t.failure_probability_emergency, "EMERGENCY"),
        ],
        previous,
        t.deadband,
    )
    # Lower is worse: negated, so the deadband lies above each RUL threshold. A level
    # holds strictly below its threshold ("less than 24 h left"): the next float up.
    by_life = level_with_deadband(
        -rul_hours,
        [
            (math.nextafter(-t.rul_caution_hours, math.inf), "CAUTION"),
            (math.nextafter(-t.rul_warning_hours, math.inf), "WARNING"),
            (math.nextafter(-t.rul_critical_hours, math.inf), "CRITICAL"),
        ],
        previous,
        t.rul_deadband_hours,
    )
    return worst([by_risk, by_life])


def health_score(failure_probability: float, rul_hours: float, t: PmSettings) -> float:
    """0..100: full health needs both a low failure risk and at least a week of life left."""
    life_factor = min(1.0, max(0.0, rul_hours) / t.rul_caution_hours)
    return round(100.0 * (1.0 - failure_probability) * life_factor, 1)


def confidence(failure_probability: float) -> float:
    """How far the classifier's vote is from a coin toss, 0.5..1."""
    return round(max(failure_probability, 1.0 - failure_probability), 3)


def action_for(level: Level, in_maintenance: bool) -> str:
    return IN_MAINTENANCE_ACTION if in_maintenance else ACTIONS[level]


def alert_type(failure_probability: float, t: PmSettings) -> str:
    return (
        "IMMINENT_FAILURE" if failure_probability >= t.failure_probability_emergency else "LOW_RUL"
    )
