"""The numbers of a shift: shift boundaries, the store's record of alarms, decisions and
texts, and a running tally of the predictions scored. Computed here, never by a model."""

from __future__ import annotations

import time
import zoneinfo
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..agents.energy.agent import EnergyAgent
from ..agents.energy.result import EnergyResult
from ..agents.ppe.agent import PpeAgent
from ..agents.ppe.result import PpeResult
from ..levels import RANK, Level
from ..messages import Decision, MachineCount, Prediction, ShiftFacts
from ..store import alarm_events, alarms, decisions, sms_outbox

# A machine silent for longer than this is not assumed to have drawn power all along.
MAX_READING_GAP_H = 10 / 60
TOP = 5


# -- shift boundaries ------------------------------------------------------------------


def shift_starts_on(day: datetime, starts: list[str], tz: zoneinfo.ZoneInfo) -> list[datetime]:
    local = day.astimezone(tz).date()
    out = []
    for hhmm in sorted(starts):
        hour, minute = map(int, hhmm.split(":"))
        out.append(datetime(local.year, local.month, local.day, hour, minute, tzinfo=tz))
    return out


def shift_of(at: datetime, starts: list[str], timezone: str) -> tuple[datetime, datetime]:
    """The shift `at` falls in: (start, end), aware datetimes in the shift's zone."""
    tz = zoneinfo.ZoneInfo(timezone)
    candidates = [
        s for offset in (-1, 0, 1) for s in shift_starts_on(at + timedelta(days=offset), starts, tz)
    ]
    # By timestamp: aware datetimes of one zone compare by wall clock, not by instant.
    start = max((s for s in candidates if s.timestamp() <= at.timestamp()), key=_instant)
    end = min((s for s in candidates if s.timestamp() > start.timestamp()), key=_instant)
    return start, end


def _instant(moment: datetime) -> float:
    return moment.timestamp()


def shifts_ended(
    after: datetime, until: datetime, starts: list[str], timezone: str
) -> list[tuple[datetime, datetime]]:
    """Every shift whose end falls in (after, until], oldest first."""
    out = []
    start, end = shift_of(after, starts, timezone)
    while end.timestamp() <= until.timestamp():
        out.append((start, end))
        start, end = end, shift_of(end, starts, timezone)[1]
    return out


# -- the running tally of predictions --------------------------------------------------


class Tally(msgspec.Struct, kw_only=True):
    """What the prediction stream said during one shift (kept across restarts)."""

    predictions_by_agent: dict[str, int] = msgspec.field(default_factory=dict)
    predictions_by_level: dict[str, int] = msgspec.field(default_factory=dict)
    ppe_frames: int = 0
    ppe_compliant: int = 0
    energy_kwh: float = 0.0
    energy_anomalies: int = 0
    # machine -> (record time, kW) of its last reading, to integrate power into energy
    last_power: dict[int, tuple[float, float]] = msgspec.field(default_factory=dict)

    def add(self, predictions: Iterable[Prediction]) -> None:
        # Counted with Counter's C loop: every prediction of every agent passes here.
        predictions = list(predictions)
        for counts, values in (
            (self.predictions_by_agent, Counter(p.agent_id for p in predictions)),
            (self.predictions_by_level, Counter(p.level for p in predictions)),
        ):
            for key, n in values.items():
                counts[key] = counts.get(key, 0) + n
        for p in predictions:
            if p.agent_id == PpeAgent.agent_id:
                self.ppe_frames += 1
                frame = PpeResult.of(p)
                self.ppe_compliant += frame is not None and frame.compliant
            elif p.agent_id == EnergyAgent.agent_id and p.machine_id is not None:
                self._add_energy(p, p.machine_id)

    def _add_energy(self, p: Prediction, machine_id: int) -> None:
        r = EnergyResult.of(p)
        if r is None:
            return
        self.energy_anomalies += r.is_anomaly
        kw, at = r.consumption_kw, p.record_ts.timestamp()
        last = self.last_power.get(machine_id)
        if last is not None and 0 < at - last[0] <= MAX_READING_GAP_H * 3600:
            # Trapezoids between consecutive readings of one machine.
            self.energy_kwh += (kw + last[1]) / 2 * (at - last[0]) / 3600
        self.last_power[machine_id] = (at, kw)


@dataclass
class Tallies:
    """One tally per shift start (epoch seconds) that has not been summarised yet."""

    shifts: dict[float, Tally] = field(default_factory=dict)

    def for_shift(self, start: float) -> Tally:
        return self.shifts.setdefault(start, Tally())

    def take(self, start: float) -> Tally:
        return self.shifts.pop(start, None) or Tally()


_tallies_codec = (msgspec.json.Encoder(), msgspec.json.Decoder(dict[float, Tally]))


def encode_tallies(t: Tallies) -> bytes:
    return _tallies_codec[0].encode(t.shifts)


def decode_tallies(data: bytes) -> Tallies:
    return Tallies(_tallies_codec[1].decode(data))


# -- from the store --------------------------------------------------------------------

_decision = msgspec.json.Decoder(Decision)


def gather(conn: Connection, start: datetime, end: datetime, tally: Tally) -> ShiftFacts:
    """The facts of the shift [start, end): the store's alarms, decisions and texts, and
    the predictions tally."""
    a, b = start.timestamp(), end.timestamp()
    facts = ShiftFacts(shift_start=start.astimezone(UTC), shift_end=end.astimezone(UTC))

    # Alarms raised or raised again in the shift, each once.
    raised_ids = [
        r.alarm_id
        for r in conn.execute(
            sa.select(alarm_events.c.alarm_id)
            .where(
                alarm_events.c.at >= a,
                alarm_events.c.at < b,
                alarm_events.c.kind.in_(("raised", "reactivated")),
            )
            .distinct()
        )
    ]
    rows = (
        conn.execute(
            sa.select(
                alarms.c.id,
                alarms.c.source,
                alarms.c.type,
                alarms.c.machine_id,
                alarms.c.highest_level,
                alarms.c.state,
                alarms.c.open,
                alarms.c.data,
            ).where(alarms.c.id.in_(raised_ids))
        ).all()
        if raised_ids
        else []
    )
    by_source: Counter[str] = Counter()
    by_level: Counter[Level] = Counter()
    by_machine: dict[int, list[Level]] = {}
    for r in rows:
        by_source[r.source] += 1
        by_level[r.highest_level] += 1
        if r.machine_id is not None:
            by_machine.setdefault(r.machine_id, []).append(r.highest_level)
    facts.alarms_raised = len(rows)
    facts.alarms_by_source = dict(by_source.most_common())
    facts.alarms_by_level = {lv: by_level[lv] for lv in sorted(by_level, key=RANK.__getitem__)}
    facts.top_machines = [
        MachineCount(
            machine_id=m, alarms=len(levels), highest_level=max(levels, key=RANK.__getitem__)
        )
        for m, levels in sorted(
            by_machine.items(),
            key=lambda kv: (-len(kv[1]), -max(RANK[lv] for lv in kv[1]), kv[0]),
        )[:TOP]
    ]
    facts.alarms_open = sum(bool(r.open) for r in rows)
    facts.alarms_acknowledged = sum(r.state.endswith("_ACK") for r in rows)
    facts.alarms_unacknowledged = sum(r.state.endswith("_UNACK") for r in rows)
    worst = sorted(rows, key=lambda r: (-RANK[r.highest_level], r.id))[:TOP]
    for r in worst:
        count = msgspec.json.decode(r.data).get("count", 1)
        where = f" on machine {r.machine_id}" if r.machine_id is not None else ""
        times = "once" if count == 1 else f"{count} times"
        facts.top_issues.append(f"{r.source} {r.type}{where} ({r.highest_level}, {times})")

    actions: Counter[str] = Counter()
    for r in conn.execute(
        sa.select(decisions.c.data).where(decisions.c.at >= a, decisions.c.at < b)
    ):
        actions[_decision.decode(r.data).plan.action] += 1
    facts.decisions = sum(actions.values())
    facts.decisions_by_action = dict(actions.most_common())

    facts.sms_by_status = {
        r.status: r.n
        for r in conn.execute(
            sa.select(sms_outbox.c.status, sa.func.count().label("n"))
            .where(sms_outbox.c.created_at >= a, sms_outbox.c.created_at < b)
            .group_by(sms_outbox.c.status)
        )
    }

    facts.predictions_by_agent = dict(tally.predictions_by_agent)
    facts.predictions_by_level = dict(tally.predictions_by_level)
    facts.ppe_frames = tally.ppe_frames
    facts.ppe_compliance_rate = tally.ppe_compliant / tally.ppe_frames if tally.ppe_frames else None
    facts.energy_kwh = round(tally.energy_kwh, 3)
    facts.energy_anomalies = tally.energy_anomalies
    return facts


def installed_at(conn: Connection) -> float:
    """When this database was created: no shift before it is summarised."""
    from ..store import schema_version

    first = conn.execute(sa.select(sa.func.min(schema_version.c.applied_at))).scalar()
    return float(first) if first else time.time()
