"""Each machine's own normal, learnt as its readings come (model.track), without a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from factory_mas.agents.energy.model import (
    LEARN_FENCE_Z,
    MODE_CODE,
    WARMUP,
    Z_CLIP,
    EnergyModel,
    new_normals,
    persistence_z,
    track,
)
from factory_mas.errors import ArtifactError
from factory_mas.ml.artifacts import MANIFEST

ACTIVE, IDLE = MODE_CODE["Active"], MODE_CODE["Idle"]


def plant_prior() -> list:
    """Normals knowing no machine: a plant-wide prior of 6 kW, 0.25 kW spread per mode."""
    return [new_normals(np.array([6.0, 300.0]), np.array([0.25, 20.0])) for _ in range(3)]


def readings(machine: int, kw: float, n: int, seed: int, mode: int = ACTIVE) -> tuple:
    rng = np.random.default_rng(seed)
    power = kw * (1 + 0.02 * rng.standard_normal(n))
    speed = 300 + 10 * rng.standard_normal(n)
    return [machine] * n, np.full(n, mode), power, speed


def concat(*parts: tuple) -> tuple:
    machines = [m for p in parts for m in p[0]]
    return machines, *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3))


def test_a_big_and_a_small_machine_each_learn_their_own_normal():
    normals = plant_prior()
    big, small = readings(1, 30.0, 200, 1), readings(2, 0.8, 200, 2)
    tracked = track(normals, *concat(big, small))
    learnt = normals[ACTIVE].known
    assert abs(learnt[1].loc[0] - 30.0) < 0.3 and abs(learnt[2].loc[0] - 0.8) < 0.01
    # Each spread is its own machine's (2 % of its draw), not the plant's 0.25 kW.
    assert 0.3 < learnt[1].spread[0] < 0.9 and 0.008 < learnt[2].spread[0] < 0.03
    # Once warmed up, a normal reading is a few spreads at most from either normal (the
    # big one's spread settles from the plant's over the first readings after) ...
    mode = np.full(400, ACTIVE)
    warmed = tracked.warmed(mode)
    assert not warmed[:WARMUP].any() and warmed[WARMUP:200].all()
    assert np.abs(tracked.steps[warmed, 0]).max() < 6
    settled = np.r_[np.arange(2 * WARMUP, 200), np.arange(200 + 2 * WARMUP, 400)]
    assert np.abs(tracked.steps[settled, 0]).max() < 4
    # ... and a surge of +40 % of its normal is far out for both, the small one included.
    surges = track(normals, [1, 2], np.array([ACTIVE, ACTIVE]), np.array([42.0, 1.12]),
                   np.array([300.0, 300.0]))  # fmt: skip
    assert (surges.level_z(np.array([ACTIVE, ACTIVE]), np.array([42.0, 1.12])) > 10).all()
    assert (surges.steps[:, 0] == Z_CLIP).all(), "the forecaster's inputs are clipped"


def test_a_machine_new_to_the_model_starts_from_its_first_reading_and_learns_no_surge():
    normals = plant_prior()
    tracked = track(normals, *readings(7, 20.0, 1, 3))
    # Its first reading sets its normal: not 56 spreads above the plant's 6 kW.
    assert tracked.steps[0, 0] == 0.0 and tracked.count[0, ACTIVE] == 0
    assert abs(normals[ACTIVE].known[7].loc[0] - tracked.loc[0, ACTIVE, 0]) > 10
    track(normals, *readings(7, 20.0, 3 * WARMUP, 4))
    before = normals[ACTIVE].known[7].loc[0]
    far = 20.0 + 2 * LEARN_FENCE_Z * normals[ACTIVE].known[7].spread[0]
    track(normals, [7] * 5, np.full(5, ACTIVE), np.full(5, far), np.full(5, 300.0))
    assert normals[ACTIVE].known[7].loc[0] == before, "a surge is not learnt as normal"


def test_modes_have_normals_of_their_own_and_a_batch_tracks_as_one_by_one():
    parts = concat(readings(3, 8.0, 60, 5), readings(3, 3.2, 30, 6, IDLE), readings(4, 1.0, 40, 7))
    together = track(plant_prior(), *parts)
    one_by_one_normals = plant_prior()
    alone = [
        track(one_by_one_normals, [parts[0][i]], parts[1][i : i + 1], parts[2][i : i + 1],
              parts[3][i : i + 1])
        for i in range(len(parts[0]))
    ]  # fmt: skip
    np.testing.assert_array_equal(together.steps, np.concatenate([a.steps for a in alone]))
    np.testing.assert_array_equal(together.loc, np.concatenate([a.loc for a in alone]))
    last = len(parts[0]) - 41  # machine 3's last Idle reading
    assert abs(together.loc[last, IDLE, 0] - 3.2) < 0.1
    assert abs(together.loc[last, ACTIVE, 0] - 8.0) < 0.1


def test_the_forecast_starts_from_the_last_reading_only_in_the_same_mode():
    history = np.array(
        [[[0.0, ACTIVE, 0.0], [1.5, ACTIVE, 0.2]], [[0.0, -1, 0.0], [2.0, IDLE, 0.0]]]
    )
    target = np.array([[ACTIVE, 0.1], [ACTIVE, 0.0]])
    np.testing.assert_array_equal(persistence_z(history, target), [1.5, 0.0])


# The feature list of the release before per-machine normals.
OLD_FEATURES = [
    "lstm:power_consumption_kw",
    "lstm:power_known",
    "lstm:mode_active",
    "lstm:mode_idle",
    "lstm:mode_maintenance",
    "lstm:production_speed",
    "iforest:residual_kw",
    "iforest:power_to_baseline",
    "iforest:power_consumption_kw",
]


def test_a_model_of_the_previous_release_asks_for_a_retrain(tmp_path):
    # Its forecaster answered in the simulator's kW: served as it is, it is off by 19 kW
    # for a 30 kW machine. It is refused, naming the command that rebuilds it.
    entry = {"version": "energy-0e53c798b5", "files": {}, "features": OLD_FEATURES}
    manifest = {"format": 1, "models": {"energy_agent": entry}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(
        ArtifactError, match=r"iforest:power_to_baseline.*python -m factory_mas train"
    ):
        EnergyModel.load(tmp_path)
