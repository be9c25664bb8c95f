"""pm_agent's rules: levels from the model's outputs and the thresholds in settings."""

from __future__ import annotations

import itertools

import pytest

from factory_mas.agents.pm import logic
from factory_mas.levels import LEVELS, RANK, worst
from factory_mas.settings import PmSettings

DEFAULT = PmSettings()
# Deliberately unlike the defaults, to show the thresholds come from settings.
CUSTOM = PmSettings(
    failure_probability_warning=0.3,
    failure_probability_emergency=0.5,
    rul_critical_hours=10.0,
    rul_warning_hours=20.0,
    rul_caution_hours=30.0,
)
JUST_BELOW = 1e-6


def test_the_defaults_are_the_ones_in_the_design():
    assert DEFAULT.failure_probability_emergency == 0.8
    assert (DEFAULT.rul_critical_hours, DEFAULT.rul_warning_hours, DEFAULT.rul_caution_hours) == (
        24.0,
        72.0,
        168.0,
    )


def boundary_cases(t: PmSettings) -> list[tuple[float, float, str]]:
    """(failure probability, RUL hours, level) exactly at and just below every threshold."""
    low_p = t.failure_probability_warning / 2
    far = t.rul_caution_hours * 3
    return [
        # failure probability: >= each threshold is its level
        (t.failure_probability_emergency, far, "EMERGENCY"),
        (t.failure_probability_emergency - JUST_BELOW, far, "WARNING"),
        (t.failure_probability_warning, far, "WARNING"),
        (t.failure_probability_warning - JUST_BELOW, far, "NORMAL"),
        (1.0, far, "EMERGENCY"),
        # RUL: strictly below each threshold takes the worse level
        (low_p, t.rul_critical_hours - JUST_BELOW, "CRITICAL"),
        (low_p, t.rul_critical_hours, "WARNING"),
        (low_p, t.rul_warning_hours - JUST_BELOW, "WARNING"),
        (low_p, t.rul_warning_hours, "CAUTION"),
        (low_p, t.rul_caution_hours - JUST_BELOW, "CAUTION"),
        (low_p, t.rul_caution_hours, "NORMAL"),
        (low_p, 0.0, "CRITICAL"),
        (0.0, far, "NORMAL"),
    ]


@pytest.mark.parametrize(("p", "rul", "level"), boundary_cases(DEFAULT))
def test_level_for_default_thresholds(p, rul, level):
    assert logic.level_for(p, rul, False, DEFAULT) == level


@pytest.mark.parametrize(("p", "rul", "level"), boundary_cases(CUSTOM))
def test_level_for_follows_the_settings(p, rul, level):
    assert logic.level_for(p, rul, False, CUSTOM) == level


def test_custom_thresholds_change_the_answer():
    # The same reading is judged differently under different settings.
    assert logic.level_for(0.6, 50.0, False, DEFAULT) == "WARNING"
    assert logic.level_for(0.6, 50.0, False, CUSTOM) == "EMERGENCY"
    assert logic.level_for(0.1, 25.0, False, DEFAULT) == "WARNING"
    assert logic.level_for(0.1, 25.0, False, CUSTOM) == "CAUTION"


@pytest.mark.parametrize("rul", [0.0, 5.0, 23.9, 50.0, 100.0, 1000.0])
def test_failure_probability_emergency_wins_over_rul(rul):
    assert logic.level_for(0.8, rul, False, DEFAULT) == "EMERGENCY"
    assert logic.level_for(0.99, rul, False, DEFAULT) == "EMERGENCY"


@pytest.mark.parametrize(
    ("p", "rul"), [(1.0, 0.0), (0.9, 10.0), (0.5, 50.0), (0.0, 0.0), (0.1, 1000.0)]
)
def test_a_machine_in_maintenance_is_normal(p, rul):
    assert logic.level_for(p, rul, True, DEFAULT) == "NORMAL"
    assert logic.action_for("NORMAL", True) == logic.IN_MAINTENANCE_ACTION


GRID_P = [0.0, 0.05, 0.2, 0.5, 0.79, 0.8, 0.95, 1.0]
GRID_RUL = [-5.0, 0.0, 1.0, 23.9, 24.0, 71.9, 72.0, 100.0, 167.9, 168.0, 400.0, 10_000.0]


@pytest.mark.parametrize("t", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_health_score_range(t):
    for p, rul in itertools.product(GRID_P, GRID_RUL):
        assert 0.0 <= logic.health_score(p, rul, t) <= 100.0, (p, rul)
    assert logic.health_score(0.0, t.rul_caution_hours, t) == 100.0
    assert logic.health_score(0.0, 10 * t.rul_caution_hours, t) == 100.0
    assert logic.health_score(1.0, 10 * t.rul_caution_hours, t) == 0.0
    assert logic.health_score(0.0, 0.0, t) == 0.0
    assert logic.health_score(0.0, -10.0, t) == 0.0  # a RUL below zero is still just zero


@pytest.mark.parametrize("t", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_health_score_falls_with_risk_and_rises_with_life(t):
    for rul in GRID_RUL:
        scores = [logic.health_score(p, rul, t) for p in GRID_P]
        assert scores == sorted(scores, reverse=True), f"not falling with p at rul={rul}"
    for p in GRID_P:
        scores = [logic.health_score(p, rul, t) for rul in GRID_RUL]
        assert scores == sorted(scores), f"not rising with rul at p={p}"
    # Strictly, where it matters: a week's life and a low risk beat a day's life.
    assert logic.health_score(0.1, 24.0, t) < logic.health_score(0.1, t.rul_caution_hours, t)
    assert logic.health_score(0.6, 500.0, t) < logic.health_score(0.2, 500.0, t)


@pytest.mark.parametrize(
    ("p", "expected"), [(0.5, 0.5), (0.0, 1.0), (1.0, 1.0), (0.9, 0.9), (0.1, 0.9), (0.25, 0.75)]
)
def test_confidence(p, expected):
    assert logic.confidence(p) == pytest.approx(expected)


def test_confidence_is_symmetric_and_grows_away_from_a_coin_toss():
    ps = [i / 100 for i in range(50, 101)]
    values = [logic.confidence(p) for p in ps]
    assert values == sorted(values)
    for p in ps:
        assert logic.confidence(p) == pytest.approx(logic.confidence(1 - p), abs=1e-3)
        assert 0.5 <= logic.confidence(p) <= 1.0


@pytest.mark.parametrize(
    ("p", "t", "kind"),
    [
        (0.8, DEFAULT, "IMMINENT_FAILURE"),
        (1.0, DEFAULT, "IMMINENT_FAILURE"),
        (0.8 - JUST_BELOW, DEFAULT, "LOW_RUL"),
        (0.0, DEFAULT, "LOW_RUL"),
        (0.5, CUSTOM, "IMMINENT_FAILURE"),
        (0.5 - JUST_BELOW, CUSTOM, "LOW_RUL"),
    ],
)
def test_alert_type(p, t, kind):
    assert logic.alert_type(p, t) == kind


def test_every_level_has_its_own_action():
    actions = [logic.action_for(level, False) for level in LEVELS]
    assert len(set(actions)) == len(LEVELS)
    assert all(actions)
    assert logic.IN_MAINTENANCE_ACTION not in actions
    assert {logic.action_for(level, True) for level in LEVELS} == {logic.IN_MAINTENANCE_ACTION}


# ------------------------------------------------------------------ levels.worst

WORST = [
    ([], "NORMAL"),
    (["NORMAL"], "NORMAL"),
    (["CAUTION", "NORMAL"], "CAUTION"),
    (["WARNING", "CAUTION", "NORMAL"], "WARNING"),
    (["NORMAL", "CRITICAL", "WARNING"], "CRITICAL"),
    (["CAUTION", "EMERGENCY", "WARNING", "CRITICAL"], "EMERGENCY"),
    (["EMERGENCY", "EMERGENCY"], "EMERGENCY"),
]


@pytest.mark.parametrize(("levels", "expected"), WORST)
def test_worst(levels, expected):
    assert worst(levels) == expected


def test_levels_are_ranked_in_order_of_severity():
    assert list(LEVELS) == ["NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"]
    assert [RANK[level] for level in LEVELS] == sorted(RANK[level] for level in LEVELS)
    for a, b in itertools.combinations(LEVELS, 2):
        assert worst([a, b]) == worst([b, a]) == b
