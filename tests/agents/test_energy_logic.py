"""energy_agent's rules: levels, recommendations and efficiency from one judged reading."""

from __future__ import annotations

import math

import pytest

from factory_mas.agents.energy import logic
from factory_mas.agents.energy.logic import Judged
from factory_mas.errors import SettingsError
from factory_mas.settings import EnergySettings, load_settings

DEFAULT = EnergySettings()
# Deliberately unlike the defaults, to show the thresholds come from settings.
CUSTOM = EnergySettings(
    anomaly_score_threshold=0.7,
    critical_forecast_ratio=3.0,
    above_forecast_pct=50.0,
    idle_waste_ratio=0.5,
    efficiency_reference_units_per_kwh=40.0,
    efficiency_low_score=80.0,
)
JUST_BELOW = 1e-6


def judged(**overrides: object) -> Judged:
    """An unremarkable Active reading of machine 7; tests change what they look at."""
    base = {
        "machine_id": 7,
        "mode": "Active",
        "consumption_kw": 6.0,
        "forecast_kw": 6.0,
        "baseline_kw": 6.0,
        "active_baseline_kw": 6.0,
        "is_anomaly": False,
        "units_per_kwh": 55.0,
        "efficiency_score": 91.7,
    }
    return Judged(**{**base, **overrides})


def test_the_defaults():
    assert DEFAULT.anomaly_score_threshold == 0.5
    assert DEFAULT.critical_forecast_ratio == 2.0
    assert DEFAULT.above_forecast_pct == 25.0
    assert DEFAULT.idle_waste_ratio == 0.8
    assert DEFAULT.efficiency_reference_units_per_kwh == 60.0
    assert DEFAULT.efficiency_low_score == 65.0
    assert DEFAULT.alert_min_level == "WARNING"


# -- levels ---------------------------------------------------------------------------


def level_cases(t: EnergySettings) -> list[tuple[dict, str]]:
    critical_kw = t.critical_forecast_ratio * 5.0
    idle_waste_kw = t.idle_waste_ratio * 6.0
    idle = {"mode": "Idle", "forecast_kw": 2.4, "baseline_kw": 2.4, "active_baseline_kw": 6.0}
    return [
        ({}, "NORMAL"),
        # An anomaly is WARNING, and CRITICAL from the configured multiple of its forecast.
        ({"is_anomaly": True, "consumption_kw": 7.5, "forecast_kw": 5.0}, "WARNING"),
        ({"is_anomaly": True, "consumption_kw": critical_kw, "forecast_kw": 5.0}, "CRITICAL"),
        (
            {"is_anomaly": True, "consumption_kw": critical_kw - JUST_BELOW, "forecast_kw": 5.0},
            "WARNING",
        ),
        # Far above the forecast without the detector's verdict is not an anomaly.
        ({"consumption_kw": critical_kw * 2, "forecast_kw": 5.0}, "NORMAL"),
        # A drop is an anomaly too, never CRITICAL by the multiple.
        ({"is_anomaly": True, "consumption_kw": 0.5, "forecast_kw": 5.0}, "WARNING"),
        # Idle waste: from the configured share of the machine's own Active level.
        ({**idle, "consumption_kw": idle_waste_kw}, "CAUTION"),
        ({**idle, "consumption_kw": idle_waste_kw - JUST_BELOW}, "NORMAL"),
        ({**idle, "consumption_kw": 2.4}, "NORMAL"),
        # Never seen Active: nothing to compare with.
        ({**idle, "consumption_kw": 9.0, "active_baseline_kw": math.nan}, "NORMAL"),
        # Only Idle can waste that way; Maintenance drawing the Active level is not judged so.
        ({**idle, "mode": "Maintenance", "consumption_kw": 6.0}, "NORMAL"),
        # An anomaly outranks idle waste.
        ({**idle, "consumption_kw": 5.0, "forecast_kw": 3.0, "is_anomaly": True}, "WARNING"),
        (
            {**idle, "consumption_kw": 2.4 * t.critical_forecast_ratio, "is_anomaly": True},
            "CRITICAL",
        ),
    ]


@pytest.mark.parametrize(("overrides", "level"), level_cases(DEFAULT))
def test_level_for_default_thresholds(overrides, level):
    assert logic.level_for(judged(**overrides), DEFAULT) == level


@pytest.mark.parametrize(("overrides", "level"), level_cases(CUSTOM))
def test_level_for_follows_the_settings(overrides, level):
    assert logic.level_for(judged(**overrides), CUSTOM) == level


def test_custom_thresholds_really_differ_from_the_defaults():
    # 2.5x the forecast: CRITICAL at the default 2x, WARNING at the custom 3x.
    j = judged(is_anomaly=True, consumption_kw=12.5, forecast_kw=5.0)
    assert (logic.level_for(j, DEFAULT), logic.level_for(j, CUSTOM)) == ("CRITICAL", "WARNING")
    # Idle at 60% of its Active level: waste for the custom 0.5, not for the default 0.8.
    idle = judged(mode="Idle", consumption_kw=3.6, active_baseline_kw=6.0)
    assert (logic.level_for(idle, DEFAULT), logic.level_for(idle, CUSTOM)) == ("NORMAL", "CAUTION")


# -- recommendations ------------------------------------------------------------------

IDLE_7 = (
    "Machine 7 is Idle but draws 6.8 kW, close to its Active level of 7.0 kW: "
    "check for equipment left running"
)
LOW_EFFICIENCY = (
    "Low efficiency: 30 units/kWh, 50% of the 60 units/kWh reference: check the defect rate "
    "and whether the machine runs below its rated speed"
)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, []),
        (
            {"mode": "Idle", "consumption_kw": 6.8, "forecast_kw": 6.8, "active_baseline_kw": 7.0},
            [IDLE_7],
        ),
        (
            {"mode": "Idle", "consumption_kw": 7.7, "forecast_kw": 7.7, "active_baseline_kw": 7.0},
            [
                "Machine 7 is Idle but draws 7.7 kW, above its Active level of 7.0 kW: "
                "check for equipment left running"
            ],
        ),
        (
            {"is_anomaly": True, "consumption_kw": 8.7, "forecast_kw": 6.0},
            [
                "Consumption 45% above forecast (8.7 kW against 6.0 kW): inspect drives and "
                "loads for friction, jams or an electrical fault"
            ],
        ),
        # The forecast has caught up with a long episode; the usual level has not.
        (
            {"is_anomaly": True, "consumption_kw": 9.0, "forecast_kw": 8.5, "baseline_kw": 6.0},
            [
                "Consumption 50% above this machine's usual 6.0 kW when Active: inspect drives "
                "and loads for friction, jams or an electrical fault"
            ],
        ),
        (
            {"is_anomaly": True, "consumption_kw": 1.5, "forecast_kw": 6.0, "baseline_kw": 6.0},
            [
                "Consumption 75% below forecast (1.5 kW against 6.0 kW): check the power supply "
                "and whether the machine stopped"
            ],
        ),
        # Deviations are told only for anomalies: noise on small loads crosses 25% at times.
        ({"consumption_kw": 8.7, "forecast_kw": 6.0}, []),
        ({"consumption_kw": 1.5, "forecast_kw": 6.0}, []),
        # An anomaly within 25% of both references has nothing to add to its level.
        ({"is_anomaly": True, "consumption_kw": 7.0, "forecast_kw": 6.0}, []),
        ({"units_per_kwh": 30.0, "efficiency_score": 50.0}, [LOW_EFFICIENCY]),
        # Idle and Maintenance are not expected to produce.
        (
            {"mode": "Idle", "consumption_kw": 2.4, "units_per_kwh": 3.0, "efficiency_score": 5.0},
            [],
        ),
        ({"mode": "Maintenance", "units_per_kwh": 0.0, "efficiency_score": 0.0}, []),
        # Several at once, idle waste first.
        (
            {
                "mode": "Idle",
                "is_anomaly": True,
                "consumption_kw": 6.8,
                "forecast_kw": 2.0,
                "active_baseline_kw": 7.0,
            },
            [
                IDLE_7,
                "Consumption 240% above forecast (6.8 kW against 2.0 kW): inspect drives and "
                "loads for friction, jams or an electrical fault",
            ],
        ),
    ],
)
def test_recommendations(overrides, expected):
    assert logic.recommendations(judged(**overrides), DEFAULT) == expected


def test_recommendations_follow_the_settings():
    forty = judged(is_anomaly=True, consumption_kw=8.4, forecast_kw=6.0, baseline_kw=6.0)
    assert len(logic.recommendations(forty, DEFAULT)) == 1
    assert logic.recommendations(forty, CUSTOM) == []  # 50% needed
    # An efficiency of 75 is fine by the default 65, low by the custom 80.
    slow = judged(units_per_kwh=30.0, efficiency_score=75.0)
    assert logic.recommendations(slow, DEFAULT) == []
    assert logic.recommendations(slow, CUSTOM)[0].startswith("Low efficiency: 30 units/kWh, 75%")


def test_a_critical_reading_always_explains_itself():
    for t in (DEFAULT, CUSTOM):
        j = judged(is_anomaly=True, consumption_kw=t.critical_forecast_ratio * 3.0, forecast_kw=3.0)
        assert logic.level_for(j, t) == "CRITICAL"
        assert any("above forecast" in r for r in logic.recommendations(j, t))


# -- efficiency -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("speed", "defect_pct", "power_kw", "units", "score"),
    [
        (300.0, 0.0, 5.0, 60.0, 100.0),
        (300.0, 10.0, 5.0, 54.0, 90.0),
        (150.0, 0.0, 5.0, 30.0, 50.0),
        (600.0, 0.0, 5.0, 120.0, 100.0),  # capped at the reference
        (0.0, 0.0, 1.7, 0.0, 0.0),  # under repair: no output
        (10.0, 0.0, 0.0, 100.0, 100.0),  # 0 kW counts as the 0.1 kW floor, not a division by 0
    ],
)
def test_efficiency(speed, defect_pct, power_kw, units, score):
    got = logic.units_per_kwh(speed, defect_pct, power_kw)
    assert got == pytest.approx(units)
    assert logic.efficiency_score(got, DEFAULT) == score


def test_efficiency_score_uses_the_reference_from_settings():
    assert logic.efficiency_score(30.0, DEFAULT) == 50.0
    assert logic.efficiency_score(30.0, CUSTOM) == 75.0


# -- alerts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_anomaly", "level", "kind"),
    [
        (True, "WARNING", "POWER_ANOMALY"),
        (True, "CRITICAL", "POWER_ANOMALY"),
        (False, "CAUTION", "IDLE_WASTE"),
        (False, "NORMAL", "POWER_NORMAL"),
    ],
)
def test_alert_type(is_anomaly, level, kind):
    assert logic.alert_type(is_anomaly, level) == kind


def test_alert_details_name_the_machine_the_numbers_and_the_advice():
    result = {
        "consumption_kw": 12.04,
        "forecast_kw": 6.01,
        "baseline_kw": 5.96,
        "anomaly_score": 0.987,
        "recommendations": ["Consumption 100% above forecast (12.0 kW against 6.0 kW): act"],
    }
    assert logic.alert_details(7, result) == (
        "Machine 7 draws 12.0 kW against a forecast of 6.0 kW and a usual 6.0 kW for its mode "
        "(anomaly score 0.99). Consumption 100% above forecast (12.0 kW against 6.0 kW): act."
    )


# -- settings -------------------------------------------------------------------------


def test_settings_come_from_the_environment():
    s = load_settings(
        path=None,
        env={
            "FACTORY_SETTINGS": "/dev/null",
            "FACTORY_AGENTS_ENERGY_IDLE_WASTE_RATIO": "0.6",
            "FACTORY_AGENTS_ENERGY_CRITICAL_FORECAST_RATIO": "3",
        },
    ).agents.energy
    assert (s.idle_waste_ratio, s.critical_forecast_ratio) == (0.6, 3.0)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FACTORY_AGENTS_ENERGY_ABOVE_FORECAST_PCT": "150"}, "above_forecast_pct"),
        ({"FACTORY_AGENTS_ENERGY_CRITICAL_FORECAST_RATIO": "1.1"}, "above_forecast_pct"),
        ({"FACTORY_AGENTS_ENERGY_CRITICAL_FORECAST_RATIO": "1"}, "critical_forecast_ratio"),
        ({"FACTORY_AGENTS_ENERGY_ANOMALY_SCORE_THRESHOLD": "1.5"}, "anomaly_score_threshold"),
        ({"FACTORY_AGENTS_ENERGY_IDLE_WASTE_RATIO": "0"}, "idle_waste_ratio"),
        ({"FACTORY_AGENTS_ENERGY_EFFICIENCY_LOW_SCORE": "101"}, "efficiency_low_score"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(env, named):
    with pytest.raises(SettingsError) as info:
        load_settings(path=None, env={"FACTORY_SETTINGS": "/dev/null", **env})
    assert named in str(info.value)


def test_the_ordering_rule_allows_the_edge():
    s = EnergySettings(critical_forecast_ratio=1.5, above_forecast_pct=50.0)
    assert s.above_forecast_pct == 50.0
    with pytest.raises(ValueError, match="above_forecast_pct"):
        EnergySettings(critical_forecast_ratio=1.5, above_forecast_pct=50.1)
