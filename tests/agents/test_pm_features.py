"""pm_agent's features: each reading against its own machine's healthy normal, so a hot or
big machine is judged by how far it is from itself, not from the rest of the plant."""

from __future__ import annotations

import numpy as np

from factory_mas.agents.pm.model import CHANNELS, FEATURES, features, fitted_normals, readings

# Two machines alike but for their normal levels: a furnace and a small press.
HOT = {
    "temperature_c": 75.0,
    "vibration_hz": 2.0,
    "power_consumption_kw": 30.0,
    "error_rate_pct": 2.0,
    "defect_rate_pct": 3.0,
    "production_speed": 400.0,
}
COOL = {
    "temperature_c": 52.0,
    "vibration_hz": 1.0,
    "power_consumption_kw": 5.0,
    "error_rate_pct": 1.0,
    "defect_rate_pct": 1.5,
    "production_speed": 250.0,
}
SPREAD = np.asarray([4.0, 0.5, 0.3, 0.8, 0.6, 20.0])


def history(base: dict[str, float], machine: int, n: int, seed: int) -> dict[str, np.ndarray]:
    """`n` Active readings of one healthy machine, noise of the same spreads as any other."""
    noise = np.random.default_rng(seed).standard_normal((n, len(CHANNELS))) * SPREAD
    x = np.asarray([base[c] for c in CHANNELS]) + noise
    return {
        "machine_id": np.full(n, machine),
        "operation_mode": np.full(n, "Active"),
        **{c: x[:, j] for j, c in enumerate(CHANNELS)},
    }


def joined(*parts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_a_maintenance_score_counts_where_given_and_its_absence_is_told_apart():
    z = np.zeros((3, len(CHANNELS)))
    x = features(z, np.full(3, "Active"), np.array([0.0, np.nan, 1.0]))
    score, given = FEATURES.index("maintenance_score"), FEATURES.index("maintenance_score_given")
    assert x[:, given].tolist() == [1.0, 0.0, 1.0]
    # A missing score lies outside every real one, so no split mixes it with a low score.
    assert x[1, score] < x[0, score] <= x[2, score]
    assert (features(z, np.full(3, "Active")) == features(z, np.full(3, "Active"), None)).all()
    assert features(z, np.full(3, "Active"))[:, given].tolist() == [0.0, 0.0, 0.0]


def test_a_hot_machine_and_a_normal_one_give_the_same_features_once_their_normals_are_learnt():
    # The same noise for both: only their levels differ.
    train = joined(history(HOT, 1, 400, seed=1), history(COOL, 2, 400, seed=1))
    keys = [(1, 0)] * 400 + [(2, 0)] * 400
    normals = fitted_normals(keys, readings(train), np.ones(800, bool))

    # The same wear shows on both: 2 spreads above its normal on every reading.
    hot_now = np.asarray([[HOT[c] for c in CHANNELS]]) + 2 * SPREAD
    cool_now = np.asarray([[COOL[c] for c in CHANNELS]]) + 2 * SPREAD
    mode = np.asarray(["Active"])
    hot_x = features(normals.zscores([(1, 0)], hot_now, learn=False), mode)
    cool_x = features(normals.zscores([(2, 0)], cool_now, learn=False), mode)

    assert hot_x.shape == (1, len(FEATURES))
    np.testing.assert_allclose(hot_x, cool_x, atol=0.15)
    assert (hot_x[0, : len(CHANNELS)] > 1.5).all(), "both read as about 2 spreads above normal"


def test_the_normal_is_learnt_from_healthy_rows_only():
    healthy = history(COOL, 1, 300, seed=2)
    worn = history({**COOL, "temperature_c": COOL["temperature_c"] + 16.0}, 1, 300, seed=3)
    both = joined(healthy, worn)
    keys = [(1, 0)] * 600
    is_healthy = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    normals = fitted_normals(keys, readings(both), is_healthy)
    loc = normals.known[(1, 0)].loc[CHANNELS.index("temperature_c")]
    assert abs(loc - COOL["temperature_c"]) < 1.0, "the wear is not learnt as normal"


def test_a_machine_with_too_few_healthy_rows_gets_its_own_normal_not_the_plants():
    # Machine 2 fails every few days: none of its rows has a week of life left.
    train = joined(history(COOL, 1, 300, seed=4), history(HOT, 2, 300, seed=5))
    keys = [(1, 0)] * 300 + [(2, 0)] * 300
    is_healthy = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    normals = fitted_normals(keys, readings(train), is_healthy)
    loc = normals.known[(2, 0)].loc[CHANNELS.index("temperature_c")]
    assert abs(loc - HOT["temperature_c"]) < 1.5
