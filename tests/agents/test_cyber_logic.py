"""cyber_agent's rules and its per-machine deltas: pure functions, checked exhaustively."""

from __future__ import annotations

import numpy as np
import pytest

from factory_mas.agents.cyber import logic
from factory_mas.agents.cyber.model import FEATURES, MAX_GAP_S, READINGS, LastReadings
from factory_mas.errors import SettingsError
from factory_mas.settings import CyberSettings, load_settings

DEFAULT = CyberSettings()
# Deliberately unlike the defaults, to show the rules read the settings.
CUSTOM = CyberSettings(
    medium_after_anomalies=2,
    high_after_anomalies=4,
    critical_after_anomalies=6,
    level_low="NORMAL",
    level_medium="WARNING",
    level_high="CRITICAL",
    level_critical="EMERGENCY",
    indicator_zscore=5.0,
)

# -- threat escalation ------------------------------------------------------------------


def test_the_defaults_escalate_at_1_3_and_10_records():
    assert (
        DEFAULT.medium_after_anomalies,
        DEFAULT.high_after_anomalies,
        DEFAULT.critical_after_anomalies,
    ) == (1, 3, 10)


@pytest.mark.parametrize(
    ("run", "default", "custom"),
    [
        (0, "LOW", "LOW"),
        (1, "MEDIUM", "LOW"),
        (2, "MEDIUM", "MEDIUM"),
        (3, "HIGH", "MEDIUM"),
        (4, "HIGH", "HIGH"),
        (5, "HIGH", "HIGH"),
        (6, "HIGH", "CRITICAL"),
        (9, "HIGH", "CRITICAL"),
        (10, "CRITICAL", "CRITICAL"),
        (500, "CRITICAL", "CRITICAL"),
    ],
)
def test_threat_level_follows_the_run_of_anomalies(run, default, custom):
    assert logic.threat_level(run, DEFAULT) == default
    assert logic.threat_level(run, CUSTOM) == custom


@pytest.mark.parametrize(
    ("previous", "is_anomaly", "run"),
    [(0, False, 0), (0, True, 1), (1, True, 2), (9, True, 10), (9, False, 0), (1, False, 0)],
)
def test_next_run_counts_consecutive_anomalies_and_resets_on_a_normal_record(
    previous, is_anomaly, run
):
    assert logic.next_run(previous, is_anomaly) == run


def test_a_stream_of_flags_escalates_and_falls_back():
    flags = [False, True, True, True, False, True] + [True] * 10 + [False]
    run, threats = 0, []
    for flag in flags:
        run = logic.next_run(run, flag)
        threats.append(logic.threat_level(run, DEFAULT))
    assert threats == (
        ["LOW", "MEDIUM", "MEDIUM", "HIGH", "LOW", "MEDIUM", "MEDIUM", "HIGH"]
        + ["HIGH"] * 6
        + ["CRITICAL"] * 2
        + ["LOW"]
    )


# -- level mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("threat", "default", "custom"),
    [
        ("LOW", "NORMAL", "NORMAL"),
        ("MEDIUM", "CAUTION", "WARNING"),
        ("HIGH", "WARNING", "CRITICAL"),
        ("CRITICAL", "CRITICAL", "EMERGENCY"),
    ],
)
def test_level_for_maps_each_threat_level(threat, default, custom):
    assert logic.level_for(threat, DEFAULT) == default
    assert logic.level_for(threat, CUSTOM) == custom


def test_every_threat_level_has_a_level():
    assert [logic.level_for(t, DEFAULT) for t in logic.THREAT_LEVELS] == [
        "NORMAL",
        "CAUTION",
        "WARNING",
        "CRITICAL",
    ]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {"FACTORY_AGENTS_CYBER_HIGH_AFTER_ANOMALIES": "12"},
            "high_after_anomalies",
        ),
        (
            {"FACTORY_AGENTS_CYBER_MEDIUM_AFTER_ANOMALIES": "3"},
            "medium_after_anomalies",
        ),
        ({"FACTORY_AGENTS_CYBER_LEVEL_MEDIUM": "CRITICAL"}, "level_medium"),
        ({"FACTORY_AGENTS_CYBER_INDICATOR_ZSCORE": "0"}, "indicator_zscore"),
    ],
)
def test_inconsistent_thresholds_stop_start_up_naming_them(env, named):
    with pytest.raises(SettingsError) as info:
        load_settings(env=env)
    assert named in str(info.value)
    assert "\n" not in str(info.value)


# -- indicators ---------------------------------------------------------------------------

NAMES = ("a", "b", "c")


@pytest.mark.parametrize(
    ("values", "zscores", "expected"),
    [
        ((1.0, 2.0, 3.0), (0.0, 1.0, -1.0), []),
        # Exactly at the cut counts; just below does not.
        ((1.0, 2.0, 3.0), (3.5, 3.4999, 0.0), [("a", 1.0, 3.5)]),
        # Far below normal is as much a sign as far above, and the farthest comes first.
        ((1.0, 2.0, 3.0), (4.0, -9.0, 6.0), [("b", 2.0, -9.0), ("c", 3.0, 6.0), ("a", 1.0, 4.0)]),
        ((0.123456, 2.0, 3.0), (12.3456, 0.0, 0.0), [("a", 0.123, 12.35)]),
    ],
)
def test_indicators_name_the_features_far_from_normal(values, zscores, expected):
    found = logic.indicators(NAMES, values, zscores, DEFAULT.indicator_zscore)
    assert [(i["feature"], i["value"], i["zscore"]) for i in found] == expected
    assert all(set(i) == {"feature", "value", "zscore"} for i in found)


def test_indicator_cut_comes_from_the_settings():
    found = logic.indicators(NAMES, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), CUSTOM.indicator_zscore)
    assert [i["feature"] for i in found] == ["c", "b"]


def _ind(feature: str, zscore: float, value: float = 1.0) -> dict:
    return {"feature": feature, "value": value, "zscore": zscore}


@pytest.mark.parametrize(
    ("found", "kind"),
    [
        ([_ind("network_latency_ms", 40), _ind("packet_loss_pct", 60)], "DDOS_RISK"),
        (
            [_ind("error_rate_pct", 30), _ind("packet_loss_pct", 9), _ind("network_latency_ms", 5)],
            "DDOS_RISK",
        ),
        ([_ind("network_latency_ms", 40)], "NETWORK_DEGRADATION"),
        ([_ind("packet_loss_pct", 40)], "NETWORK_DEGRADATION"),
        ([_ind("network_latency_ms", 40), _ind("packet_loss_pct", -4)], "NETWORK_DEGRADATION"),
        ([_ind("network_latency_ms_delta", 40), _ind("packet_loss_pct", 9)], "NETWORK_DEGRADATION"),
        ([_ind("error_rate_pct", 30)], "NETWORK_DEGRADATION"),
        ([], "NETWORK_DEGRADATION"),
    ],
)
def test_alert_type_is_ddos_only_when_latency_and_loss_are_both_far_up(found, kind):
    assert logic.alert_type(found) == kind


def test_alert_details_say_what_happened_and_what_to_do():
    result = {
        "anomaly_score": 0.9312,
        "is_anomaly": True,
        "threat_level": "HIGH",
        "consecutive_anomalies": 3,
        "indicators": [
            _ind("packet_loss_pct", 90.94, 33.482),
            _ind("network_latency_ms", 51.6, 252.722),
            _ind("network_latency_ms_delta", -4.4, -14.0),
            _ind("error_rate_pct", 30.3, 25.985),
        ],
    }
    text = logic.alert_details(42, result)
    assert text.startswith("Machine 42: ")
    assert "3 consecutive" in text and "threat HIGH" in text and "0.93" in text
    assert "Packet loss 33.5% (90.9 robust SD above normal)" in text
    assert "latency 252.7 ms" in text
    assert "latency changed by -14.0 ms since the previous record (4.4 robust SD below" in text
    assert "error rate" not in text, "only the three farthest indicators are spelled out"
    assert "DDoS" in text and "isolate" in text

    quiet = logic.alert_details(5, {**result, "indicators": [_ind("error_rate_pct", 8, 12.0)]})
    assert "Error rate 12.0%" in quiet and "DDoS" not in quiet and "cabling" in quiet


# -- per-machine deltas -------------------------------------------------------------------

T0 = 1_750_000_000.0


def _deltas(readings: LastReadings, rows: list[tuple[int, float, float, float, float]]):
    """rows: (machine_id, timestamp_s, latency, loss, errors) -> the three delta columns."""
    ids, stamps, *values = zip(*rows, strict=True)
    columns = dict(zip(READINGS, map(np.array, values), strict=True))
    columns["machine_id"] = np.array(ids)
    out = readings.add_deltas(columns, list(stamps))
    return np.column_stack([out[f"{n}_delta"] for n in READINGS]).tolist()


def test_features_are_the_readings_and_their_deltas():
    assert (*READINGS, *(f"{n}_delta" for n in READINGS)) == FEATURES


def test_deltas_are_taken_per_machine_in_order():
    rows = [
        (1, T0, 10.0, 0.5, 2.0),
        (2, T0, 20.0, 1.0, 3.0),
        (1, T0 + 60, 13.0, 0.25, 2.5),
        (2, T0 + 60, 15.0, 1.5, 3.0),
        (1, T0 + 120, 100.0, 20.0, 12.5),
    ]
    assert _deltas(LastReadings(), rows) == [
        [0.0, 0.0, 0.0],  # nothing known yet: no change
        [0.0, 0.0, 0.0],
        [3.0, -0.25, 0.5],
        [-5.0, 0.5, 0.0],
        [87.0, 19.75, 10.0],
    ]


def test_a_batch_and_its_records_one_by_one_give_the_same_deltas():
    rng = np.random.default_rng(3)
    rows = [
        (int(m), T0 + 60 * i, *rng.uniform(0, 50, 3).tolist())
        for i, m in enumerate(rng.integers(1, 4, 40))
    ]
    one_by_one = LastReadings()
    singles = [_deltas(one_by_one, [row])[0] for row in rows]
    batch = LastReadings()
    assert _deltas(batch, rows) == singles
    assert batch.known == one_by_one.known


def test_an_out_of_order_record_has_no_delta_and_does_not_replace_the_newer_reading():
    readings = LastReadings()
    rows = [
        (1, T0 + 120, 30.0, 3.0, 3.0),
        (1, T0 + 60, 20.0, 2.0, 2.0),  # late
        (1, T0 + 120, 99.0, 9.0, 9.0),  # same time again
        (1, T0 + 180, 40.0, 4.0, 4.0),
    ]
    assert _deltas(readings, rows) == [
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0],
        [10.0, 1.0, 1.0],  # against the newest reading, not the late one
    ]
    assert readings.known[1] == (T0 + 180, 40.0, 4.0, 4.0)


def test_records_split_across_two_instances_still_get_deltas():
    # Round-robin shared subscriptions give each instance every other record of a machine.
    rows = [(7, T0 + 60 * i, 10.0 + i, 1.0, 2.0) for i in range(6)]
    first, second = LastReadings(), LastReadings()
    assert _deltas(first, rows[0::2]) == [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    assert _deltas(second, rows[1::2]) == [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]


@pytest.mark.parametrize(("gap_s", "delta"), [(60, 5.0), (MAX_GAP_S, 5.0), (MAX_GAP_S + 1, 0.0)])
def test_a_stale_previous_reading_gives_no_delta(gap_s, delta):
    rows = [(1, T0, 10.0, 1.0, 1.0), (1, T0 + gap_s, 15.0, 1.0, 1.0)]
    assert _deltas(LastReadings(), rows)[1][0] == delta
