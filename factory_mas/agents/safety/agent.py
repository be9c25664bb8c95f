"""safety_agent: hazard score, hazard type and whether to evacuate, for every record."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from ...data.schema import columns_of
from ...messages import Alert, Prediction, TelemetryRecord
from ...settings import SafetySettings
from ..base import BaseAgent
from . import logic
from .model import AGENT_ID, HAZARDS, SafetyModel, features


class SafetyAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "safety"
    settings: SafetySettings

    model: SafetyModel

    def load(self) -> SafetyModel:
        return SafetyModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        probabilities = self.model.predict(features(columns_of(records))).tolist()
        t = self.settings
        now = datetime.now(UTC)
        out = []
        for record, (p_none, *p_hazards) in zip(records, probabilities, strict=True):
            score = logic.hazard_score(p_none)
            kind = logic.hazard_type_for(score, dict(zip(HAZARDS, p_hazards, strict=True)), t)
            level = logic.level_for(score, kind, t)
            out.append(
                self.predicted(
                    record,
                    now,
                    level,
                    {
                        "hazard_score": round(score, 4),
                        "hazard_type": kind,
                        "safety_score": logic.safety_score(score),
                        "evacuation_required": logic.evacuation_required(level),
                    },
                )
            )
        return out

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
