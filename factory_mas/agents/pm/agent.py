"""pm_agent: failure risk and remaining useful life for every record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...ingest.schema import columns_of
from ...messages import Alert, Prediction, TelemetryRecord
from ...ml.normal import Normal, Normals
from ...settings import PmSettings
from ..base import AgentContext, BaseAgent
from . import logic
from .model import AGENT_ID, PmModel
from .result import PmResult

log = logging.getLogger(__name__)
# A checkpoint's normals: ((machine id, mode code), normal) pairs.
SavedNormals = list[tuple[tuple[int, int], Normal]]


class PmAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "pm"
    settings: PmSettings

    model: PmModel

    def __init__(self, settings: PmSettings, ctx: AgentContext) -> None:
        super().__init__(settings, ctx)
        # Each machine's healthy normal as served, started from the model's.
        self.normals: Normals | None = None
        self._normals_version = ""
        self._saved_normals: SavedNormals = []

    def live_normals(self) -> Normals:
        """The normals to score with: after a restart, the checkpoint's over the model's;
        after a reload, the new model's (a plant's model learnt them from the machines'
        history) and, for machines it does not know, those learnt while serving."""
        if self.normals is None:
            self.normals = self.model.fresh_normals()
            if self._saved_normals:
                self.normals.restore(self._saved_normals)
        elif self._normals_version != self.model.version:
            served = self.normals.known
            self.normals = self.model.fresh_normals()
            for key, normal in served.items():
                self.normals.known.setdefault(key, normal)
        self._normals_version = self.model.version
        return self.normals

    def load(self) -> PmModel:
        return PmModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        probabilities, ruls, _ = self.model.assess(columns_of(records), self.live_normals())
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

    def export_state(self) -> Any:
        """Each machine's learned normal, so a restart does not start it from the prior."""
        normals = self.normals.state() if self.normals is not None else self._saved_normals
        return msgspec.to_builtins(normals)

    def import_state(self, state: Any) -> None:
        try:
            self._saved_normals = msgspec.convert(state or [], SavedNormals)
        except msgspec.ValidationError as exc:
            log.error("%s: saved normals unreadable, starting from the model's: %s", AGENT_ID, exc)
            self._saved_normals = []
        self.normals = None

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
