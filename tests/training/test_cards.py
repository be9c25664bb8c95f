"""Model cards and the plant split: what `train` judges a model by."""

from __future__ import annotations

import numpy as np
import pytest

from factory_mas.training.cards import Comparison, beats_baseline, card, card_lines
from factory_mas.training.plant import PlantData, held_out_rows, threshold_for_rate


def test_a_model_must_beat_every_gating_baseline_and_a_tie_does_not() -> None:
    better = Comparison("mae_kw", 0.2, "persistence", 0.3, True, "held-out machines")
    tie = Comparison("f1", 0.9, "latency > 32 ms", 0.9, False, "held-out machines")
    shifted = Comparison("false_alarm_rate", 0.5, "none", 0.0, True, "big plant", gate=False)
    assert beats_baseline(card([better, shifted]))
    assert not beats_baseline(card([better, tie]))
    assert not beats_baseline(card([]))
    assert not beats_baseline(None)


def test_card_lines_name_metric_baseline_data_and_verdict() -> None:
    lines = card_lines(
        "energy_agent",
        card([Comparison("mae_kw", 0.21, "persistence", 0.34, True, "machines 9..10")]),
    )
    assert "mae_kw 0.21 vs persistence 0.34" in lines[0] and "machines 9..10" in lines[0]
    assert lines[-1] == "energy_agent: the model beats its baselines"


def _data(machines: int, rows: int) -> PlantData:
    ids = np.repeat(np.arange(1, machines + 1), rows)
    return PlantData({"machine_id": ids, "power_consumption_kw": np.ones(ids.size)})


def test_enough_machines_are_held_out_by_machine() -> None:
    mask, how = held_out_rows(_data(10, 4), 0.2)
    assert set(np.repeat(np.arange(1, 11), 4)[mask]) == {9, 10}
    assert how.startswith("held-out machines 9..10")


def test_few_machines_are_held_out_by_time() -> None:
    mask, how = held_out_rows(_data(2, 10), 0.2)
    assert mask.reshape(2, 10)[:, -2:].all() and not mask.reshape(2, 10)[:, :-2].any()
    assert "time" in how


def test_the_threshold_leaves_about_the_target_rate_of_normal_scores_above_it() -> None:
    scores = np.random.default_rng(0).normal(size=100_000)
    cut = threshold_for_rate(scores, 0.005)
    assert 0.003 < (scores >= cut).mean() <= 0.005
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_rate(scores, 1.5)
