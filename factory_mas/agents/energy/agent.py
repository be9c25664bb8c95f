"""energy_agent: what each reading should have drawn, whether it is anomalous, and what to do.

Each machine's memory is its last `window` readings (the forecaster's input), taken in the
units of its own normal as they arrived, and its learned normal per operation mode (kept
across a model reload and in the checkpoint, since a machine's draw does not change with
the model). A record is judged against the memory as it stood before the record, then
joins it, so `forecast_kw` is what was expected for that very reading.

A machine with fewer than `window` readings is forecast from what there is: the forecaster
was trained with histories cut short (down to none, where it answers from the mode and
speed alone). A mode the machine has not shown has no baseline yet; the forecast stands in
for it, and a mode's first `WARMUP` readings teach its normal without alarming.
"""

from __future__ import annotations

import copy
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...messages import Alert, OperationMode, Prediction, TelemetryRecord
from ...ml.normal import Normal, Normals
from ...settings import EnergySettings
from ..base import AgentContext, BaseAgent
from . import logic
from .model import AGENT_ID, EMPTY, MODE_CODE, MODES, EnergyModel, readings, track
from .result import EnergyResult

log = logging.getLogger(__name__)

# (power z, mode code, speed z): one reading in a machine's window.
Step = tuple[float, int, float]


class MachineState(msgspec.Struct):
    # Oldest first: [power z, operation_mode, speed z] against the machine's normal.
    steps: list[tuple[float, OperationMode, float]]


class EnergyState(msgspec.Struct):
    machines: dict[int, MachineState] = msgspec.field(default_factory=dict)
    # Per mode (MODES order), each machine's learned normal.
    normals: list[list[tuple[int, Normal]]] = msgspec.field(default_factory=list)


@dataclass
class _Memory:
    window: deque[Step]

    def copy(self, window: int) -> _Memory:
        """A copy to change, holding at most `window` readings (a reload may change it)."""
        return _Memory(deque(self.window, maxlen=window))


class EnergyAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "energy"
    settings: EnergySettings

    model: EnergyModel

    def __init__(self, settings: EnergySettings, ctx: AgentContext) -> None:
        super().__init__(settings, ctx)
        self.memory: dict[int, _Memory] = {}
        self.normals: list[Normals] | None = None
        self._saved_normals: list[list[tuple[int, Normal]]] = []

    def live_normals(self) -> list[Normals]:
        if self.normals is None:
            self.normals = self.model.fresh_normals()
            for normals, saved in zip(self.normals, self._saved_normals, strict=False):
                if saved:
                    normals.restore(saved)
        return self.normals

    def load(self) -> EnergyModel:
        return EnergyModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        model, t = self.model, self.settings
        window, n = model.window, len(records)
        mode, speed = readings(
            np.array([MODE_CODE[r.operation_mode] for r in records], np.int64),
            np.array([r.production_speed for r in records]),
            model.scaling,
        )
        power = np.array([r.power_consumption_kw for r in records])
        machines = [r.machine_id for r in records]
        # The normals are changed in place only once the models have answered: a failed
        # batch leaves them, like the windows, as they were.
        live = self.live_normals()
        normals = [_scratch(modal, set(machines)) for modal in live]
        tracked = track(normals, machines, mode, power, speed)
        history = np.empty((n, window, 3))
        rows_of: dict[int, list[int]] = {}
        for i, machine in enumerate(machines):
            rows_of.setdefault(machine, []).append(i)
        # Machine by machine, each machine's records in arrival order, so its second record
        # in a batch sees its first, exactly as when records come one at a time. Windows
        # are cut from one array per machine instead of being copied record by record.
        touched: dict[int, _Memory] = {}
        for machine_id, rows in rows_of.items():
            known = self.memory.get(machine_id)
            memory = known.copy(window) if known is not None else _Memory(deque(maxlen=window))
            touched[machine_id] = memory
            new: list[Step] = [
                (float(z), int(code), float(zs)) for z, code, zs in tracked.steps[rows].tolist()
            ]
            pad = [(0.0, EMPTY, 0.0)] * (window - len(memory.window))
            steps = np.array(pad + list(memory.window) + new, np.float64)
            history[rows] = sliding_window_view(steps, (window, 3))[: len(rows), 0]
            memory.window.extend(new)

        judged = model.judge(history, tracked, mode, power)
        baseline = np.where(np.isnan(judged.baseline_kw), judged.forecast_kw, judged.baseline_kw)
        self.memory.update(touched)
        for modal, learnt in zip(live, normals, strict=True):
            modal.known.update(learnt.known)

        now = datetime.now(UTC)
        out: list[Prediction] = []
        judged_rows = zip(
            records,
            power.tolist(),
            judged.forecast_kw.tolist(),
            baseline.tolist(),
            judged.active_baseline_kw.tolist(),
            judged.score.tolist(),
            strict=True,
        )
        conditioner = self.conditioner
        for r, consumption, expected, usual, active, raw in judged_rows:
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
            machine_id: MachineState(steps=[(z, MODES[code], zs) for z, code, zs in memory.window])
            for machine_id, memory in self.memory.items()
        }
        normals = (
            [n.state() for n in self.normals] if self.normals is not None else self._saved_normals
        )
        return msgspec.to_builtins(EnergyState(machines, normals))

    def import_state(self, state: Any) -> None:
        try:
            restored = msgspec.convert(state, EnergyState)
        except msgspec.ValidationError as exc:
            log.error("%s: per-machine state unreadable, starting empty: %s", self.agent_id, exc)
            restored = EnergyState()
        self.memory = {
            machine_id: _Memory(
                deque(
                    ((z, MODE_CODE[m], zs) for z, m, zs in machine.steps), maxlen=self.model.window
                )
            )
            for machine_id, machine in restored.machines.items()
        }
        self._saved_normals = restored.normals
        self.normals = None


def _scratch(live: Normals, machines: set[int]) -> Normals:
    """`live` holding copies of these machines' normals only, to learn a batch in."""
    scratch = copy.copy(live)
    scratch.known = {
        m: Normal(list(known.loc), list(known.spread), known.n)
        for m in machines
        if (known := live.known.get(m)) is not None
    }
    return scratch
