"""Signal conditioning and the alarm gate as pure logic: smoothing, the RUL trend,
hysteresis, on-delay, off-delay."""

from __future__ import annotations

import math

import msgspec
import pytest

from factory_mas.agents.conditioning import (
    Conditioner,
    Gate,
    SubjectMemory,
    aged_ewma,
    alpha_for,
    ewma,
    gate_step,
    level_with_deadband,
)

CUTS = [(0.3, "CAUTION"), (0.5, "WARNING"), (0.7, "CRITICAL"), (0.9, "EMERGENCY")]


# ------------------------------------------------------------------------ smoothing


def test_alpha_of_one_record_is_no_smoothing():
    assert alpha_for(1) == 1.0
    assert ewma(0.2, 0.9, alpha_for(1)) == 0.9
    assert alpha_for(3) == pytest.approx(0.5)


def test_ewma_starts_at_the_first_value_and_damps_a_swing():
    value = None
    for raw in [182, 126, 204, 60, 164, 214, 69] * 20:  # the pm RUL swings of the issue
        value = ewma(value, raw, alpha_for(60))
    assert value is not None
    assert 120 < value < 180  # near the mean (145.6), nowhere near 60 or 214


def test_aged_ewma_counts_the_hours_down_between_records():
    # A steady estimate of 100 h an hour ago, and nothing new: 99 h now.
    assert aged_ewma(100.0, 99.0, 0.5, elapsed_h=1.0) == pytest.approx(99.0)
    # A machine estimated at 100 h, then records an hour apart each saying "exactly the
    # truth": the trend follows the truth down, it does not lag behind it.
    trend = None
    for hour in range(50):
        trend = aged_ewma(trend, 100.0 - hour, alpha_for(10), elapsed_h=1.0 if hour else 0.0)
    assert trend == pytest.approx(51.0)


def test_aged_ewma_never_ages_backwards_or_below_zero():
    assert aged_ewma(50.0, 50.0, 0.5, elapsed_h=-10.0) == pytest.approx(50.0)
    assert aged_ewma(5.0, 0.0, 0.5, elapsed_h=100.0) == 0.0


# ----------------------------------------------------------------------- hysteresis


@pytest.mark.parametrize(
    ("value", "previous", "expected"),
    [
        (0.1, None, "NORMAL"),
        (0.55, None, "WARNING"),
        (0.55, "NORMAL", "WARNING"),  # rising: the threshold itself
        (0.72, "WARNING", "CRITICAL"),
        (0.47, "WARNING", "WARNING"),  # within the deadband under its threshold: held
        (0.44, "WARNING", "CAUTION"),  # past it: the highest level still held
        (0.2, "WARNING", "NORMAL"),
        (0.66, "CRITICAL", "CRITICAL"),
        (0.62, "CRITICAL", "WARNING"),
        (0.95, "CAUTION", "EMERGENCY"),
        (0.28, "CAUTION", "CAUTION"),
    ],
)
def test_level_with_deadband(value, previous, expected):
    assert level_with_deadband(value, CUTS, previous, 0.05) == expected


def test_a_noisy_score_around_a_threshold_gives_one_entry_not_dozens():
    noisy = [0.49, 0.51, 0.48, 0.52, 0.47, 0.53, 0.49, 0.51] * 10
    for deadband, changes in ((0.0, 79), (0.05, 1)):
        level, entered = None, 0
        for v in noisy:
            new = level_with_deadband(v, CUTS, level, deadband)
            entered += new != level and level is not None
            level = new
        assert entered == changes


def test_lower_is_worse_by_negating():
    rul_cuts = [(-168.0, "CAUTION"), (-72.0, "WARNING"), (-24.0, "CRITICAL")]
    assert level_with_deadband(-70.0, rul_cuts, "NORMAL", 12.0) == "WARNING"
    assert level_with_deadband(-80.0, rul_cuts, "WARNING", 12.0) == "WARNING"  # < 72 + 12
    assert level_with_deadband(-90.0, rul_cuts, "WARNING", 12.0) == "CAUTION"


# ---------------------------------------------------------------------- conditioner


def test_conditioner_keeps_each_subject_apart_and_forgets_on_request():
    c = Conditioner()
    assert c.smooth(1, "p", 1.0, 3) == 1.0
    assert c.smooth(2, "p", 0.0, 3) == 0.0
    assert c.smooth(1, "p", 0.0, 3) == pytest.approx(0.5)
    c.level(1, "WARNING", 10.0)
    assert c.previous_level(1) == "WARNING" and c.previous_level(3) is None
    c.forget(1)
    assert c.previous_level(1) is None
    assert c.smooth(1, "p", 0.2, 3) == 0.2


def test_conditioner_trend_uses_record_time():
    c = Conditioner()
    c.trend(7, "rul", 100.0, 1_000_000, at=0.0)
    c.level(7, "NORMAL", 0.0)
    # Two hours later, a new estimate that barely counts (huge window): the old one aged.
    assert c.trend(7, "rul", 100.0, 1_000_000, at=7200.0) == pytest.approx(98.0, abs=0.01)


def test_conditioner_state_survives_a_msgpack_round_trip():
    c = Conditioner()
    c.smooth(3, "anomaly", 0.7, 3)
    c.level(3, "WARNING", 5.0)
    c.smooth("cam-1", "x", 0.1, 3)
    data = msgspec.msgpack.encode(c.export())
    back = Conditioner()
    back.restore(msgspec.msgpack.decode(data, type=list[tuple[int | str, SubjectMemory]]))
    assert back.subjects == c.subjects


# ----------------------------------------------------------------------------- gate


def run(levels_at, on=0.0, off=0.0, minimum="WARNING", immediate="EMERGENCY"):
    gate, told = Gate(), []
    for level, at in levels_at:
        result = gate_step(gate, level, at, minimum, on, off, immediate)
        if result:
            told.append((result, at, gate.reported))
    return told


def test_without_delays_entering_the_band_and_normal_are_told_at_once():
    assert run([("NORMAL", 0), ("WARNING", 1), ("WARNING", 2), ("NORMAL", 3)]) == [
        ("alert", 1, "WARNING"),
        ("normal", 3, "NORMAL"),
    ]


def test_below_the_band_is_no_news_and_easing_off_keeps_the_alarm():
    told = run([("CAUTION", 0), ("CRITICAL", 1), ("WARNING", 2), ("CAUTION", 3), ("WARNING", 4)])
    assert told == [("alert", 1, "CRITICAL")]


def test_on_delay_needs_the_level_to_hold():
    # A two-second blip never reaches the 5 s on-delay; a held level does, once.
    blip = [("WARNING", 0), ("WARNING", 2), ("NORMAL", 3)]
    held = [("WARNING", t) for t in range(10, 20)]
    assert run(blip + held, on=5.0) == [("alert", 15, "WARNING")]


def test_emergency_skips_the_on_delay():
    assert run([("EMERGENCY", 0)], on=60.0) == [("alert", 0, "EMERGENCY")]
    assert run([("CRITICAL", 0)], on=60.0, immediate="CRITICAL") == [("alert", 0, "CRITICAL")]


def test_an_urgent_prediction_skips_the_on_delay_and_a_lone_reading_does_not_sound():
    gate = Gate()
    # A lone CRITICAL reading under a one-second on-delay is not told; the next reading,
    # back to NORMAL, leaves nothing to clear.
    assert gate_step(gate, "CRITICAL", 0.0, "WARNING", 1.0, 10.0, "EMERGENCY") is None
    assert gate_step(gate, "NORMAL", 1.0, "WARNING", 1.0, 10.0, "EMERGENCY") is None
    # The same reading, urgent (safety: a physical limit exceeded), is told at once.
    urgent = gate_step(gate, "CRITICAL", 5.0, "WARNING", 1.0, 10.0, "EMERGENCY", urgent=True)
    assert urgent == "alert" and gate.reported == "CRITICAL"
    # A confirmed lesser one is told at the next reading.
    confirmed = run([("WARNING", 0.0), ("WARNING", 1.0)], on=1.0)
    assert confirmed == [("alert", 1.0, "WARNING")]


def test_off_delay_rides_out_a_short_return_to_normal():
    levels = [("WARNING", 0), ("NORMAL", 1), ("NORMAL", 5), ("WARNING", 6)]
    levels += [("NORMAL", t) for t in range(7, 20)]
    assert run(levels, off=10.0) == [("alert", 0, "WARNING"), ("normal", 17, "NORMAL")]


def test_a_chattering_signal_through_the_gate_is_one_alarm():
    flapping = [("WARNING" if t % 2 else "NORMAL", float(t)) for t in range(120)]
    assert len(run(flapping)) == 119  # every flip told: the chatter the issue measured
    assert run(flapping, on=0.0, off=5.0) == [("alert", 1.0, "WARNING")]


def test_escalation_inside_the_band_waits_for_the_on_delay_too():
    levels = [("WARNING", t) for t in range(0, 6)] + [("CRITICAL", t) for t in range(6, 20)]
    told = run(levels, on=5.0)
    assert told == [("alert", 5, "WARNING"), ("alert", 11, "CRITICAL")]


def test_delays_count_record_time_in_whatever_order_records_arrive():
    # A late record from before the rise moves its start back; the delay is still
    # measured between record times, never in arrival order.
    assert run([("WARNING", 100), ("WARNING", 90), ("WARNING", 94)], on=5.0) == []
    told = run([("WARNING", 100), ("WARNING", 90), ("WARNING", 95)], on=5.0)
    assert math.isclose(told[0][1], 95)
