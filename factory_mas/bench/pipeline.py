"""The pipeline bench: the scoring ceiling, the whole path at full speed, and latency at a
fixed load, all on the same synthetic data in one run.

- The inference limit is what the agents' `score()` (features, models, rules) reaches on
  records that are already decoded and validated, the four telemetry agents side by side
  on the shared pool while PPE scores camera frames beside them: no hub, no store, no I/O.
  Nothing built on top can go faster on this machine.
- End to end, the same records arrive as JSON bytes and take the path that HTTP ingest and
  the MQTT bridge take: decoded, validated, journaled, published on the hub, scored by
  every agent, alerts evaluated, alarms raised and committed, history stored. The figure
  is its sustained rate and its ratio to the limit. The same run again with the telemetry
  historian off says what storing every raw record costs (the ratio of the two rates).
- Latency offers 1,000 records/s on a fixed schedule and times each record from its
  arrival to its predictions on the hub, and to the alarm it raised.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from .. import topics
from ..agents.base import BaseAgent
from ..errors import FactoryError
from ..hub import Overflow
from ..ml.inference import LatencyWindow
from ..settings import Settings
from ..sim.synthetic import FactorySimulator
from .inference import _loaded_agents, camera_frames
from .targets import target, verdict

E2E_TARGET_PER_S = 10_000
E2E_RATIO_TARGET = 0.7
# End to end with the telemetry historian on, against off: storing every raw record may
# cost at most a fifth of the rate.
HISTORIAN_RATIO_TARGET = 0.8
ALARM_P99_TARGET_MS = 50.0
OFFERED_PER_S = 1_000
PPE_FPS = 20
_JSON_BATCH = 1_000  # records per injected JSON payload, as a gateway or HTTP client batches
_TICK_S = 0.01  # the fixed-load injector's step: 10 records every 10 ms at 1,000/s
_TIMEOUT_S = 300.0
_CAMERAS = 2
# Machines that exist only to raise one alarm each, far above the simulated plant's ids.
_TRIGGER_BASE = 900_000


def raw_records(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """Simulated telemetry as a gateway sends it (CSV-named fields, ISO timestamps)."""
    return FactorySimulator(seed=seed, machines=50).run(max(1, -(-n // 50))).records()[:n]


def json_batches(rows: list[dict[str, Any]], per_batch: int = _JSON_BATCH) -> list[bytes]:
    encode = msgspec.json.encode
    return [encode(rows[i : i + per_batch]) for i in range(0, len(rows), per_batch)]


# -- the inference limit -------------------------------------------------------------------


def inference_limit(settings: Settings, records: int, budget_s: float) -> dict[str, Any]:
    """The telemetry agents scoring decoded batches side by side on the pool, with PPE
    scoring PPE_FPS decoded frames a second beside them."""
    from ..agents.ppe.frames import frames_of_payload
    from ..ingest.schema import parse_many

    agents = asyncio.run(_loaded_agents(settings))
    telemetry = [a for a in agents if a.input_filter == topics.TELEMETRY_FILTER]
    ppe = next((a for a in agents if a.agent_id == "ppe_agent"), None)
    decoded, bad = parse_many(raw_records(records), "bench")
    if bad:
        raise FactoryError(f"bench: {len(bad)} simulated records failed validation")
    frames = []
    if ppe is not None:
        limits = ppe.limits  # type: ignore[attr-defined]
        frames = [f for jpeg in camera_frames(16) for f in frames_of_payload(jpeg, "cam", limits)]
    batch = settings.inference.max_batch
    stop = threading.Event()
    frames_scored = 0

    with ThreadPoolExecutor(settings.inference.threads) as pool:

        def camera(agent: BaseAgent) -> None:
            # Frames arrive one at a time from each camera: PPE_FPS single-frame calls.
            nonlocal frames_scored
            next_at = time.perf_counter()
            while not stop.is_set():
                pool.submit(agent.score, [frames[frames_scored % len(frames)]]).result()
                frames_scored += 1
                next_at += 1 / PPE_FPS
                stop.wait(max(0.0, next_at - time.perf_counter()))

        cam = threading.Thread(target=camera, args=(ppe,), daemon=True) if ppe is not None else None
        if cam is not None:
            cam.start()
        calls = LatencyWindow(size=1 << 16)
        done = 0
        began = time.perf_counter()
        while time.perf_counter() - began < budget_s or not calls.count:
            start = done % max(1, len(decoded) - batch)
            chunk = decoded[start : start + batch]
            t0 = time.perf_counter()
            for f in [pool.submit(a.score, chunk) for a in telemetry]:
                f.result()
            calls.add(time.perf_counter() - t0)
            done += len(chunk)
        elapsed = time.perf_counter() - began
        stop.set()
        if cam is not None:
            cam.join()
    return {
        "agents": [a.agent_id for a in agents],
        "batch": batch,
        "pool_threads": settings.inference.threads,
        "records": done,
        "per_s": done / elapsed,
        "batch_ms": calls.summary(),
        "ppe_frames_per_s": frames_scored / elapsed,
    }


# -- the app, for the end-to-end and latency runs --------------------------------------


@asynccontextmanager
async def bench_app(settings: Settings, **sections: Any) -> AsyncIterator[Any]:
    """The real app with its lifespan running, in this process, on a fresh data directory:
    no replay (the bench is the load), no broker, no SCADA unless `sections` says so.
    Yields the app's components."""
    from ..app import build_app

    replace = msgspec.structs.replace
    with tempfile.TemporaryDirectory(prefix="factory_mas-bench-") as data_dir:
        s = replace(
            settings,
            data=replace(settings.data, dir=data_dir),
            replay=replace(settings.replay, enabled=False),
            mqtt=replace(settings.mqtt, broker=""),
            scada=replace(settings.scada, enabled=False),
            # Nothing is served over HTTP here; off, no first admin key is made and shown.
            auth=replace(settings.auth, enabled=False),
        )
        s = replace(s, **sections)
        app = build_app(s)
        async with app.router.lifespan_context(app):
            yield app.state.components


def telemetry_agents(c: Any) -> list[Any]:
    return [a for a in c.agents if a.input_filter == topics.TELEMETRY_FILTER and a.settings.enabled]


def scored(c: Any) -> int:
    """Records every telemetry agent has scored: the slowest agent's count."""
    return min(a.counters["predictions"] for a in telemetry_agents(c))


def at_least(count: Callable[[], int], target: int) -> Callable[[], bool]:
    """A condition to wait for: `count()` has reached `target`, fixed now (in a loop, a
    lambda would read the loop's latest target)."""
    return lambda: count() >= target


async def wait_for(reached: Callable[[], bool], what: str, timeout_s: float = _TIMEOUT_S) -> None:
    deadline = time.perf_counter() + timeout_s
    while not reached():
        if time.perf_counter() > deadline:
            raise FactoryError(f"bench: timed out waiting for {what}")
        await asyncio.sleep(0.002)


def settled(c: Any) -> bool:
    """Nothing left in flight after the agents: alerts handled, history written, the
    raw telemetry stored."""
    orchestrator = c.orchestrator._sub
    history = c.history.stats()
    raw = c.telemetry.stats()
    return (
        (orchestrator is None or len(orchestrator) == 0)
        and history["pending"] == 0
        and (history["queue"] or {}).get("depth", 0) == 0
        and raw.get("pending", 0) == 0
        and (raw.get("queue") or {}).get("depth", 0) == 0
        and not raw.get("catching_up")
    )


async def drained(c: Any, before: dict[str, Any], records: int, frames: int) -> None:
    """Wait until every record and frame offered since `before` has gone all the way."""
    target = before["predictions"]["pm_agent"] + records
    await wait_for(lambda: scored(c) >= target, "the agents to score every record")
    ppe = next((a for a in c.agents if a.agent_id == "ppe_agent" and a.settings.enabled), None)
    if ppe is not None:
        done = before["predictions"]["ppe_agent"] + frames
        await wait_for(lambda: ppe.counters["predictions"] >= done, "PPE to score every frame")
    await wait_for(lambda: settled(c), "alerts and history to settle")


class Cameras:
    """PPE_FPS frames a second in all, spread over a few cameras, as JPEG on the hub."""

    def __init__(self, hub: Any, jpegs: list[bytes]) -> None:
        self.hub, self.jpegs = hub, jpegs
        self.sent = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        next_at = time.perf_counter()
        while True:
            camera = f"cam-{self.sent % _CAMERAS + 1}"
            jpeg = self.jpegs[self.sent % len(self.jpegs)]
            await self.hub.publish(topics.ppe_frames(camera), jpeg, origin="bench")
            self.sent += 1
            next_at += 1 / PPE_FPS
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    async def __aenter__(self) -> Cameras:
        self._task = asyncio.create_task(self._run(), name="bench:cameras")
        return self

    async def __aexit__(self, *exc: object) -> None:
        from ..tasks import cancel

        if self._task is not None:
            await cancel(self._task)


def _counters(c: Any) -> dict[str, Any]:
    return {
        "accepted": sum(c.intake.accepted.values()),
        "rejected": sum(c.intake.rejected.values()),
        "predictions": {a.agent_id: a.counters["predictions"] for a in c.agents},
        "agent_errors": sum(a.counters["errors"] for a in c.agents),
        "orchestrator_errors": c.orchestrator.counters["errors"],
        "alerts": c.orchestrator.counters["alerts"],
        "alarms_raised": c.orchestrator.counters["alarms_raised"],
        "history_written": c.history.written,
        "history_dropped": c.history.stats()["dropped"],
        "telemetry_stored": c.telemetry.written,
    }


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _delta(v, before[k]) if isinstance(v, dict) else v - before[k] for k, v in after.items()
    }


# -- end to end ----------------------------------------------------------------------------


async def _end_to_end(
    settings: Settings,
    payloads: list[bytes],
    records: int,
    jpegs: list[bytes],
    historian: bool = True,
) -> dict[str, Any]:
    """`payloads`: JSON arrays holding `records` records in all; `historian`: whether the
    raw telemetry is stored."""
    history = msgspec.structs.replace(settings.history, telemetry_enabled=historian)
    async with bench_app(settings, history=history) as c:
        # Warm-up: first batches allocate tensors and caches; not part of the figure.
        await c.intake.accept(msgspec.json.decode(payloads[0]), "bench", journal=True)
        await wait_for(lambda: scored(c) > 0 and settled(c), "the warm-up")
        before = _counters(c)
        async with Cameras(c.hub, jpegs) as cams:
            began = time.perf_counter()
            for payload in payloads:
                await c.intake.accept(msgspec.json.decode(payload), "bench", journal=True)
            # The cameras go on until the last record is scored: PPE beside all of it.
            target = before["predictions"]["pm_agent"] + records
            await wait_for(lambda: scored(c) >= target, "the agents to score every record")
            frames_sent = cams.sent
        await drained(c, before, records, frames_sent)
        elapsed = time.perf_counter() - began
        done = _delta(_counters(c), before)
    return {
        "records": records,
        "per_s": records / elapsed,
        "seconds": elapsed,
        "ppe_frames_sent": frames_sent,
        "ppe_frames_per_s": frames_sent / elapsed,
        "counts": done,
    }


# -- latency at a fixed load ---------------------------------------------------------------


def trigger_record(machine_id: int) -> dict[str, Any]:
    """A reading far past every safety limit, from a machine never seen before: it must
    raise a new alarm, so its arrival-to-alarm time can be told apart from every other."""
    return {
        "machine_id": machine_id,
        "operation_mode": "Active",
        "temperature_c": 160.0,
        "vibration_hz": 9.5,
        "power_consumption_kw": 14.0,
        "network_latency_ms": 10.0,
        "packet_loss_pct": 0.5,
        "defect_rate_pct": 2.0,
        "production_speed": 250.0,
        "maintenance_score": 0.5,
        "error_rate_pct": 2.0,
    }


class Arrivals:
    """Arrival times by record, and when their predictions and alarms showed on the hub."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[int, float], float] = {}
        self.trigger_arrived: dict[int, float] = {}
        self.to_prediction = LatencyWindow(size=1 << 20)
        self.to_alarm = LatencyWindow(size=1 << 16)
        self.alarmed: set[int] = set()

    async def watch_predictions(self, sub: Any) -> None:
        async for message in sub:
            now = time.perf_counter()
            for p in message.payload if isinstance(message.payload, list) else [message.payload]:
                at = self.arrived.get((p.machine_id, round(p.record_ts.timestamp(), 3)))
                if at is not None:
                    self.to_prediction.add(now - at)

    async def watch_alarms(self, sub: Any) -> None:
        async for message in sub:
            now = time.perf_counter()
            alarm = message.payload
            at = self.trigger_arrived.get(alarm.machine_id)
            if at is not None and alarm.machine_id not in self.alarmed:
                self.alarmed.add(alarm.machine_id)
                self.to_alarm.add(now - at)


async def _fixed_load(
    settings: Settings, rows: list[dict[str, Any]], jpegs: list[bytes], seconds: float
) -> dict[str, Any]:
    per_tick = max(1, round(OFFERED_PER_S * _TICK_S))
    ticks = int(seconds / _TICK_S)
    stamp = time.time()
    async with bench_app(settings) as c:
        arrivals = Arrivals()
        # Big enough never to fill in this run: a full queue would slow the pipeline.
        preds = c.hub.subscribe(topics.PREDICTIONS_FILTER, name="bench:latency", maxsize=1 << 20)
        alarms = c.hub.subscribe(
            topics.ALARMS, name="bench:alarms", maxsize=1 << 16, overflow=Overflow.BLOCK
        )
        watchers = [
            asyncio.create_task(arrivals.watch_predictions(preds)),
            asyncio.create_task(arrivals.watch_alarms(alarms)),
        ]
        await c.intake.accept(rows[:per_tick], "bench")
        await wait_for(lambda: scored(c) >= per_tick and settled(c), "the warm-up")
        before = _counters(c)
        triggers = offered = 0
        async with Cameras(c.hub, jpegs) as cams:
            began = next_at = time.perf_counter()
            for tick in range(ticks):
                chunk = [dict(r) for r in rows[(tick * per_tick) % len(rows) :][:per_tick]]
                # Every 100 ms one record is a hazard on a machine of its own.
                if tick % 10 == 5:
                    chunk[-1] = trigger_record(_TRIGGER_BASE + triggers)
                    triggers += 1
                now = time.perf_counter()
                for r in chunk:
                    # Each record gets a timestamp of its own, so its predictions can be told
                    # apart from the same row offered in an earlier pass over the data.
                    offered += 1
                    r["timestamp"] = round(stamp + offered * 1e-3, 3)
                    if r["machine_id"] >= _TRIGGER_BASE:
                        arrivals.trigger_arrived[r["machine_id"]] = now
                    arrivals.arrived[(r["machine_id"], r["timestamp"])] = now
                await c.intake.accept(chunk, "bench", journal=True)
                next_at += _TICK_S
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            elapsed = time.perf_counter() - began
            frames_sent = cams.sent
        await drained(c, before, offered, frames_sent)
        await wait_for(lambda: len(arrivals.alarmed) >= triggers, "an alarm per hazard", 30)
        for sub in (preds, alarms):
            sub.close()
        await asyncio.gather(*watchers)
        done = _delta(_counters(c), before)
    return {
        "offered_per_s": OFFERED_PER_S,
        "achieved_per_s": offered / elapsed,
        "records": offered,
        "triggers": triggers,
        "alarms_seen": len(arrivals.alarmed),
        "ppe_frames_sent": frames_sent,
        "record_to_prediction_ms": arrivals.to_prediction.summary(),
        "record_to_alarm_ms": arrivals.to_alarm.summary(),
        "counts": done,
    }


# -- the whole section ---------------------------------------------------------------------


def run_pipeline_bench(settings: Settings, quick: bool) -> dict[str, Any]:
    records = 50_000 if quick else 300_000
    limit = inference_limit(settings, 8_192 if quick else 32_768, 2.0 if quick else 8.0)
    jpegs = camera_frames(8)
    rows = raw_records(records)
    payloads = json_batches(rows)
    e2e = asyncio.run(_end_to_end(settings, payloads, len(rows), jpegs))
    bare = asyncio.run(_end_to_end(settings, payloads, len(rows), jpegs, historian=False))
    fixed = asyncio.run(_fixed_load(settings, raw_records(10_000), jpegs, 5.0 if quick else 30.0))
    problems = consistency("end to end", e2e["counts"], e2e["records"], e2e["ppe_frames_sent"])
    problems += consistency(
        "fixed load", fixed["counts"], fixed["records"], fixed["ppe_frames_sent"]
    )
    problems += consistency(
        "historian off", bare["counts"], bare["records"], bare["ppe_frames_sent"]
    )
    if e2e["counts"]["telemetry_stored"] != e2e["records"]:
        problems.append(
            f"end to end: {e2e['counts']['telemetry_stored']} of {e2e['records']} records "
            "stored by the telemetry historian"
        )
    if fixed["alarms_seen"] != fixed["triggers"]:
        problems.append(
            f"fixed load: {fixed['alarms_seen']} alarms for {fixed['triggers']} hazards"
        )
    ratio = e2e["per_s"] / limit["per_s"]
    historian_ratio = e2e["per_s"] / bare["per_s"]
    alarm_p99 = fixed["record_to_alarm_ms"].get("p99_ms", float("inf"))
    return {
        "problems": problems,
        "inference_limit": limit,
        "end_to_end": e2e,
        "latency": fixed,
        "historian_off": bare,
        "targets": {
            "end_to_end_per_s": target(e2e["per_s"], E2E_TARGET_PER_S, at_least=True),
            "end_to_end_ratio": target(ratio, E2E_RATIO_TARGET, at_least=True),
            "historian_on_off_ratio": target(
                historian_ratio, HISTORIAN_RATIO_TARGET, at_least=True
            ),
            "record_to_alarm_p99_ms": target(alarm_p99, ALARM_P99_TARGET_MS, at_least=False),
        },
    }


def consistency(run: str, counts: dict[str, Any], records: int, frames: int) -> list[str]:
    """What does not add up in a run: every record in must come out as one prediction per
    agent, every frame as a PPE prediction, with no error and nothing dropped."""
    problems = []
    if counts["accepted"] != records or counts["rejected"]:
        problems.append(
            f"{run}: {counts['accepted']} of {records} records accepted, "
            f"{counts['rejected']} rejected"
        )
    for agent, n in counts["predictions"].items():
        expected = frames if agent == "ppe_agent" else records
        if n != expected:
            problems.append(f"{run}: {agent} made {n} predictions for {expected} inputs")
    for name in ("agent_errors", "orchestrator_errors", "history_dropped"):
        if counts[name]:
            problems.append(f"{run}: {name.replace('_', ' ')}: {counts[name]}")
    return problems


def pipeline_report(results: dict[str, Any]) -> str:
    lim, e2e, lat, t, bare = (
        results["inference_limit"],
        results["end_to_end"],
        results["latency"],
        results["targets"],
        results["historian_off"],
    )
    pred, alarm = lat["record_to_prediction_ms"], lat["record_to_alarm_ms"]
    return "\n".join(
        [
            "pipeline (records/s; PPE scores camera frames beside the telemetry agents)",
            f"  inference limit   {lim['per_s']:>9,.0f}   score() of decoded batches of "
            f"{lim['batch']}, {lim['pool_threads']} pool threads, PPE at "
            f"{lim['ppe_frames_per_s']:.0f} frames/s",
            f"  end to end        {e2e['per_s']:>9,.0f}   JSON -> validated -> journal -> hub -> "
            f"5 agents -> alarms -> history ({e2e['records']:,} records, PPE "
            f"{e2e['ppe_frames_per_s']:.0f} frames/s)",
            f"  end to end / limit {t['end_to_end_ratio']['value']:>8.0%}",
            f"  historian off     {bare['per_s']:>9,.0f}   the same without storing raw "
            f"telemetry; on / off {t['historian_on_off_ratio']['value']:.0%}",
            f"  latency at {lat['offered_per_s']:,} records/s offered "
            f"({lat['achieved_per_s']:,.0f} achieved, {lat['records']:,} records):",
            f"    record -> prediction  p50 {pred['p50_ms']:.1f} ms  p99 {pred['p99_ms']:.1f} ms  "
            f"max {pred['max_ms']:.1f} ms",
            f"    record -> alarm       p50 {alarm.get('p50_ms', 0):.1f} ms  "
            f"p99 {alarm.get('p99_ms', 0):.1f} ms  max {alarm.get('max_ms', 0):.1f} ms  "
            f"({lat['alarms_seen']} of {lat['triggers']} hazards)",
            f"  target end to end >= {E2E_TARGET_PER_S:,}/s: "
            f"{verdict(t['end_to_end_per_s'])}; >= {E2E_RATIO_TARGET:.0%} of the limit: "
            f"{verdict(t['end_to_end_ratio'])}; alarm p99 <= {ALARM_P99_TARGET_MS:.0f} ms: "
            f"{verdict(t['record_to_alarm_p99_ms'])}; historian on / off >= "
            f"{HISTORIAN_RATIO_TARGET:.0%}: {verdict(t['historian_on_off_ratio'])}",
        ]
    )
