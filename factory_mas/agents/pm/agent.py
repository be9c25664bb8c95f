"""pm_agent: failure risk and remaining useful life for every record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ...ingest.schema import columns_of
from ...messages import Alert, Prediction, TelemetryRecord
from ...settings import PmSettings
from ..base import BaseAgent
from . import logic
from .model import AGENT_ID, PmModel, features
from .result import PmResult


class PmAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "pm"
    settings: PmSettings

    model: PmModel

    def load(self) -> PmModel:
        return PmModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        probabilities, ruls = self.model.predict(features(columns_of(records)))
        t, memory = self.settings, self.conditioner
        now = datetime.now(UTC)
        out = []
        rows = zip(records, probabilities.tolist(), ruls.tolist(), strict=True)
        for record, raw_p, raw_rul in rows:
            machine = record.machine_id
            at = (record.timestamp or now).timestamp()
            in_maintenance = record.operation_mode == "Maintenance"
            if in_maintenance:
                # A repair starts a new life: the old one's trend says nothing about it.
                memory.forget(machine)
                p, rul = raw_p, raw_rul
            else:
                p = memory.smooth(machine, "p", raw_p, t.smoothing_records)
                rul = memory.trend(machine, "rul", raw_rul, t.smoothing_records, at)
            previous = memory.previous_level(machine)
            level = memory.level(machine, logic.level_for(p, rul, in_maintenance, t, previous), at)
            out.append(
                self.predicted(
                    record,
                    now,
                    level,
                    PmResult(
                        failure_probability=round(p, 4),
                        rul_hours=round(rul, 1),
                        failure_probability_raw=round(raw_p, 4),
                        rul_hours_raw=round(raw_rul, 1),
                        health_score=logic.health_score(p, rul, t),
                        confidence=logic.confidence(p),
                        action=logic.action_for(level, in_maintenance),
                    ),
                )
            )
        return out

    def make_alert(self, prediction: Prediction) -> Alert:
        r = prediction.result
        kind = logic.alert_type(r["failure_probability"], self.settings)
        return Alert(
            source=self.agent_id,
            type=kind,
            level=prediction.level,
            machine_id=prediction.machine_id,
            value=r["failure_probability"] if kind == "IMMINENT_FAILURE" else r["rul_hours"],
            details=(
                f"Machine {prediction.machine_id}: failure probability "
                f"{r['failure_probability']:.0%}, remaining useful life {r['rul_hours']:.0f} h. "
                f"{r['action']}."
            ),
        )
