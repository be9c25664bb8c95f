"""safety_agent's rules: hazard type, level, safety score and evacuation, exhaustively."""

from __future__ import annotations

import pytest

from factory_mas.agents.safety import logic
from factory_mas.agents.safety.model import HAZARDS
from factory_mas.errors import SettingsError
from factory_mas.levels import LEVELS
from factory_mas.settings import SafetySettings, load_settings

DEFAULT = SafetySettings()
# Deliberately unlike the defaults, to show the rules read the settings.
CUSTOM = SafetySettings(
    hazard_score_caution=0.2,
    hazard_score_warning=0.4,
    hazard_score_critical=0.6,
    hazard_score_emergency=0.8,
    evacuate_for=["MECHANICAL_HAZARD"],
)
JUST_BELOW = 1e-6


def test_the_defaults():
    t = DEFAULT
    cuts = (
        t.hazard_score_caution,
        t.hazard_score_warning,
        t.hazard_score_critical,
        t.hazard_score_emergency,
    )
    assert cuts == (0.3, 0.5, 0.7, 0.9)
    assert t.evacuate_for == ["FIRE_RISK", "ELECTRICAL_HAZARD"]


def level_table(t: SafetySettings) -> list[tuple[float, str, str]]:
    """(hazard score, hazard type, level) at and just below every cut, for every hazard."""
    rows = []
    for kind in HAZARDS:
        top = "EMERGENCY" if kind in t.evacuate_for else "CRITICAL"
        rows += [
            (1.0, kind, top),
            (t.hazard_score_emergency, kind, top),
            (t.hazard_score_emergency - JUST_BELOW, kind, "CRITICAL"),
            (t.hazard_score_critical, kind, "CRITICAL"),
            (t.hazard_score_critical - JUST_BELOW, kind, "WARNING"),
            (t.hazard_score_warning, kind, "WARNING"),
            (t.hazard_score_warning - JUST_BELOW, kind, "CAUTION"),
            (t.hazard_score_caution, kind, "CAUTION"),
        ]
    rows.append((t.hazard_score_caution - JUST_BELOW, "NONE", "NORMAL"))
    rows.append((0.0, "NONE", "NORMAL"))
    return rows


@pytest.mark.parametrize(("score", "kind", "level"), level_table(DEFAULT))
def test_level_for_default_thresholds(score, kind, level):
    assert logic.level_for(score, kind, DEFAULT) == level


@pytest.mark.parametrize(("score", "kind", "level"), level_table(CUSTOM))
def test_level_for_follows_the_settings(score, kind, level):
    assert logic.level_for(score, kind, CUSTOM) == level


def test_a_sure_mechanical_hazard_stops_the_machine_but_does_not_evacuate_by_default():
    assert logic.level_for(0.99, "MECHANICAL_HAZARD", DEFAULT) == "CRITICAL"
    assert logic.level_for(0.99, "MECHANICAL_HAZARD", CUSTOM) == "EMERGENCY"
    assert logic.level_for(0.99, "FIRE_RISK", CUSTOM) == "CRITICAL"


@pytest.mark.parametrize("level", LEVELS)
def test_evacuation_is_required_exactly_at_emergency(level):
    assert logic.evacuation_required(level) is (level == "EMERGENCY")


@pytest.mark.parametrize(
    ("score", "hazards", "kind"),
    [
        (0.0, {"FIRE_RISK": 0.0, "MECHANICAL_HAZARD": 0.0, "ELECTRICAL_HAZARD": 0.0}, "NONE"),
        # Below the caution cut nothing is named, however lopsided the guess.
        (
            0.3 - JUST_BELOW,
            {"FIRE_RISK": 0.3, "MECHANICAL_HAZARD": 0, "ELECTRICAL_HAZARD": 0},
            "NONE",
        ),
        (0.3, {"FIRE_RISK": 0.3, "MECHANICAL_HAZARD": 0.0, "ELECTRICAL_HAZARD": 0.0}, "FIRE_RISK"),
        (
            0.6,
            {"FIRE_RISK": 0.1, "MECHANICAL_HAZARD": 0.4, "ELECTRICAL_HAZARD": 0.1},
            "MECHANICAL_HAZARD",
        ),
        (
            0.95,
            {"FIRE_RISK": 0.4, "MECHANICAL_HAZARD": 0.0, "ELECTRICAL_HAZARD": 0.55},
            "ELECTRICAL_HAZARD",
        ),
        # A tie goes to the hazard listed first.
        (0.8, {"FIRE_RISK": 0.4, "MECHANICAL_HAZARD": 0.0, "ELECTRICAL_HAZARD": 0.4}, "FIRE_RISK"),
    ],
)
def test_hazard_type_is_the_likeliest_hazard_once_the_score_is_worth_naming(score, hazards, kind):
    assert logic.hazard_type_for(score, hazards, DEFAULT) == kind


def test_hazard_type_cut_comes_from_the_settings():
    hazards = {"FIRE_RISK": 0.25, "MECHANICAL_HAZARD": 0.0, "ELECTRICAL_HAZARD": 0.0}
    assert logic.hazard_type_for(0.25, hazards, DEFAULT) == "NONE"
    assert logic.hazard_type_for(0.25, hazards, CUSTOM) == "FIRE_RISK"


@pytest.mark.parametrize(
    ("p_none", "hazard", "safety"),
    [(1.0, 0.0, 100.0), (0.0, 1.0, 0.0), (0.75, 0.25, 75.0), (0.12345, 0.87655, 12.3)],
)
def test_hazard_score_and_safety_score(p_none, hazard, safety):
    assert logic.hazard_score(p_none) == pytest.approx(hazard)
    assert logic.safety_score(logic.hazard_score(p_none)) == safety


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FACTORY_AGENTS_SAFETY_HAZARD_SCORE_WARNING": "0.8"}, "hazard_score_caution"),
        ({"FACTORY_AGENTS_SAFETY_HAZARD_SCORE_EMERGENCY": "1.5"}, "hazard_score_emergency"),
        ({"FACTORY_AGENTS_SAFETY_EVACUATE_FOR": "FIRE_RISK,FLOOD"}, "evacuate_for"),
    ],
)
def test_bad_thresholds_stop_start_up_naming_them(env, named):
    with pytest.raises(SettingsError) as info:
        load_settings(env=env)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_evacuate_for_is_read_from_the_environment():
    s = load_settings(env={"FACTORY_AGENTS_SAFETY_EVACUATE_FOR": "FIRE_RISK"})
    assert s.agents.safety.evacuate_for == ["FIRE_RISK"]


@pytest.mark.parametrize(
    ("kind", "level", "evacuate", "words"),
    [
        ("FIRE_RISK", "EMERGENCY", True, ("fire risk", "EVACUATE", "extinguishers")),
        ("ELECTRICAL_HAZARD", "CRITICAL", False, ("electrical hazard", "lockout")),
        ("MECHANICAL_HAZARD", "CRITICAL", False, ("mechanical hazard", "vibration", "Stop")),
    ],
)
def test_alert_details_say_what_and_what_to_do(kind, level, evacuate, words):
    result = {
        "hazard_score": 0.9712,
        "hazard_type": kind,
        "safety_score": 2.9,
        "evacuation_required": evacuate,
    }
    text = logic.alert_details(4, level, result)
    assert text.startswith(f"Machine 4: {kind.replace('_', ' ').lower()} ({level})")
    assert "hazard score 97%" in text and "safety score 3/100" in text
    for word in words:
        assert word in text
    assert ("EVACUATE" in text) is evacuate
