"""The alarm bench: the demo plant for many simulated hours through the real pipeline,
its alarms scored against the simulator's own labels.

The simulator knows what really happened on every machine at every tick (wear to
failure, power anomalies, network attacks, hazards). The plant is replayed exactly as the
default `serve` replays it (50 machines, one record per machine per second, each record a
simulated minute), but as fast as the pipeline takes it: records carry their replay time,
so every delay and window in the alarm system sees the seconds it would see live. What
comes out is read back from the alarms' audit trail, and:

- precision: of the activations (annunciations) the operator saw, the share that matched
  a labelled fault of their kind on their machine;
- recall: of the labelled faults, the share during which an alarm of the right agent was
  active on that machine;
- pm lead time: simulated hours from the first pm alarm of a machine's life to its failure;
- activations per 10 minutes, chattering alarms and the share of periods in flood, from
  the same KPI code as GET /api/orchestrator/kpis, after the 2-minute warm-up;
- detection delay: replay seconds from the first record of a hazard or an attack to its
  alarm.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import sqlalchemy as sa

from ..agents.registry import AGENTS
from ..errors import FactoryError
from ..settings import ReplaySettings, Settings
from ..sim.synthetic import FactorySimulator, Frame
from ..store import alarm_events, alarms
from .pipeline import at_least, bench_app, scored, settled, wait_for
from .targets import target, verdict

WARM_UP_S = 120.0
# An alarm matches a labelled episode that overlaps it, allowing for the smoothing and the
# on-delay before it (LAG) and the off-delay after the episode ends (LAG as well).
LAG_TICKS = 15
# A pm alarm is right when the machine fails within a week of it: the shortest advice a
# pm WARNING gives is "within 3 days", and the RUL it is read from is an estimate.
PM_HORIZON_H = 168.0
PM_LEAD_TARGET_H = 24.0
# Failures the run saw this long before: one that came sooner could not be foreseen here.
PM_MIN_HISTORY_H = 48.0
HAZARD_DELAY_TARGET_S = 2.0
ATTACK_DELAY_TARGET_S = 5.0
_BATCH_TICKS = 20
# Kinds of audit line that start an active stretch, annunciated or not.
ACTIVE_KINDS = (
    "raised",
    "reactivated",
    "reactivated_shelved",
    "raised_grouped",
    "reactivated_grouped",
    "raised_suppressed",
    "reactivated_suppressed",
)

# What each agent's alarms are about, in the simulator's labels.
_LABEL_OF = {
    "energy_agent": "power",
    "cyber_agent": "cyber",
    "safety_agent": "hazard",
    "pm_agent": "failure",
}


@dataclass(frozen=True)
class Plant:
    """The demo plant as the replay settings make it."""

    seed: int
    machines: int
    step_minutes: float  # simulated minutes per tick
    tick_s: float  # replay seconds per tick

    @classmethod
    def of(cls, r: ReplaySettings) -> Plant:
        # One tick is a record from every machine; at rate 0 (flat out) a second, as live.
        tick_s = r.machines / r.rate if r.rate else 1.0
        return cls(r.seed, r.machines, r.step_minutes, tick_s)

    def ticks(self, hours: float) -> float:
        return hours * 60 / self.step_minutes


@dataclass(frozen=True)
class Episode:
    machine_id: int
    kind: str  # power, cyber, hazard, failure
    start: int  # tick, inclusive
    end: int  # tick, exclusive (a failure: its tick, start == end)
    detail: str = ""


@dataclass
class Interval:
    """One stretch of an alarm being active: from an activation to its clear."""

    source: str
    type: str
    machine_id: int
    start: int
    end: int


def episodes(frame: Frame, n: int) -> list[Episode]:
    """The labelled faults of a run of `n` machines, per machine."""
    c = frame.columns
    out: list[Episode] = []
    flags = {
        "power": c["power_anomaly"].reshape(-1, n),
        "cyber": c["cyber_attack"].reshape(-1, n),
        "hazard": (c["hazard_type"] != "NONE").reshape(-1, n),
    }
    hazard_type = c["hazard_type"].reshape(-1, n)
    for kind, mask in flags.items():
        padded = np.vstack([np.zeros((1, n), bool), mask, np.zeros((1, n), bool)]).astype(np.int8)
        edges = np.diff(padded, axis=0)
        for m in range(n):
            starts = np.flatnonzero(edges[:, m] == 1)
            ends = np.flatnonzero(edges[:, m] == -1)
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                detail = str(hazard_type[s, m]) if kind == "hazard" else ""
                out.append(Episode(m + 1, kind, s, e, detail))
    # A failure is where the remaining life jumps up: the repair began a new life.
    rul = c["rul_hours"].reshape(-1, n)
    for t, m in zip(*np.nonzero(np.diff(rul, axis=0) > 0), strict=True):
        out.append(Episode(int(m) + 1, "failure", int(t) + 1, int(t) + 1))
    return out


def intervals(rows: Iterable[Any], t0: float, last_tick: int, tick_s: float) -> list[Interval]:
    """Active stretches of every alarm, from its activations and clears."""
    out: list[Interval] = []
    open_: dict[int, Interval] = {}
    for r in sorted(rows, key=lambda r: (r.at, r.id)):
        tick = round((r.at - t0) / tick_s)
        if r.kind in ACTIVE_KINDS:
            if r.alarm_id not in open_ and r.machine_id is not None:
                open_[r.alarm_id] = Interval(r.source, r.type, r.machine_id, tick, last_tick + 1)
        elif r.kind == "cleared" and r.alarm_id in open_:
            interval = open_.pop(r.alarm_id)
            interval.end = max(tick, interval.start + 1)
            out.append(interval)
    return out + list(open_.values())


def _matches(interval: Interval, e: Episode, plant: Plant) -> bool:
    if interval.source == "energy_agent" and e.detail == "ELECTRICAL_HAZARD":
        # An electrical fault draws two to three times the power: a true power anomaly.
        return interval.start < e.end + LAG_TICKS and e.start - LAG_TICKS < interval.end
    if e.kind == "failure":
        horizon = plant.ticks(PM_HORIZON_H)
        return interval.start <= e.start <= interval.start + horizon
    if _LABEL_OF.get(interval.source) == "hazard" and interval.type != e.detail:
        return False
    return interval.start < e.end + LAG_TICKS and e.start - LAG_TICKS < interval.end


def score_alarms(
    found: list[Interval],
    labelled: list[Episode],
    activations: list[tuple[str, int | None, int]],
    plant: Plant,
    true_rul: np.ndarray,
) -> dict[str, Any]:
    """Precision per activation, recall per episode, by agent and in all.

    `activations`: (source, machine_id, tick) of every annunciation; no machine for a
    group alarm. `true_rul`: the simulator's remaining life, ticks x machines.
    """
    by_subject: dict[tuple[str, int], list[Episode]] = defaultdict(list)
    for e in labelled:
        by_subject[(e.kind, e.machine_id)].append(e)
        if e.detail == "ELECTRICAL_HAZARD":
            by_subject[("power", e.machine_id)].append(e)
    per_source: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    covering: dict[tuple[str, int], list[Interval]] = defaultdict(list)
    for i in found:
        covering[(i.source, i.machine_id)].append(i)
    for source, machine, tick in activations:
        kind = _LABEL_OF.get(source)
        if kind is None:
            continue
        per_source[source]["activations"] += 1
        if machine is None:
            # A group alarm: right when its kind of fault is on at some machine.
            moment = Interval(source, "", 0, tick, tick + 1)
            per_source[source]["matched"] += any(
                e.kind == kind and _matches(moment, e, plant) for e in labelled
            )
            continue
        if kind == "failure":
            # Right when the machine had at most the horizon left, even if the run ended
            # before the failure came.
            per_source[source]["matched"] += bool(true_rul[tick, machine - 1] <= PM_HORIZON_H)
            continue
        spans = [i for i in covering[(source, machine)] if i.start <= tick < i.end] or [
            Interval(source, "", machine, tick, tick + 1)
        ]
        right = any(_matches(i, e, plant) for i in spans for e in by_subject[(kind, machine)])
        per_source[source]["matched"] += right
    for source, kind in _LABEL_OF.items():
        for e in (e for e in labelled if e.kind == kind):
            per_source[source]["episodes"] += 1
            hit = any(
                (i.start <= e.start if kind == "failure" else True) and _matches(i, e, plant)
                for i in covering[(source, e.machine_id)]
            )
            per_source[source]["recalled"] += hit
    totals = {
        k: sum(v[k] for v in per_source.values())
        for k in ("activations", "matched", "episodes", "recalled")
    }
    return {
        "by_agent": {
            s: {
                **v,
                "precision": v["matched"] / v["activations"] if v["activations"] else None,
                "recall": v["recalled"] / v["episodes"] if v["episodes"] else None,
            }
            for s, v in sorted(per_source.items())
        },
        **totals,
        "precision": totals["matched"] / totals["activations"] if totals["activations"] else 1.0,
        "recall": totals["recalled"] / totals["episodes"] if totals["episodes"] else 1.0,
    }


def pm_lead_times(found: list[Interval], labelled: list[Episode], plant: Plant) -> list[float]:
    """Simulated hours from the first pm alarm of each foreseeable failure's life to the
    failure (0 when no alarm came before it)."""
    failures = sorted((e for e in labelled if e.kind == "failure"), key=lambda e: e.start)
    per_tick_h = plant.step_minutes / 60
    previous: dict[int, int] = {}
    leads: list[float] = []
    pm = sorted((i for i in found if i.source == "pm_agent"), key=lambda i: i.start)
    starts: dict[int, list[int]] = defaultdict(list)
    for i in pm:
        starts[i.machine_id].append(i.start)
    for e in failures:
        life_start = previous.get(e.machine_id, 0)
        previous[e.machine_id] = e.start
        if (e.start - life_start) * per_tick_h < PM_MIN_HISTORY_H:
            continue
        ticks = starts[e.machine_id]
        first = bisect_left(ticks, life_start)
        if first < len(ticks) and ticks[first] <= e.start:
            leads.append((e.start - ticks[first]) * per_tick_h)
        else:
            leads.append(0.0)
    return leads


def detection_delays(found: list[Interval], labelled: list[Episode], tick_s: float,
                     source: str, kind: str, only: str = "") -> list[float]:  # fmt: skip
    """Replay seconds from an episode's first record to its alarm being active, for the
    episodes that got one and began with no alarm of theirs already active."""
    out = []
    for e in labelled:
        if e.kind != kind or (only and e.detail != only):
            continue
        mine = [i for i in found if i.source == source and i.machine_id == e.machine_id]
        if any(i.start < e.start < i.end for i in mine):
            continue
        later = [i.start for i in mine if e.start <= i.start < e.end + LAG_TICKS]
        if later:
            out.append((min(later) - e.start) * tick_s)
    return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _replay(settings: Settings, hours: float) -> dict[str, Any]:
    plant = Plant.of(settings.replay)
    sim = FactorySimulator(
        seed=plant.seed, machines=plant.machines, step_minutes=plant.step_minutes
    )
    ticks = int(plant.ticks(hours))
    n = plant.machines
    frame = sim.run(ticks)
    rows = frame.records()
    # Replay time: one tick a second from a round start, as `serve` stamps records live.
    t0 = float(int(time.time()) // 3600 * 3600)
    stamps = np.datetime_as_string(
        (np.repeat(t0 + np.arange(ticks) * plant.tick_s, n) * 1000).astype("datetime64[ms]"),
        unit="s",
        timezone="UTC",
    ).tolist()
    for row, stamp in zip(rows, stamps, strict=True):
        row["timestamp"] = stamp
    began = time.perf_counter()
    per_batch = _BATCH_TICKS * n
    async with bench_app(settings) as c:
        for start in range(0, len(rows), per_batch):
            await c.intake.accept(rows[start : start + per_batch], "bench:alarms")
            # Keep the agents' queues short: the hub would drop nothing, but a deep queue
            # measures memory, not alarms.
            await wait_for(at_least(lambda: scored(c), start), "the agents to keep up")
        await wait_for(lambda: scored(c) >= len(rows), "the agents to score every record")
        await wait_for(lambda: settled(c), "alerts to settle")
        elapsed = time.perf_counter() - began
        until = t0 + ticks * plant.tick_s
        kpis = await c.orchestrator.kpis(t0 + WARM_UP_S, until)

        def read(conn: Any) -> list[Any]:
            return list(
                conn.execute(
                    sa.select(
                        alarm_events.c.id,
                        alarm_events.c.alarm_id,
                        alarm_events.c.at,
                        alarm_events.c.kind,
                        alarms.c.source,
                        alarms.c.type,
                        alarms.c.machine_id,
                    ).join(alarms, alarms.c.id == alarm_events.c.alarm_id)
                )
            )

        trail = await c.store.read(read)
        errors = sum(a.counters["errors"] for a in c.agents) + c.orchestrator.counters["errors"]
    if errors:
        raise FactoryError(f"bench: {errors} records or alerts failed on the way")
    labelled = episodes(frame, n)
    found = intervals(trail, t0, ticks - 1, plant.tick_s)
    activations = [
        (r.source, r.machine_id, round((r.at - t0) / plant.tick_s))
        for r in trail
        if r.kind in ("raised", "reactivated")
    ]
    true_rul = frame.columns["rul_hours"].reshape(-1, n)
    quality = score_alarms(found, labelled, activations, plant, true_rul)
    leads = pm_lead_times(found, labelled, plant)
    fire = detection_delays(found, labelled, plant.tick_s, "safety_agent", "hazard", "FIRE_RISK")
    attack = detection_delays(found, labelled, plant.tick_s, "cyber_agent", "cyber")
    return {
        "simulated_hours": hours,
        "machines": n,
        "step_minutes": plant.step_minutes,
        "tick_s": plant.tick_s,
        "records": len(rows),
        "seconds": elapsed,
        "per_s": len(rows) / elapsed,
        "labelled": {
            k: sum(e.kind == k for e in labelled) for k in ("power", "cyber", "hazard", "failure")
        },
        "quality": quality,
        "pm_lead_h": {
            "failures": len(leads),
            "p10": _percentile(leads, 10),
            "median": _percentile(leads, 50),
            "share_at_least_target": (
                sum(v >= PM_LEAD_TARGET_H for v in leads) / len(leads) if leads else 1.0
            ),
        },
        "fire_delay_s": {
            "episodes": len(fire),
            "p90": _percentile(fire, 90),
            "max": max(fire, default=0.0),
        },
        "attack_delay_s": {
            "episodes": len(attack),
            "p90": _percentile(attack, 90),
            "max": max(attack, default=0.0),
        },
        "kpis": kpis,
    }  # fmt: skip


def unconditioned(settings: Settings) -> Settings:
    """The baseline: each record's own level straight to the orchestrator (no smoothing,
    deadband or delays), chattering only marked, no common-cause groups; how alarms were
    raised before conditioning."""
    replace = msgspec.structs.replace
    agents = settings.agents
    raw = {
        e.slug: replace(e.settings_of(settings), smoothing_records=1, deadband=0.0)
        for e in AGENTS
        if e.reads_telemetry
    }
    bare = {
        e.slug: replace(raw.get(e.slug, e.settings_of(settings)), on_delay_s=0.0,
                        off_delay_s=0.0, type_delays={})
        for e in AGENTS
    }  # fmt: skip
    o = replace(settings.orchestrator, chatter_policy="mark", group_min_alarms=0)
    return replace(settings, agents=replace(agents, **bare), orchestrator=o)


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    k, q = r["kpis"], r["quality"]
    return {
        "activations_per_10min": k["activations_per_period"]["average"],
        "peak_per_10min": k["activations_per_period"]["peak"],
        "periods_in_flood_pct": k["flood"]["pct_of_periods"],
        "chattering": k["chattering"]["count"],
        "precision": q["precision"],
        "recall": q["recall"],
        "pm_lead_24h_share": r["pm_lead_h"]["share_at_least_target"],
    }


def run_alarms_bench(settings: Settings, quick: bool) -> dict[str, Any]:
    hours = 24.0 if quick else 168.0
    r = asyncio.run(_replay(settings, hours))
    # The same plant, the same models, without the conditioning: the trivial baseline.
    baseline = asyncio.run(_replay(unconditioned(settings), hours))
    k, q = r["kpis"], r["quality"]
    return {
        **r,
        "baseline": _summary(baseline),
        "targets": {
            "activations_per_10min": target(
                k["activations_per_period"]["average"], 10.0, at_least=False
            ),
            "chattering_alarms": target(k["chattering"]["count"], 0, at_least=False),
            "periods_in_flood_pct": target(k["flood"]["pct_of_periods"], 0.0, at_least=False),
            "precision": target(q["precision"], 0.9, at_least=True),
            "recall": target(q["recall"], 0.9, at_least=True),
            "pm_lead_24h_share": target(r["pm_lead_h"]["share_at_least_target"], 0.9, True),
            "fire_alarm_p90_s": target(
                r["fire_delay_s"]["p90"] if r["fire_delay_s"]["episodes"] else 0.0,
                HAZARD_DELAY_TARGET_S,
                at_least=False,
            ),
            "attack_alarm_p90_s": target(
                r["attack_delay_s"]["p90"] if r["attack_delay_s"]["episodes"] else 0.0,
                ATTACK_DELAY_TARGET_S,
                at_least=False,
            ),
        },
    }


def _share(v: float | None) -> str:
    return "   -" if v is None else f"{v:4.0%}"


def alarms_report(r: dict[str, Any]) -> str:
    k, q, t = r["kpis"], r["quality"], r["targets"]
    rate = k["activations_per_period"]
    lines = [
        f"alarms ({r['simulated_hours']:.0f} simulated hours of {r['machines']} machines, "
        f"{r['records']:,} records in {r['seconds']:.0f} s; a record from each machine every "
        f"{r['tick_s']:g} s of replay time, {r['step_minutes'] * 60:g} s of plant time)",
        f"  labelled faults   {r['labelled']}",
        f"  activations       {k['activations']} ({k['new']} new, {k['reactivated']} returned) "
        f"after the {WARM_UP_S:.0f} s warm-up",
        f"  per 10 min        average {rate['average']:.1f}, peak {rate['peak']}; "
        f"{k['flood']['pct_of_periods']:.1f}% of periods in flood; "
        f"{k['chattering']['count']} chattering",
        "  agent             activations  precision   episodes  recall",
    ]
    for source, v in q["by_agent"].items():
        lines.append(
            f"    {source:<15} {v['activations']:>11}  {_share(v['precision']):>9}  "
            f"{v['episodes']:>9}  {_share(v['recall']):>6}"
        )
    lead = r["pm_lead_h"]
    lines += [
        f"    {'all':<15} {q['activations']:>11}  {_share(q['precision']):>9}  "
        f"{q['episodes']:>9}  {_share(q['recall']):>6}",
        f"  pm lead time      median {lead['median']:.0f} h, p10 {lead['p10']:.0f} h; "
        f"{lead['share_at_least_target']:.0%} of {lead['failures']} failures alarmed "
        f">= {PM_LEAD_TARGET_H:.0f} h ahead",
        f"  detection         fire p90 {r['fire_delay_s']['p90']:.0f} s "
        f"({r['fire_delay_s']['episodes']} episodes), attack p90 "
        f"{r['attack_delay_s']['p90']:.0f} s ({r['attack_delay_s']['episodes']} episodes)",
    ]
    b, mine = r["baseline"], _summary(r)
    lines.append(
        "  against the baseline (the same run without smoothing, deadbands, delays, groups):"
    )
    for name in b:
        lines.append(f"    {name:<24} {_figure(mine[name]):>8}   baseline {_figure(b[name]):>8}")
    lines.append(
        "  targets           " + "; ".join(f"{name} {verdict(v)}" for name, v in t.items())
    )
    return "\n".join(lines)


def _figure(v: float) -> str:
    return (
        f"{v:.2f}"
        if isinstance(v, float) and v < 10
        else f"{v:,.1f}"
        if isinstance(v, float)
        else str(v)
    )
