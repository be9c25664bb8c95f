import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from factory_mas.sim.synthetic import (
    COLUMNS,
    LABELS,
    FactorySimulator,
    Frame,
    SimParams,
    concat,
)

MACHINES = 50
TICKS = 5000
FLOATS = (
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "network_latency_ms",
    "packet_loss_pct",
    "defect_rate_pct",
    "production_speed",
    "maintenance_score",
    "error_rate_pct",
    "rul_hours",
    "wear",
)
USUAL_RANGES = {
    "temperature_c": (30, 90),
    "vibration_hz": (0.1, 5),
    "power_consumption_kw": (1.5, 10),
    "network_latency_ms": (1, 50),
    "packet_loss_pct": (0, 5),
    "defect_rate_pct": (0, 10),
    "production_speed": (50, 500),
    "maintenance_score": (0, 1),
    "error_rate_pct": (0, 15),
}
# Short lives and frequent episodes, so that a few hundred ticks cross every kind of event.
BUSY = SimParams(
    life_min_h=1.0,
    life_max_h=3.0,
    repair_min_h=0.2,
    repair_max_h=0.5,
    idle_spell_mean_h=0.2,
    active_spell_mean_h=0.5,
    power_anomaly_rate_per_h=1.0,
    cyber_attack_rate_per_h=1.0,
    plantwide_attack_rate_per_h=2.0,
    fire_risk_rate_per_h=1.0,
    mechanical_hazard_rate_per_h=1.0,
    electrical_hazard_rate_per_h=1.0,
)


@pytest.fixture(scope="module")
def big() -> dict[str, np.ndarray]:
    return FactorySimulator(seed=7, machines=MACHINES).run(TICKS).columns


def grid(columns: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A column as (tick, machine): runs are time-major."""
    return columns[name].reshape(-1, MACHINES)


def assert_frames_identical(a: Frame, b: Frame) -> None:
    assert a.columns.keys() == b.columns.keys()
    for name in a.columns:
        x, y = a.columns[name], b.columns[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        # Bytes, not values: the promise is bit for bit.
        assert x.tobytes() == y.tobytes(), name


def test_same_seed_gives_identical_output_and_another_seed_does_not():
    a = FactorySimulator(seed=3, machines=20).run(400)
    b = FactorySimulator(seed=3, machines=20).run(400)
    assert_frames_identical(a, b)
    c = FactorySimulator(seed=4, machines=20).run(400)
    for name in ("temperature_c", "vibration_hz", "rul_hours", "network_latency_ms"):
        assert not np.array_equal(a.columns[name], c.columns[name]), name


def test_stepping_equals_one_run_across_chunks_failures_and_episodes():
    # 700 machines make run() cut its 200 ticks into several chunks.
    kwargs = {"seed": 11, "machines": 700, "step_minutes": 2.0, "params": BUSY}
    whole = FactorySimulator(**kwargs).run(200)
    stepper = FactorySimulator(**kwargs)
    steps = [stepper.step() for _ in range(200)]
    assert all(len(s) == 700 for s in steps)
    assert_frames_identical(whole, concat(steps))
    pieces = FactorySimulator(**kwargs)
    assert_frames_identical(whole, concat([pieces.run(37), pieces.run(0), pieces.run(163)]))
    # The comparison means something only if the run held every kind of event.
    c = whole.columns
    assert (c["operation_mode"] == "Maintenance").any()
    assert c["power_anomaly"].any() and c["cyber_attack"].any()
    assert (c["hazard_type"] != "NONE").any()


def test_columns_types_and_machine_ids():
    sim = FactorySimulator(seed=1, machines=4, step_minutes=5, start=datetime(2025, 3, 1, 6))
    assert sim.now == datetime(2025, 3, 1, 6, tzinfo=UTC)
    frame = sim.run(3)
    assert sim.now == datetime(2025, 3, 1, 6, 15, tzinfo=UTC)
    c = frame.columns
    assert set(c) == set(COLUMNS) | set(LABELS)
    assert len(COLUMNS) == 13 and len(frame) == 12
    assert all(v.ndim == 1 and len(v) == 12 for v in c.values())
    assert c["timestamp"].dtype == np.dtype("datetime64[ms]")
    assert c["machine_id"].dtype == np.int64
    assert all(c[name].dtype == np.float64 for name in FLOATS)
    assert c["power_anomaly"].dtype == bool and c["cyber_attack"].dtype == bool
    for name in ("operation_mode", "efficiency_status", "hazard_type"):
        assert c[name].dtype.kind in "UO", name
    assert c["machine_id"].tolist() == [1, 2, 3, 4] * 3
    minutes = np.array([0, 5, 10], "timedelta64[m]")
    expected = np.repeat(np.datetime64("2025-03-01T06:00", "ms") + minutes, 4)
    np.testing.assert_array_equal(c["timestamp"], expected)


def test_values_are_physically_sensible(big):
    for name in FLOATS:
        assert np.isfinite(big[name]).all(), name
    assert big["network_latency_ms"].min() >= 0.1
    for name in ("packet_loss_pct", "defect_rate_pct", "error_rate_pct"):
        assert big[name].min() >= 0 and big[name].max() <= 100, name
    for name in ("power_consumption_kw", "vibration_hz", "production_speed"):
        assert big[name].min() >= 0, name
    assert big["maintenance_score"].min() >= 0 and big["maintenance_score"].max() <= 1
    assert big["wear"].min() >= 0 and big["wear"].max() <= 1
    assert big["rul_hours"].min() > 0
    assert set(np.unique(big["machine_id"])) == set(range(1, MACHINES + 1))
    assert set(np.unique(big["operation_mode"])) == {"Active", "Idle", "Maintenance"}
    assert set(np.unique(big["efficiency_status"])) == {"Low", "Medium", "High"}
    assert set(np.unique(big["hazard_type"])) == {
        "NONE",
        "FIRE_RISK",
        "MECHANICAL_HAZARD",
        "ELECTRICAL_HAZARD",
    }


def test_records_are_plain_json_with_exact_keys():
    sim = FactorySimulator(seed=5, machines=3, step_minutes=0.5)
    records = sim.run(3).records()
    assert len(records) == 9
    for record in records:
        assert list(record) == list(COLUMNS)
        assert {type(v) for v in record.values()} <= {int, float, str}
        assert type(record["machine_id"]) is int
        assert type(record["temperature_c"]) is float
    json.dumps(records)
    stamps = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert all(s.utcoffset() == timedelta(0) for s in stamps)
    assert stamps[0] == datetime(2025, 1, 1, tzinfo=UTC)
    assert stamps[-1] == datetime(2025, 1, 1, 0, 1, tzinfo=UTC)
    assert records[4]["timestamp"].endswith(("Z", "+00:00"))


def test_empty_concat_and_run():
    empty = concat([])
    assert len(empty) == 0 and set(empty.columns) == set(COLUMNS) | set(LABELS)
    assert empty.records() == []
    assert len(FactorySimulator(machines=2).run(0)) == 0


def test_signals_degrade_with_wear(big):
    active = big["operation_mode"] == "Active"
    worn = active & (big["wear"] > 0.9)
    fresh = active & (big["wear"] < 0.3)
    assert worn.sum() > 1000 and fresh.sum() > 1000
    assert big["vibration_hz"][worn].mean() > big["vibration_hz"][fresh].mean() + 1.0
    assert big["temperature_c"][worn].mean() > big["temperature_c"][fresh].mean() + 8.0
    assert big["maintenance_score"][worn].mean() > big["maintenance_score"][fresh].mean() + 0.4
    # Most of the rise comes late: the middle of life still looks fresh.
    middle = active & (big["wear"] > 0.4) & (big["wear"] < 0.5)
    rise_mid = big["vibration_hz"][middle].mean() - big["vibration_hz"][fresh].mean()
    rise_end = big["vibration_hz"][worn].mean() - big["vibration_hz"][fresh].mean()
    assert rise_mid < 0.25 * rise_end


def test_rul_counts_down_and_failures_lead_to_a_repair_then_a_fresh_life(big):
    rul = grid(big, "rul_hours")
    mode = grid(big, "operation_mode")
    wear = grid(big, "wear")
    step_h = 1 / 60
    change = np.diff(rul, axis=0)
    restart = change > 0
    np.testing.assert_allclose(change[~restart], -step_h, atol=1e-9)
    ticks, machines = np.nonzero(restart)
    assert len(ticks) >= 5, "machines should fail within the run"
    for t, m in zip(ticks, machines, strict=True):
        # The life ran out on the tick before, and the repair starts now.
        assert rul[t, m] <= step_h + 1e-9
        assert mode[t, m] != "Maintenance" and mode[t + 1, m] == "Maintenance"
        assert 150 + 2 <= rul[t + 1, m] <= 700 + 6
        spell = mode[t + 1 :, m] == "Maintenance"
        length_h = (np.argmin(spell) if not spell.all() else len(spell)) * step_h
        if not spell.all():
            assert 2 - step_h <= length_h <= 6 + step_h
            # A fresh life follows: no wear, and the RUL equals the whole new life.
            after = t + 1 + np.argmin(spell)
            assert wear[after, m] < 0.01
    # Maintenance happens only after a failure, never as a random spell.
    in_repair = mode == "Maintenance"
    assert in_repair[0].sum() == 0


def test_operation_modes_come_in_persistent_spells(big):
    mode = grid(big, "operation_mode")
    switches = (mode[1:] != mode[:-1]).sum()
    assert switches < mode.size / 50
    assert 0.05 < (mode == "Idle").mean() < 0.4
    idle = big["operation_mode"] == "Idle"
    active = big["operation_mode"] == "Active"
    normal = ~big["power_anomaly"] & (big["hazard_type"] == "NONE")
    assert big["power_consumption_kw"][idle & normal].mean() < (
        0.6 * big["power_consumption_kw"][active & normal].mean()
    )
    assert big["temperature_c"][idle].mean() < big["temperature_c"][active].mean() - 5
    assert np.median(big["production_speed"][idle]) < 30


def test_power_anomalies_show_in_power(big):
    flagged = big["power_anomaly"]
    assert flagged.sum() > 100
    hazard = big["hazard_type"] != "NONE"
    for mode, factor in (("Active", 1.4), ("Idle", 1.8)):
        rows = big["operation_mode"] == mode
        anomalous = big["power_consumption_kw"][rows & flagged & ~hazard]
        normal = big["power_consumption_kw"][rows & ~flagged & ~hazard]
        assert len(anomalous) > 10, mode
        assert anomalous.mean() > factor * normal.mean(), mode


def test_cyber_attacks_burst_latency_loss_and_errors_together(big):
    attack = big["cyber_attack"]
    assert attack.sum() > 500
    lat, loss, err = (big[n] for n in ("network_latency_ms", "packet_loss_pct", "error_rate_pct"))
    assert np.median(lat[attack]) > 100 and np.percentile(lat[~attack], 99) < 50
    assert np.median(loss[attack]) > 10 and np.percentile(loss[~attack], 99) < 5
    assert np.median(err[attack]) > np.percentile(err[~attack], 95)
    # Some attacks are plant-wide: many machines hit at the same tick.
    per_tick = grid(big, "cyber_attack").sum(axis=1)
    assert per_tick.max() >= 10
    # Episodes last several ticks rather than flickering.
    starts = (np.diff(grid(big, "cyber_attack").astype(int), axis=0) == 1).sum()
    assert attack.sum() / starts > 3


def test_hazards_show_in_their_signals(big):
    kind = big["hazard_type"]
    none = kind == "NONE"
    fire, mech, elec = (kind == k for k in ("FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD"))
    assert fire.sum() > 20 and mech.sum() > 20 and elec.sum() > 20
    assert (big["operation_mode"][~none] != "Maintenance").all()
    temperature, vibration = big["temperature_c"], big["vibration_hz"]
    power = big["power_consumption_kw"]
    assert np.percentile(temperature[fire], 5) > 93
    assert temperature[fire].max() < 135
    assert np.percentile(temperature[none], 99.9) < 95
    assert np.percentile(vibration[mech], 5) > 5.5
    assert np.percentile(vibration[none], 99.9) < 6
    assert power[elec].mean() > 2 * power[none].mean()
    assert temperature[elec].mean() > temperature[none].mean() + 20


def test_mechanical_hazards_are_likelier_near_end_of_life():
    params = SimParams(mechanical_hazard_rate_per_h=0.05)
    c = FactorySimulator(seed=2, machines=MACHINES, params=params).run(3000).columns
    mech = grid(c, "hazard_type") == "MECHANICAL_HAZARD"
    onset = mech[1:] & ~mech[:-1]
    wear = grid(c, "wear")[1:]
    late = onset[wear > 0.8].mean()
    early = onset[(wear < 0.5) & (wear > 0)].mean()
    assert late > 2.5 * early > 0


def test_usual_ranges_hold_for_ordinary_active_rows(big):
    ordinary = (
        (big["operation_mode"] == "Active")
        & ~big["power_anomaly"]
        & ~big["cyber_attack"]
        & (big["hazard_type"] == "NONE")
    )
    inside = np.ones(ordinary.sum(), bool)
    for name, (lo, hi) in USUAL_RANGES.items():
        values = big[name][ordinary]
        inside &= (values >= lo) & (values <= hi)
    assert inside.mean() >= 0.95


def test_efficiency_follows_output_per_energy_and_is_roughly_balanced(big):
    status = big["efficiency_status"]
    for level in ("Low", "Medium", "High"):
        assert 0.15 < (status == level).mean() < 0.5, level
    output = big["production_speed"] * (1 - big["defect_rate_pct"] / 100)
    per_kwh = output / np.maximum(big["power_consumption_kw"], 0.1)
    assert per_kwh[status == "Low"].max() <= per_kwh[status == "Medium"].min()
    assert per_kwh[status == "Medium"].max() <= per_kwh[status == "High"].min()
