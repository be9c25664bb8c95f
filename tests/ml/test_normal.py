"""Per-machine normals: learnt from training rows, adapting online, never dragged by a fault."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from factory_mas.ml.normal import Normals, robust_location_spread

CHANNELS = ("temperature_c", "power_consumption_kw")


def _plant(seed: int = 0) -> tuple[list[int], np.ndarray]:
    rng = np.random.default_rng(seed)
    cool = rng.normal((50.0, 5.0), (2.0, 0.25), (300, 2))
    hot = rng.normal((75.0, 30.0), (3.0, 1.0), (300, 2))
    return [1] * 300 + [2] * 300, np.r_[cool, hot]


def test_robust_spread_ignores_outliers_and_never_divides_by_zero() -> None:
    x = np.r_[np.full((99, 1), 5.0), [[1e9]]]
    loc, spread = robust_location_spread(x, floor=0.1)
    assert loc[0] == 5.0 and spread[0] == 0.1


def test_each_trained_machine_is_judged_against_its_own_normal() -> None:
    keys, x = _plant()
    normals = Normals.fitted(CHANNELS, keys, x)
    # A hot machine at its usual 75 C and 30 kW is normal for it, not for the cool one.
    z_hot, z_cool = normals.zscores([2, 1], np.array([[75.0, 30.0], [75.0, 30.0]]), learn=False)
    assert np.abs(z_hot).max() < 1.0
    assert z_cool.min() > 10.0


def test_a_new_machine_adapts_within_its_warm_up() -> None:
    keys, x = _plant()
    normals = Normals.fitted(CHANNELS, keys, x, warmup=30)
    rng = np.random.default_rng(1)
    readings = rng.normal((90.0, 12.0), (2.0, 0.5), (60, 2))
    z = normals.zscores([7] * 60, readings)
    assert normals.warmed(7)
    assert np.abs(z[-20:]).max() < 4.0
    assert normals.known[7].loc == pytest.approx([90.0, 12.0], abs=1.0)


def test_a_fault_not_learnt_leaves_the_normal_alone_and_a_learnt_one_moves_it_slowly() -> None:
    keys, x = _plant()
    normals = Normals.fitted(CHANNELS, keys, x, alpha=0.01)
    before = list(normals.known[1].loc)
    surge = np.array([[50.0, 50.0]] * 20)
    normals.zscores([1] * 20, surge, learn=False)
    assert normals.known[1].loc == before
    normals.zscores([1] * 20, surge, learn=True)
    moved = normals.known[1].loc[1] - before[1]
    # Each step is clipped to 3 spreads at 1 % weight: 20 steps move it under a spread.
    assert 0 < moved < normals.known[1].spread[1] * 1.0


def test_a_batch_scores_as_its_rows_one_by_one() -> None:
    keys, x = _plant()
    batch, single = Normals.fitted(CHANNELS, keys, x), Normals.fitted(CHANNELS, keys, x)
    rows = np.random.default_rng(2).normal((60.0, 10.0), (5.0, 2.0), (50, 2))
    ids = [1, 2, 9, 9, 1] * 10
    together = batch.zscores(ids, rows)
    apart = np.vstack([single.zscores([k], r[None, :]) for k, r in zip(ids, rows, strict=True)])
    np.testing.assert_array_equal(together, apart)


def test_state_survives_a_checkpoint_and_tuple_keys_come_back_as_tuples() -> None:
    normals = Normals(CHANNELS, (50.0, 5.0), (2.0, 0.3))
    normals.zscores([(3, 0), (3, 1), 4], np.array([[51.0, 5.0], [40.0, 2.0], [60.0, 7.0]]))
    saved = msgspec.json.decode(msgspec.json.encode(normals.state()))
    restored = Normals(CHANNELS, (50.0, 5.0), (2.0, 0.3))
    restored.restore(saved)
    assert set(restored.known) == {(3, 0), (3, 1), 4}
    assert restored.known[(3, 1)] == normals.known[(3, 1)]


def test_saved_arrays_give_back_the_same_normals() -> None:
    normals = Normals(CHANNELS, (50.0, 5.0), (2.0, 0.3), warmup=5)
    normals.zscores([(1, 0)] * 10 + [(2, 1)] * 10, np.random.default_rng(3).normal(50, 1, (20, 2)))
    again = Normals.from_arrays(CHANNELS, normals.arrays(), warmup=5)
    assert again.known == normals.known
    assert again.prior_loc == normals.prior_loc


def test_saved_arrays_for_other_channels_are_refused() -> None:
    normals = Normals(CHANNELS, (50.0, 5.0), (2.0, 0.3))
    with pytest.raises(ValueError, match="do not fit"):
        Normals.from_arrays(("a", "b", "c"), normals.arrays())
