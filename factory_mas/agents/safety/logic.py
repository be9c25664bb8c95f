"""Hazard rules: pure functions of the class probabilities and the settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...levels import Level
from ...settings import SafetySettings
from ..conditioning import level_with_deadband

NO_HAZARD = "NONE"
_WHAT: dict[str, str] = {
    "FIRE_RISK": "temperature far beyond the machine's working range: fire risk",
    "MECHANICAL_HAZARD": "violent vibration: risk of parts working loose or breaking",
    "ELECTRICAL_HAZARD": "power draw and heat of an electrical fault",
}
_DO: dict[str, str] = {
    "FIRE_RISK": "Have extinguishers ready and cut the machine's power if it is safe to do so.",
    "MECHANICAL_HAZARD": "Stop the machine and keep people clear of moving parts until inspected.",
    "ELECTRICAL_HAZARD": "Isolate the supply (lockout/tagout) before anyone touches the machine.",
}


def hazard_score(p_none: float) -> float:
    return 1.0 - p_none


def hazard_type_for(score: float, hazards: Mapping[str, float], t: SafetySettings) -> str:
    """The likeliest hazard, named only from the caution score up: below it there is
    nothing worth naming, and naming a guess would only teach people to ignore it."""
    if score < t.hazard_score_caution:
        return NO_HAZARD
    # max() keeps the first of equals: a tie goes to the hazard listed first.
    return max(hazards, key=hazards.__getitem__)


def level_for(
    score: float, hazard_type: str, t: SafetySettings, previous: Level | None = None
) -> Level:
    """The level of a (smoothed) hazard score, with hysteresis against `previous`."""
    top: Level = "EMERGENCY" if hazard_type in t.evacuate_for else "CRITICAL"
    cuts: list[tuple[float, Level]] = [
        (t.hazard_score_caution, "CAUTION"),
        (t.hazard_score_warning, "WARNING"),
        (t.hazard_score_critical, "CRITICAL"),
        (t.hazard_score_emergency, top),
    ]
    return level_with_deadband(score, cuts, previous, t.deadband)


def safety_score(score: float) -> float:
    """0..100, 100 = no sign of any hazard."""
    return round(100.0 * (1.0 - score), 1)


def evacuation_required(level: Level) -> bool:
    return level == "EMERGENCY"


def alert_details(machine_id: int | None, level: Level, result: Mapping[str, Any]) -> str:
    kind = result["hazard_type"]
    first = "EVACUATE THE AREA NOW. " if result["evacuation_required"] else ""
    return (
        f"Machine {machine_id}: {kind.replace('_', ' ').lower()} ({level}), "
        f"hazard score {result['hazard_score']:.0%}, safety score "
        f"{result['safety_score']:.0f}/100; {_WHAT.get(kind, 'unusual readings')}. "
        f"{first}{_DO.get(kind, 'Inspect the machine.')}"
    )
