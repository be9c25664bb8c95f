"""safety_agent's rules: hazard type, level, safety score and evacuation, exhaustively."""

from __future__ import annotations

import numpy as np
import pytest

from factory_mas.agents.safety import logic
from factory_mas.agents.safety.model import HAZARDS
from factory_mas.errors import SettingsError
from factory_mas.levels import LEVELS
from factory_mas.settings import SafetySettings, load_settings
from factory_mas.settings.agents import MachineLimits
from factory_mas.sim.synthetic import DEFAULT_PARAMS, SHIFTED_PLANTS, FactorySimulator

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


# -- physical limits -------------------------------------------------------------------

LIMITED = SafetySettings(
    temperature_max_c=100.0,
    vibration_max_hz=6.0,
    power_max_kw=0.0,
    machine_limits={"7": MachineLimits(temperature_max_c=80.0, power_max_kw=30.0)},
)


@pytest.mark.parametrize(
    ("machine", "values", "hazard"),
    [
        (1, (99.9, 5.9, 500.0), None),  # power is off plant-wide
        (1, (100.1, 1.0, 5.0), "FIRE_RISK"),
        (1, (60.0, 6.5, 5.0), "MECHANICAL_HAZARD"),
        (7, (85.0, 1.0, 5.0), "FIRE_RISK"),  # its own, lower, temperature limit
        (7, (60.0, 6.5, 5.0), "MECHANICAL_HAZARD"),  # the plant's vibration limit
        (7, (60.0, 1.0, 31.0), "ELECTRICAL_HAZARD"),  # its own power limit
        (None, (99.0, 1.0, 31.0), None),
    ],
)
def test_a_reading_beyond_a_limit_names_its_hazard(machine, values, hazard):
    found = logic.limit_exceeded(machine, values, LIMITED)
    assert (found[0] if found else None) == hazard
    if found:
        assert found[1].split()[0] in {"temperature_c", "vibration_hz", "power_consumption_kw"}
        assert "above its limit" in found[1]


def test_a_limit_raises_the_score_to_its_level():
    t = SafetySettings(limit_level="WARNING")
    assert logic.score_for_limit(0.01, t) == t.hazard_score_warning
    assert logic.score_for_limit(0.95, t) == 0.95
    # CRITICAL by default, so the level follows.
    score = logic.score_for_limit(0.0, DEFAULT)
    assert logic.level_for(score, "FIRE_RISK", DEFAULT) == "CRITICAL"


def test_limits_are_read_from_the_settings_file(tmp_path):
    path = tmp_path / "settings.toml"
    path.write_text(
        "[agents.safety]\ntemperature_max_c = 95\n"
        '[agents.safety.machine_limits."12"]\nvibration_max_hz = 4.5\n'
    )
    t = load_settings(path=path, env={}).agents.safety
    assert t.limits_of(12) == (95.0, 4.5, 0.0)
    assert t.limits_of(3) == (95.0, 6.0, 0.0)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("temperature_max_c = -5", "temperature_max_c"),
        ('vibration_max_hz = "high"', "vibration_max_hz"),
        ('limit_level = "NORMAL"', "limit_level"),
        ("[agents.safety.machine_limits.press]\npower_max_kw = 3", "machine_limits"),
        ('[agents.safety.machine_limits."4"]\npower_max = 3', "power_max"),
    ],
)
def test_bad_limits_stop_start_up_naming_them(tmp_path, text, named):
    path = tmp_path / "settings.toml"
    path.write_text(f"[agents.safety]\n{text}\n")
    with pytest.raises(SettingsError) as info:
        load_settings(path=path, env={})
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_the_default_limits_never_fire_on_simulated_normal_readings():
    """Not on the default plant, nor on the hot, big and small ones."""
    for params in (DEFAULT_PARAMS, *(SHIFTED_PLANTS[k] for k in ("hot", "big", "small"))):
        cols = FactorySimulator(seed=3, machines=20, step_minutes=5.0, params=params).run(300)
        c = cols.columns
        calm = np.flatnonzero(np.asarray(c["hazard_type"]) == "NONE")
        for i in calm:
            values = [float(c[name][i]) for _, name, _ in logic.LIMITED]
            assert logic.limit_exceeded(int(c["machine_id"][i]), values, DEFAULT) is None
