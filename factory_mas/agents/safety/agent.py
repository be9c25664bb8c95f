"""safety_agent: hazard score, hazard type and whether to evacuate, for every record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...ingest.schema import columns_of
from ...messages import Alert, Prediction, TelemetryRecord
from ...settings import SafetySettings
from ..base import BaseAgent
from . import logic
from .model import AGENT_ID, CLASSES, HAZARDS, SafetyModel
from .result import SafetyResult


class SafetyAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "safety"
    settings: SafetySettings

    model: SafetyModel

    def load(self) -> SafetyModel:
        return SafetyModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        t, memory = self.settings, self.conditioner
        probabilities, exceeded = self.model.assess(columns_of(records), t)
        now = datetime.now(UTC)
        out = []
        for record, classes, beyond in zip(records, probabilities.tolist(), exceeded, strict=True):
            machine = record.machine_id
            raw = logic.hazard_score(classes[0])
            # Every class smoothed alike, so the score and the hazard named agree.
            p_none, *p_hazards = (
                memory.smooth(machine, name, p, t.smoothing_records)
                for name, p in zip(CLASSES, classes, strict=True)
            )
            score = logic.hazard_score(p_none)
            kind = logic.hazard_type_for(score, dict(zip(HAZARDS, p_hazards, strict=True)), t)
            if beyond is not None:
                # A measured reading beyond a limit outranks the classifier's guess.
                kind = beyond[0]
                score = logic.score_for_limit(score, t)
            level = logic.level_for(score, kind, t, memory.previous_level(machine))
            memory.level(machine, level, (record.timestamp or now).timestamp())
            out.append(
                self.predicted(
                    record,
                    now,
                    level,
                    SafetyResult(
                        hazard_score=round(score, 4),
                        hazard_score_raw=round(raw, 4),
                        hazard_type=kind,
                        safety_score=logic.safety_score(score),
                        evacuation_required=logic.evacuation_required(level),
                        limit="" if beyond is None else beyond[1],
                    ),
                )
            )
        return out

    def export_state(self) -> Any:
        """Each machine's learned normal, so a restart does not start it from the prior."""
        return msgspec.to_builtins(self.model.normals.state()) if self.model else None

    def import_state(self, state: Any) -> None:
        if self.model is not None and state is not None:
            self.model.normals.restore(state)

    def urgent(self, prediction: Prediction) -> bool:
        """A physical limit exceeded, or a hazard from the emergency score up, is told at
        its first reading; a lesser one when the on-delay confirms it (the next reading):
        one reading a few spreads out is sensor noise far more often than a hazard."""
        r = prediction.result
        return bool(r["limit"]) or r["hazard_score"] >= self.settings.hazard_score_emergency

    def make_alert(self, prediction: Prediction) -> Alert:
        r = prediction.result
        return Alert(
            source=self.agent_id,
            type=r["hazard_type"],
            level=prediction.level,
            machine_id=prediction.machine_id,
            value=r["hazard_score"],
            details=logic.alert_details(prediction.machine_id, prediction.level, r),
        )
