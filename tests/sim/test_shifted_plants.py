"""The shifted plants of the model cards differ from the default only in normal levels."""

from __future__ import annotations

import numpy as np

from factory_mas.sim.synthetic import SHIFTED_PLANTS, FactorySimulator


def test_shifted_plants_move_the_normal_levels_they_name() -> None:
    base = FactorySimulator(seed=5, machines=10).run(200).columns
    hot = FactorySimulator(seed=5, machines=10, params=SHIFTED_PLANTS["hot"]).run(200).columns
    big = FactorySimulator(seed=5, machines=10, params=SHIFTED_PLANTS["big"]).run(200).columns
    small = FactorySimulator(seed=5, machines=10, params=SHIFTED_PLANTS["small"]).run(200).columns
    assert np.median(hot["temperature_c"]) > np.median(base["temperature_c"]) + 10
    assert np.median(big["power_consumption_kw"]) > 3 * np.median(base["power_consumption_kw"])
    assert np.median(small["power_consumption_kw"]) < np.median(base["power_consumption_kw"]) / 2
    # Same seed, same life stories: only the levels differ.
    np.testing.assert_array_equal(hot["operation_mode"], base["operation_mode"])
