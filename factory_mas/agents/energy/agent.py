"""energy_agent: what each reading should have drawn, whether it is anomalous, and what to do.

Each machine's memory is its last `window` readings (the forecaster's input) and its
baseline per operation mode. A record is judged against the memory as it stood before the
record, then joins it, so `forecast_kw` is what was expected for that very reading.

A machine with fewer than `window` readings is forecast from what there is: the forecaster
was trained with histories cut short (down to none, where it answers from the mode and
speed alone), which beats switching to a different rule during the first minutes. A mode
seen for the first time has no baseline yet; the forecast stands in for it.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...messages import Alert, OperationMode, Prediction, TelemetryRecord
from ...settings import EnergySettings
from ..base import AgentContext, BaseAgent
from . import logic
from .model import AGENT_ID, EMPTY, MODE_CODE, MODES, EnergyModel, next_baseline
from .result import EnergyResult

log = logging.getLogger(__name__)

_ACTIVE = MODE_CODE["Active"]
# (power kW, mode code, production speed): one reading in a machine's window.
Reading = tuple[float, int, float]


class MachineState(msgspec.Struct):
    # Oldest first: [power_kw, operation_mode, production_speed].
    window: list[tuple[float, OperationMode, float]]
    baseline_kw: dict[OperationMode, float]


class EnergyState(msgspec.Struct):
    machines: dict[int, MachineState] = msgspec.field(default_factory=dict)


@dataclass
class _Memory:
    window: deque[Reading]
    # Per mode code; NaN until the machine has shown the mode.
    baseline_kw: list[float]

    def copy(self, window: int) -> _Memory:
        """A copy to change, holding at most `window` readings (a reload may change it)."""
        return _Memory(deque(self.window, maxlen=window), list(self.baseline_kw))


class EnergyAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "energy"
    settings: EnergySettings

    model: EnergyModel

    def __init__(self, settings: EnergySettings, ctx: AgentContext) -> None:
        super().__init__(settings, ctx)
        self.memory: dict[int, _Memory] = {}

    def load(self) -> EnergyModel:
        return EnergyModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        model, t = self.model, self.settings
        window, n = model.window, len(records)
        mode = np.array([MODE_CODE[r.operation_mode] for r in records], np.int64)
        power = np.array([r.power_consumption_kw for r in records])
        speed = np.array([r.production_speed for r in records])
        history = np.empty((n, window, 3))
        baseline = np.empty(n)
        active_baseline = np.empty(n)
        rows_of: dict[int, list[int]] = {}
        for i, r in enumerate(records):
            rows_of.setdefault(r.machine_id, []).append(i)
        # Machine by machine, each machine's records in arrival order, so its second record
        # in a batch sees its first, exactly as when records come one at a time. Windows
        # are cut from one array per machine instead of being copied record by record.
        # The memory is committed only once the models have answered: a failed batch
        # leaves it as it was.
        touched: dict[int, _Memory] = {}
        for machine_id, rows in rows_of.items():
            known = self.memory.get(machine_id)
            memory = (
                known.copy(window)
                if known is not None
                else _Memory(deque(maxlen=window), [math.nan] * len(MODES))
            )
            touched[machine_id] = memory
            new = [(float(power[i]), int(mode[i]), float(speed[i])) for i in rows]
            pad = [(0.0, EMPTY, 0.0)] * (window - len(memory.window))
            steps = np.array(pad + list(memory.window) + new, np.float64)
            history[rows] = sliding_window_view(steps, (window, 3))[: len(rows), 0]
            memory.window.extend(new)
            for i, (reading, code, _) in zip(rows, new, strict=True):
                before = memory.baseline_kw[code]
                baseline[i] = before
                active_baseline[i] = memory.baseline_kw[_ACTIVE]
                memory.baseline_kw[code] = (
                    reading if math.isnan(before) else next_baseline(before, reading, model.scaling)
                )

        forecast = model.forecast(history, mode, speed)
        baseline = np.where(np.isnan(baseline), forecast, baseline)
        scores = model.anomaly_score(power, forecast, baseline)
        self.memory.update(touched)

        now = datetime.now(UTC)
        out: list[Prediction] = []
        readings = zip(
            records,
            power.tolist(),
            forecast.tolist(),
            baseline.tolist(),
            active_baseline.tolist(),
            scores.tolist(),
            strict=True,
        )
        conditioner = self.conditioner
        for r, consumption, expected, usual, active, raw in readings:
            units = logic.units_per_kwh(r.production_speed, r.defect_rate_pct, consumption)
            score = conditioner.smooth(r.machine_id, "anomaly", raw, t.smoothing_records)
            j = logic.Judged(
                machine_id=r.machine_id,
                mode=r.operation_mode,
                consumption_kw=consumption,
                forecast_kw=expected,
                baseline_kw=usual,
                active_baseline_kw=active,
                is_anomaly=logic.is_anomaly(score, conditioner.previous_level(r.machine_id), t),
                units_per_kwh=units,
                efficiency_score=logic.efficiency_score(units, t),
            )
            level = conditioner.level(
                r.machine_id, logic.level_for(j, t), (r.timestamp or now).timestamp()
            )
            out.append(
                self.predicted(
                    r,
                    now,
                    level,
                    EnergyResult(
                        consumption_kw=round(consumption, 3),
                        forecast_kw=round(expected, 3),
                        baseline_kw=round(usual, 3),
                        anomaly_score=round(score, 4),
                        anomaly_score_raw=round(raw, 4),
                        is_anomaly=j.is_anomaly,
                        efficiency_score=j.efficiency_score,
                        recommendations=logic.recommendations(j, t),
                    ),
                )
            )
        return out

    def make_alert(self, prediction: Prediction) -> Alert:
        r = prediction.result
        return Alert(
            source=self.agent_id,
            type=logic.alert_type(r["is_anomaly"], prediction.level),
            level=prediction.level,
            machine_id=prediction.machine_id,
            value=r["consumption_kw"],
            details=logic.alert_details(prediction.machine_id, r),
        )

    def export_state(self) -> Any:
        machines = {
            machine_id: MachineState(
                window=[(p, MODES[code], s) for p, code, s in memory.window],
                baseline_kw={
                    MODES[code]: kw
                    for code, kw in enumerate(memory.baseline_kw)
                    if not math.isnan(kw)
                },
            )
            for machine_id, memory in self.memory.items()
        }
        return msgspec.to_builtins(EnergyState(machines))

    def import_state(self, state: Any) -> None:
        try:
            restored = msgspec.convert(state, EnergyState)
        except msgspec.ValidationError as exc:
            log.error("%s: per-machine state unreadable, starting empty: %s", self.agent_id, exc)
            restored = EnergyState()
        self.memory = {
            machine_id: _Memory(
                deque(
                    ((p, MODE_CODE[m], s) for p, m, s in machine.window), maxlen=self.model.window
                ),
                [machine.baseline_kw.get(mode, math.nan) for mode in MODES],
            )
            for machine_id, machine in restored.machines.items()
        }
