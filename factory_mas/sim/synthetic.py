"""Seeded factory simulator: telemetry in the public dataset's columns, with learnable structure.

The public "Intelligent Manufacturing Dataset" is, as far as a model can tell, noise: its
columns are drawn independently, so nothing trained on it predicts anything. This simulator
keeps the columns and their usual ranges but builds in the relations the agents are meant
to learn, and records the ground truth beside each row:

* wear to failure: every machine ages through a life of known length, vibration and
  temperature climb near its end (``rul_hours``, ``wear``), then it goes to Maintenance
  for a repair and starts a fresh life;
* persistent Active / Idle spells;
* injected power anomalies (``power_anomaly``);
* network attack episodes, now and then plant-wide (``cyber_attack``);
* fire, mechanical and electrical hazards (``hazard_type``).

Everything is vectorised across machines and, except for the two state variables that
depend on their own past (age through failures and the Active/Idle spell), across ticks
as well. The run is cut into chunks whose random numbers are drawn per tick in a fixed
layout, so stepping one tick at a time yields bit for bit what one long run yields.
Transcendental numpy functions are avoided on arrays because their SIMD and scalar paths
may round differently for different array lengths, which would break that equality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

COLUMNS: tuple[str, ...] = (
    "timestamp",
    "machine_id",
    "operation_mode",
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "network_latency_ms",
    "packet_loss_pct",
    "defect_rate_pct",
    "production_speed",
    "maintenance_score",
    "error_rate_pct",
    "efficiency_status",
)
LABELS: tuple[str, ...] = ("rul_hours", "power_anomaly", "cyber_attack", "hazard_type", "wear")

OPERATION_MODES: tuple[str, ...] = ("Active", "Idle", "Maintenance")
EFFICIENCY_STATUSES: tuple[str, ...] = ("Low", "Medium", "High")
HAZARD_TYPES: tuple[str, ...] = ("NONE", "FIRE_RISK", "MECHANICAL_HAZARD", "ELECTRICAL_HAZARD")

DEFAULT_START = datetime(2025, 1, 1, tzinfo=UTC)

_ACTIVE, _IDLE, _MAINTENANCE = range(3)
_NONE, _FIRE, _MECHANICAL, _ELECTRICAL = range(4)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Chunks bound the memory of one run to a few tens of MB whatever its length.
_CHUNK_ROWS = 1 << 16

_EMPTY_DTYPES: dict[str, np.dtype] = {
    "timestamp": np.dtype("datetime64[ms]"),
    "machine_id": np.dtype(np.int64),
    "operation_mode": np.dtype("<U11"),
    "efficiency_status": np.dtype("<U6"),
    "power_anomaly": np.dtype(bool),
    "cyber_attack": np.dtype(bool),
    "hazard_type": np.dtype("<U17"),
}


@dataclass(frozen=True)
class SimParams:
    """Rates, durations and magnitudes. Rates are per machine unless named plant-wide."""

    # Each machine's normal levels are drawn from these ranges: the shifted plants of the
    # model cards (SHIFTED_PLANTS) differ from the default only here.
    temperature_c_range: tuple[float, float] = (50.0, 62.0)
    vibration_hz_range: tuple[float, float] = (0.8, 1.6)
    power_kw_range: tuple[float, float] = (4.5, 7.0)
    speed_range: tuple[float, float] = (220.0, 420.0)
    latency_ms_range: tuple[float, float] = (4.0, 15.0)

    life_min_h: float = 150.0
    life_max_h: float = 700.0
    repair_min_h: float = 2.0
    repair_max_h: float = 6.0

    active_spell_mean_h: float = 3.0
    idle_spell_mean_h: float = 0.75

    power_anomaly_rate_per_h: float = 1 / 100
    power_anomaly_min_minutes: float = 3.0
    power_anomaly_max_minutes: float = 40.0
    power_spike_factor_min: float = 1.5
    power_spike_factor_max: float = 3.0

    cyber_attack_rate_per_h: float = 1 / 150
    plantwide_attack_rate_per_h: float = 1 / 24
    # A plant-wide attack reaches each machine with a probability drawn from this range.
    plantwide_attack_reach_min: float = 0.3
    plantwide_attack_reach_max: float = 1.0
    cyber_attack_min_minutes: float = 3.0
    cyber_attack_max_minutes: float = 45.0

    fire_risk_rate_per_h: float = 1 / 500
    mechanical_hazard_rate_per_h: float = 1 / 500
    electrical_hazard_rate_per_h: float = 1 / 500
    # The mechanical rate is multiplied by 1 + gain * wear**4: worn bearings shake loose.
    mechanical_hazard_wear_gain: float = 8.0
    hazard_min_minutes: float = 3.0
    hazard_max_minutes: float = 30.0

    # Units per kWh, after defects, splitting rows into Low / Medium / High in about thirds.
    efficiency_low_below: float = 39.0
    efficiency_high_above: float = 54.0


DEFAULT_PARAMS = SimParams()
# Plants whose machines differ from the default only in their normal levels: a model that
# judges each machine against its own normal does as well on them as on the default.
SHIFTED_PLANTS: dict[str, SimParams] = {
    "hot": SimParams(temperature_c_range=(65.0, 78.0)),
    "big": SimParams(power_kw_range=(15.0, 40.0)),
    "small": SimParams(power_kw_range=(0.5, 2.0)),
    "slow_network": SimParams(latency_ms_range=(40.0, 80.0)),
}


@dataclass(frozen=True)
class Frame:
    """A block of rows: the telemetry COLUMNS plus the ground-truth LABELS, column-wise."""

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["machine_id"])

    def records(self) -> list[dict]:
        """The telemetry rows as plain JSON-ready dicts, as a gateway would publish them."""
        ts = self.columns["timestamp"]
        whole_seconds = not (ts.astype(np.int64) % 1000).any()
        stamps = np.datetime_as_string(ts, unit="s" if whole_seconds else "ms", timezone="UTC")
        values = [stamps.tolist()] + [self.columns[name].tolist() for name in COLUMNS[1:]]
        return [dict(zip(COLUMNS, row, strict=True)) for row in zip(*values, strict=True)]


def concat(frames: list[Frame]) -> Frame:
    """Frames one after the other; an empty list gives an empty frame."""
    names = COLUMNS + LABELS
    if not frames:
        return Frame({n: np.empty(0, _EMPTY_DTYPES.get(n, np.float64)) for n in names})
    return Frame({n: np.concatenate([f.columns[n] for f in frames]) for n in names})


def _per_tick(rate_per_h: float, step_h: float) -> float:
    """Probability that a Poisson event of this rate starts within one tick."""
    return -math.expm1(-rate_per_h * step_h)


@dataclass
class _Episodes:
    """Episodes that start at random ticks and last a drawn number of ticks.

    Vectorised over ticks: a row is inside an episode when the latest end among the
    episodes started so far lies after it. Each episode carries attributes (severity,
    kind) fixed at its start; a row takes those of the most recent start. A start inside a
    running episode takes it over, which keeps the whole thing loop-free.
    """

    end_tick: np.ndarray  # per machine, exclusive, absolute tick index
    attrs: tuple[np.ndarray, ...]

    def advance(
        self, tick0: int, start: np.ndarray, ticks: np.ndarray, *attrs: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        n_ticks = start.shape[0]
        tick = tick0 + np.arange(n_ticks)[:, None]
        end = np.where(start, tick + ticks, -1)
        end[0] = np.maximum(end[0], self.end_tick)
        np.maximum.accumulate(end, axis=0, out=end)
        inside = end > tick
        last = np.maximum.accumulate(np.where(start, np.arange(1, n_ticks + 1)[:, None], 0))
        carried = []
        for previous, new in zip(self.attrs, attrs, strict=True):
            # Row 0 of the stack holds what the previous chunk ended with.
            stacked = np.concatenate([previous[None, :], new])
            carried.append(np.take_along_axis(stacked, last, axis=0))
        self.end_tick = end[-1].copy()
        self.attrs = tuple(c[-1].copy() for c in carried)
        return (inside, *carried)


# Uniform draws per machine per tick, by purpose.
(
    _U_MODE,
    _U_LIFE,
    _U_REPAIR,
    _U_POWER_START,
    _U_POWER_LENGTH,
    _U_POWER_FACTOR,
    _U_CYBER_START,
    _U_CYBER_LENGTH,
    _U_CYBER_INTENSITY,
    _U_CYBER_REACH,
    _U_HAZARD_START,
    _U_HAZARD_LENGTH,
    _U_HAZARD_SEVERITY,
    _U_PER_MACHINE,
) = range(14)
# Uniform draws per tick shared by the whole plant.
_UP_ATTACK_START, _UP_ATTACK_LENGTH, _UP_ATTACK_REACH, _U_PER_PLANT = range(4)
# Standard normal draws per machine per tick: the noise on each signal.
(
    _Z_TEMPERATURE,
    _Z_VIBRATION,
    _Z_POWER,
    _Z_SPEED,
    _Z_LATENCY,
    _Z_LOSS,
    _Z_DEFECT,
    _Z_MAINTENANCE,
    _Z_ERROR,
    _Z_PER_MACHINE,
) = range(10)


@dataclass
class _Machines:
    """Per-machine constants: each machine has its own baseline, so models must generalise."""

    temperature_c: np.ndarray
    vibration_hz: np.ndarray
    power_kw: np.ndarray
    speed: np.ndarray
    latency_ms: np.ndarray


@dataclass
class _State:
    """What carries over from one tick to the next."""

    # Hours into the current life; negative while a repair is still running.
    age_h: np.ndarray
    life_h: np.ndarray
    idle: np.ndarray
    power: _Episodes
    cyber: _Episodes
    hazard: _Episodes
    tick: int = 0


class FactorySimulator:
    """N machines, one telemetry row each per tick, deterministic for a seed."""

    def __init__(
        self,
        seed: int = 42,
        machines: int = 50,
        step_minutes: float = 1.0,
        start: datetime | None = None,
        *,
        params: SimParams = DEFAULT_PARAMS,
    ) -> None:
        if machines < 1:
            raise ValueError("machines must be at least 1")
        if not step_minutes > 0:
            raise ValueError("step_minutes must be positive")
        start = DEFAULT_START if start is None else start
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._n = machines
        self._p = params
        self._step_minutes = float(step_minutes)
        self._step_h = self._step_minutes / 60
        self._step_ms = self._step_minutes * 60_000
        self._start_ms = (start - _EPOCH) // timedelta(milliseconds=1)
        self._ids = np.arange(1, machines + 1, dtype=np.int64)

        rng = np.random.default_rng(seed)
        # Separate streams for uniforms and normals keep each one's per-tick draws contiguous,
        # so any chunking of the run consumes them identically.
        self._uniforms, self._normals = rng.spawn(2)
        n = machines
        self._m = _Machines(
            temperature_c=rng.uniform(*params.temperature_c_range, n),
            vibration_hz=rng.uniform(*params.vibration_hz_range, n),
            power_kw=rng.uniform(*params.power_kw_range, n),
            speed=rng.uniform(*params.speed_range, n),
            latency_ms=rng.uniform(*params.latency_ms_range, n),
        )
        life = rng.uniform(params.life_min_h, params.life_max_h, n)
        idle_share = params.idle_spell_mean_h / (
            params.idle_spell_mean_h + params.active_spell_mean_h
        )
        self._s = _State(
            # Machines join at any point of their life, so every life stage is present at once.
            age_h=rng.uniform(0.0, 1.0, n) * life,
            life_h=life,
            idle=rng.uniform(0.0, 1.0, n) < idle_share,
            power=_Episodes(np.zeros(n, np.int64), (np.ones(n),)),
            cyber=_Episodes(np.zeros(n, np.int64), (np.zeros(n),)),
            hazard=_Episodes(np.zeros(n, np.int64), (np.zeros(n, np.int64), np.zeros(n))),
        )

    @property
    def now(self) -> datetime:
        """Timestamp of the next tick."""
        return _EPOCH + timedelta(milliseconds=self._start_ms + round(self._s.tick * self._step_ms))

    def step(self) -> Frame:
        return self._simulate(1)

    def run(self, ticks: int) -> Frame:
        if ticks < 0:
            raise ValueError("ticks must not be negative")
        chunk = max(1, _CHUNK_ROWS // self._n)
        return concat([self._simulate(min(chunk, ticks - t)) for t in range(0, ticks, chunk)])

    def _simulate(self, ticks: int) -> Frame:
        n, s = self._n, self._s
        tick0 = s.tick
        u = self._uniforms.random((ticks, _U_PER_MACHINE * n + _U_PER_PLANT))
        um = u[:, : _U_PER_MACHINE * n].reshape(ticks, _U_PER_MACHINE, n)
        up = u[:, _U_PER_MACHINE * n :]
        z = self._normals.standard_normal((ticks, _Z_PER_MACHINE * n)).reshape(
            ticks, _Z_PER_MACHINE, n
        )

        age_h, life_h, idle = self._age_and_spells(um)
        maintenance = age_h < 0
        mode = np.where(maintenance, _MAINTENANCE, np.where(idle, _IDLE, _ACTIVE))
        wear = np.clip(age_h / life_h, 0.0, 1.0)

        power_on, power_factor = self._power_episodes(tick0, um)
        cyber_on, cyber_intensity = self._cyber_episodes(tick0, um, up)
        hazard_on, hazard_kind, severity = self._hazard_episodes(tick0, um, wear, maintenance)
        hazard_kind = np.where(hazard_on, hazard_kind, _NONE)
        s.tick += ticks
        ms = self._start_ms + np.rint((tick0 + np.arange(ticks)) * self._step_ms).astype(np.int64)
        columns = {
            "timestamp": np.repeat(ms, n).astype("datetime64[ms]"),
            "machine_id": np.tile(self._ids, ticks),
            **self._telemetry(
                mode,
                wear,
                z,
                power_on,
                power_factor,
                cyber_on,
                cyber_intensity,
                hazard_kind,
                severity,
            ),
            "rul_hours": life_h - age_h,
            "power_anomaly": power_on,
            "cyber_attack": cyber_on,
            "hazard_type": np.asarray(HAZARD_TYPES)[hazard_kind],
            "wear": wear,
        }
        return Frame({name: np.ravel(columns[name]) for name in COLUMNS + LABELS})

    def _age_and_spells(self, um: np.ndarray) -> tuple[np.ndarray, ...]:
        """The only tick-by-tick loop: failures and spells depend on their own past."""
        p, s = self._p, self._s
        ticks = um.shape[0]
        new_life = p.life_min_h + (p.life_max_h - p.life_min_h) * um[:, _U_LIFE]
        repair = p.repair_min_h + (p.repair_max_h - p.repair_min_h) * um[:, _U_REPAIR]
        # Memoryless switching gives geometric spells with the configured mean lengths.
        leave_active = um[:, _U_MODE] < _per_tick(1 / p.active_spell_mean_h, self._step_h)
        stay_idle = um[:, _U_MODE] >= _per_tick(1 / p.idle_spell_mean_h, self._step_h)
        age_h = np.empty((ticks, self._n))
        life_h = np.empty((ticks, self._n))
        idle = np.empty((ticks, self._n), bool)
        age, life, is_idle = s.age_h, s.life_h, s.idle
        for t in range(ticks):
            failed = age >= life
            if failed.any():
                # The repair counts as negative age, so rul = life - age covers it too.
                age = np.where(failed, -repair[t], age)
                life = np.where(failed, new_life[t], life)
            age_h[t], life_h[t], idle[t] = age, life, is_idle
            age = age + self._step_h
            is_idle = np.where(is_idle, stay_idle[t], leave_active[t])
        s.age_h, s.life_h, s.idle = age, life, is_idle
        return age_h, life_h, idle

    def _ticks(self, u: np.ndarray, min_minutes: float, max_minutes: float) -> np.ndarray:
        minutes = min_minutes + (max_minutes - min_minutes) * u
        return np.maximum(1, np.ceil(minutes / self._step_minutes)).astype(np.int64)

    def _power_episodes(self, tick0: int, um: np.ndarray) -> tuple[np.ndarray, ...]:
        p = self._p
        start = um[:, _U_POWER_START] < _per_tick(p.power_anomaly_rate_per_h, self._step_h)
        ticks = self._ticks(
            um[:, _U_POWER_LENGTH], p.power_anomaly_min_minutes, p.power_anomaly_max_minutes
        )
        factor = (
            p.power_spike_factor_min
            + (p.power_spike_factor_max - p.power_spike_factor_min) * um[:, _U_POWER_FACTOR]
        )
        return self._s.power.advance(tick0, start, ticks, factor)

    def _cyber_episodes(self, tick0: int, um: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, ...]:
        p = self._p
        local = um[:, _U_CYBER_START] < _per_tick(p.cyber_attack_rate_per_h, self._step_h)
        plant = up[:, _UP_ATTACK_START] < _per_tick(p.plantwide_attack_rate_per_h, self._step_h)
        reach = (
            p.plantwide_attack_reach_min
            + (p.plantwide_attack_reach_max - p.plantwide_attack_reach_min)
            * up[:, _UP_ATTACK_REACH]
        )
        reached = plant[:, None] & (um[:, _U_CYBER_REACH] < reach[:, None])
        lo, hi = p.cyber_attack_min_minutes, p.cyber_attack_max_minutes
        # Machines hit by one plant-wide attack share its length.
        ticks = np.where(
            reached,
            self._ticks(up[:, _UP_ATTACK_LENGTH], lo, hi)[:, None],
            self._ticks(um[:, _U_CYBER_LENGTH], lo, hi),
        )
        return self._s.cyber.advance(tick0, local | reached, ticks, um[:, _U_CYBER_INTENSITY])

    def _hazard_episodes(
        self, tick0: int, um: np.ndarray, wear: np.ndarray, maintenance: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        p, dt = self._p, self._step_h
        fire = _per_tick(p.fire_risk_rate_per_h, dt)
        wear2 = wear * wear
        mechanical = _per_tick(p.mechanical_hazard_rate_per_h, dt) * (
            1 + p.mechanical_hazard_wear_gain * wear2 * wear2
        )
        electrical = _per_tick(p.electrical_hazard_rate_per_h, dt)
        # One uniform both decides whether a hazard starts and which kind it is.
        u = um[:, _U_HAZARD_START]
        start = (u < fire + mechanical + electrical) & ~maintenance
        kind = _FIRE + (u >= fire) + (u >= fire + mechanical)
        ticks = self._ticks(um[:, _U_HAZARD_LENGTH], p.hazard_min_minutes, p.hazard_max_minutes)
        inside, kind, severity = self._s.hazard.advance(
            tick0, start, ticks, kind, um[:, _U_HAZARD_SEVERITY]
        )
        # A machine under repair is stopped: a hazard does not outlast the failure.
        return inside & ~maintenance, kind, severity

    def _telemetry(
        self,
        mode: np.ndarray,
        wear: np.ndarray,
        z: np.ndarray,
        power_on: np.ndarray,
        power_factor: np.ndarray,
        cyber_on: np.ndarray,
        cyber_intensity: np.ndarray,
        hazard: np.ndarray,
        severity: np.ndarray,
    ) -> dict[str, np.ndarray]:
        m, p = self._m, self._p
        active = mode == _ACTIVE
        idle = mode == _IDLE
        running = mode != _MAINTENANCE
        # Cubic wear: the damage that shows in the signals piles up in the last third of life.
        late = wear * wear * wear

        speed = np.where(
            active,
            m.speed * (1 - 0.12 * late) * (1 + 0.08 * z[:, _Z_SPEED]),
            np.where(idle, 12.0 * np.abs(z[:, _Z_SPEED]), 0.0),
        )
        speed = np.maximum(speed, 0.0)

        load = speed / m.speed
        # Machines smaller than the default plant's smallest rest and vary in proportion.
        small = m.power_kw / DEFAULT_PARAMS.power_kw_range[0]
        power = (
            np.where(
                active,
                m.power_kw * (0.7 + 0.3 * load) + 0.6 * late,
                np.where(idle, 0.4 * m.power_kw, np.minimum(1.7, m.power_kw * small)),
            )
            + 0.25 * np.minimum(1.0, small) * z[:, _Z_POWER]
        )
        temperature = (
            m.temperature_c
            + np.where(active, 0.0, np.where(idle, -5.0, -22.0))
            + 3.0 * (power - m.power_kw) * running
            + 16.0 * late * running
            + 4.0 * z[:, _Z_TEMPERATURE]
        )
        # Injected after the temperature: a short spike does not have time to heat the machine.
        # It multiplies a running draw, or gives a resting machine a full one.
        anomalous = np.where(active, power * power_factor, m.power_kw * (power_factor - 0.5))
        power = np.where(power_on, anomalous, power)

        vibration = (
            np.where(
                active,
                m.vibration_hz + 1.8 * late,
                np.where(idle, 0.3 * m.vibration_hz + 0.8 * late, 0.1),
            )
            + np.where(running, 0.55, 0.03) * z[:, _Z_VIBRATION]
        )

        maintenance = 0.1 + 0.7 * wear * wear + 0.2 * z[:, _Z_MAINTENANCE]
        error = 1.0 + 1.2 * late + 1.2 * np.abs(z[:, _Z_ERROR])
        defect = 1.5 + 1.2 * late + np.abs(z[:, _Z_DEFECT])
        latency = m.latency_ms + 4.0 * np.abs(z[:, _Z_LATENCY])
        loss = 0.2 + 0.6 * np.abs(z[:, _Z_LOSS])

        # An attack floods the link: delay, loss and protocol errors all burst at once.
        latency = np.where(
            cyber_on, 60.0 + 240.0 * cyber_intensity + 15.0 * z[:, _Z_LATENCY], latency
        )
        loss = np.where(cyber_on, 5.0 + 35.0 * cyber_intensity + 2.0 * z[:, _Z_LOSS], loss)
        error = np.where(cyber_on, error + 8.0 + 20.0 * cyber_intensity, error)

        fire = hazard == _FIRE
        mechanical = hazard == _MECHANICAL
        electrical = hazard == _ELECTRICAL
        temperature = np.where(fire, 96.0 + 32.0 * severity + z[:, _Z_TEMPERATURE], temperature)
        vibration = np.where(mechanical, 6.2 + 5.6 * severity + 0.2 * z[:, _Z_VIBRATION], vibration)
        temperature = np.where(mechanical, temperature + 5.0, temperature)
        defect = np.where(mechanical, defect + 4.0 + 6.0 * severity, defect)
        power = np.where(electrical, np.maximum(power, m.power_kw) * (2.0 + severity), power)
        temperature = np.where(
            electrical, 86.0 + 24.0 * severity + 1.5 * z[:, _Z_TEMPERATURE], temperature
        )

        power = np.maximum(power, 0.0)
        defect = np.clip(defect, 0.0, 100.0)
        units_per_kwh = speed * (1 - defect / 100) / np.maximum(power, 0.1)
        efficiency = (units_per_kwh >= p.efficiency_low_below).astype(np.int64) + (
            units_per_kwh > p.efficiency_high_above
        )
        return {
            "operation_mode": np.asarray(OPERATION_MODES)[mode],
            "temperature_c": temperature,
            "vibration_hz": np.maximum(vibration, 0.0),
            "power_consumption_kw": power,
            "network_latency_ms": np.maximum(latency, 0.1),
            "packet_loss_pct": np.clip(loss, 0.0, 100.0),
            "defect_rate_pct": defect,
            "production_speed": speed,
            "maintenance_score": np.clip(maintenance, 0.0, 1.0),
            "error_rate_pct": np.clip(error, 0.0, 100.0),
            "efficiency_status": np.asarray(EFFICIENCY_STATUSES)[efficiency],
        }
