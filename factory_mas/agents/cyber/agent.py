"""cyber_agent: an anomaly score, a threat level and its reasons for every record."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from ...ingest.schema import columns_of
from ...messages import Alert, Prediction, TelemetryRecord
from ...ml.normal import Normal, Normals
from ...settings import CyberSettings
from ..base import AgentContext, BaseAgent
from . import logic
from .model import AGENT_ID, FEATURES, CyberModel, LastReadings, Reading, features
from .result import CyberResult

log = logging.getLogger(__name__)


class CyberState(msgspec.Struct):
    """What a restart must not forget: each machine's last reading, anomaly run and
    learned normal."""

    readings: list[tuple[int, float, float, float, float]] = msgspec.field(default_factory=list)
    runs: list[tuple[int, int]] = msgspec.field(default_factory=list)
    normals: list[tuple[int, Normal]] = msgspec.field(default_factory=list)


class CyberAgent(BaseAgent):
    agent_id = AGENT_ID
    slug = "cyber"
    settings: CyberSettings

    model: CyberModel

    def __init__(self, settings: CyberSettings, ctx: AgentContext) -> None:
        super().__init__(settings, ctx)
        self.readings = LastReadings()
        self.runs: dict[int, int] = {}
        # Each machine's normal, learnt on from the model's; kept across a model reload,
        # since a machine's traffic does not change with the model.
        self.normals: Normals | None = None
        self._saved_normals: list[tuple[int, Normal]] = []

    def live_normals(self) -> Normals:
        if self.normals is None:
            self.normals = self.model.fresh_normals()
            if self._saved_normals:
                self.normals.restore(self._saved_normals)
        return self.normals

    def load(self) -> CyberModel:
        return CyberModel.load(self.ctx.models_dir)

    def score(self, records: Sequence[TelemetryRecord]) -> list[Prediction]:
        now = datetime.now(UTC)
        stamps = [(r.timestamp or now).timestamp() for r in records]
        x = features(self.readings.add_deltas(columns_of(records), stamps))
        scored = self.model.score([r.machine_id for r in records], x, self.live_normals())
        t = self.settings
        out: list[Prediction] = []
        columns = (scored.scores.tolist(), x.tolist(), scored.zscores.tolist())
        memory = self.conditioner
        for record, raw, values, z in zip(records, *columns, strict=True):
            machine = record.machine_id
            # Row by row, so a batch leaves each machine's run as its records one by one would.
            score = memory.smooth(machine, "anomaly", raw, t.smoothing_records)
            is_anomaly = logic.is_anomaly(score, self.runs.get(machine, 0) > 0, t)
            run = logic.next_run(self.runs.get(record.machine_id, 0), is_anomaly)
            if run:
                self.runs[record.machine_id] = run
            else:
                self.runs.pop(record.machine_id, None)
            threat = logic.threat_level(run, t)
            level = memory.level(machine, logic.level_for(threat, t), stamps[len(out)])
            out.append(
                self.predicted(
                    record,
                    now,
                    level,
                    CyberResult(
                        anomaly_score=round(score, 4),
                        anomaly_score_raw=round(raw, 4),
                        is_anomaly=is_anomaly,
                        threat_level=threat,
                        consecutive_anomalies=run,
                        indicators=logic.indicators(FEATURES, values, z, t.indicator_zscore),
                    ),
                )
            )
        return out

    def make_alert(self, prediction: Prediction) -> Alert:
        r = prediction.result
        return Alert(
            source=self.agent_id,
            type=logic.alert_type(r["indicators"]),
            level=prediction.level,
            machine_id=prediction.machine_id,
            value=r["anomaly_score"],
            details=logic.alert_details(prediction.machine_id, r),
        )

    def export_state(self) -> Any:
        return msgspec.to_builtins(
            CyberState(
                readings=[(m, *reading) for m, reading in self.readings.known.items()],
                runs=list(self.runs.items()),
                normals=self.normals.state() if self.normals is not None else self._saved_normals,
            )
        )

    def import_state(self, state: Any) -> None:
        try:
            restored = msgspec.convert(state, CyberState)
        except msgspec.ValidationError as exc:
            log.error("%s: per-machine state unreadable, starting empty: %s", self.agent_id, exc)
            restored = CyberState()
        known: dict[int, Reading] = {
            m: (ts, latency, loss, errors) for m, ts, latency, loss, errors in restored.readings
        }
        self.readings = LastReadings(known)
        self.runs = dict(restored.runs)
        self._saved_normals = restored.normals
        self.normals = None
