"""Hazard rules: pure functions of the class probabilities and the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


# The hazard each physical limit stands for, the reading it bounds, and its unit, in the
# order of SafetySettings.limits_of().
LIMITED: tuple[tuple[str, str, str], ...] = (
    ("FIRE_RISK", "temperature_c", "C"),
    ("MECHANICAL_HAZARD", "vibration_hz", "Hz"),
    ("ELECTRICAL_HAZARD", "power_consumption_kw", "kW"),
)


def limit_exceeded(
    machine_id: int | None, values: Sequence[float], t: SafetySettings
) -> tuple[str, str] | None:
    """(hazard, what was exceeded) for the first limit of the machine that `values` (one
    reading per LIMITED entry) goes beyond; None when all are within (or off)."""
    for (hazard, name, unit), value, limit in zip(
        LIMITED, values, t.limits_of(machine_id), strict=True
    ):
        if limit > 0 and value > limit:
            return hazard, f"{name} {value:g} {unit} is above its limit of {limit:g} {unit}"
    return None


def score_for_limit(score: float, t: SafetySettings) -> float:
    """A score at least at the cut of limit_level, so the level, the score and the
    safety score all tell of the exceeded limit."""
    cut = {
        "CAUTION": t.hazard_score_caution,
        "WARNING": t.hazard_score_warning,
        "CRITICAL": t.hazard_score_critical,
        "EMERGENCY": t.hazard_score_emergency,
    }[t.limit_level]
    return max(score, cut)


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
    what = result.get("limit") or _WHAT.get(kind, "unusual readings")
    return (
        f"Machine {machine_id}: {kind.replace('_', ' ').lower()} ({level}), "
        f"hazard score {result['hazard_score']:.0%}, safety score "
        f"{result['safety_score']:.0f}/100; {what}. "
        f"{first}{_DO.get(kind, 'Inspect the machine.')}"
    )
