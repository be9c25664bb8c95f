"""`bench --inference`: how fast each agent scores, alone and batched, all together on the
shared pool, and LiteRT against Keras. The scoring measured is each agent's real `score()`
(features, model, rules, per-machine state) on records that are already validated: no
hub, no HTTP, no store.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..agents import build_agents
from ..agents.base import AgentContext, BaseAgent
from ..hub import Hub
from ..ingest.schema import parse_record
from ..ml.inference import Inference, LatencyWindow
from ..settings import Settings
from ..sim.synthetic import FactorySimulator
from ..store import Store
from .machine import machine_facts

BATCH_SIZES = (1, 64, 256, 1024)
TELEMETRY_TARGET_RPS = 20_000
PPE_TARGET_FPS = 100
LITERT_SPEEDUP_TARGET = 50


@dataclass
class Case:
    name: str
    unit: str
    items: Sequence[Any]
    score: Callable[[Sequence[Any]], Any]


def _timed(batch: int, budget_s: float, step: Callable[[int], int]) -> dict[str, Any]:
    """Call `step(items done so far)`, which scores one batch and says how many items it
    held, for about `budget_s`; items/s and per-call latency."""
    calls = LatencyWindow(size=1 << 20)
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < budget_s or not calls.count:
        t0 = time.perf_counter()
        n = step(done)
        calls.add(time.perf_counter() - t0)
        done += n
    return {"batch": batch, "per_s": done / calls.total_s, **calls.summary()}


def measure(case: Case, batch: int, budget_s: float) -> dict[str, Any]:
    """One agent scoring consecutive batches of `batch` items."""
    items, n = case.items, len(case.items)

    def step(done: int) -> int:
        start = (done % n) if n > batch else 0
        chunk = items[start : start + batch]
        case.score(chunk)
        return len(chunk)

    return _timed(batch, budget_s, step)


def telemetry_records(n: int, seed: int = 11) -> list[Any]:
    frame = FactorySimulator(seed=seed, machines=50).run(max(1, n // 50))
    return [parse_record(r) for r in frame.records()[:n]]


async def _loaded_agents(settings: Settings) -> list[BaseAgent]:
    # The agents are loaded, not started: no hub consumer, no checkpoints, only scoring.
    hub = Hub()
    ctx = AgentContext(
        hub=hub,
        store=Store("sqlite://"),
        inference=Inference(1),
        models_dir=settings.models_dir,
    )
    agents = [a for a in build_agents(settings, ctx) if a.settings.enabled]
    for agent in agents:
        agent.model = await asyncio.to_thread(agent.load)
    return agents


def camera_frames(n: int, side: int = 480) -> list[bytes]:
    """JPEG frames of workers, the size a site camera sends, with and without each item."""
    import io

    import numpy as np
    from PIL import Image

    from ..sim.ppe_images import render_worker

    rng = np.random.default_rng(5)
    frames = []
    for i in range(n):
        worn = [bool(i >> bit & 1) for bit in range(4)]
        out = io.BytesIO()
        Image.fromarray(render_worker(rng, worn, size=side)).save(out, "JPEG", quality=85)
        frames.append(out.getvalue())
    return frames


def ppe_case(agent: BaseAgent, n: int) -> Case:
    """PPE from JPEG bytes: decoding is part of what a camera stream costs."""
    from ..agents.ppe.frames import frames_of_payload

    limits = agent.limits  # type: ignore[attr-defined]

    def decode_and_score(batch: Sequence[bytes]) -> Any:
        frames = [f for jpeg in batch for f in frames_of_payload(jpeg, "bench", limits)]
        return agent.score(frames)

    return Case(agent.agent_id, "frames", camera_frames(n), decode_and_score)


def cases_for(agents: list[BaseAgent], records: list[Any], frames: int) -> list[Case]:
    cases = []
    for agent in agents:
        if agent.agent_id == "ppe_agent":
            cases.append(ppe_case(agent, frames))
        else:
            cases.append(Case(agent.agent_id, "records", records, agent.score))
    return cases


def together(cases: list[Case], batch: int, budget_s: float, threads: int) -> dict[str, Any]:
    """The telemetry agents scoring the same batches side by side on the shared pool."""
    n = len(cases[0].items)
    with ThreadPoolExecutor(threads) as pool:

        def step(done: int) -> int:
            start = done % max(1, n - batch)
            futures = [pool.submit(c.score, c.items[start : start + batch]) for c in cases]
            for f in futures:
                f.result()
            return batch

        return _timed(batch, budget_s, step)


def keras_versus_litert(settings: Settings, repeats: int) -> dict[str, Any]:
    """Per-row latency of the energy LSTM: Keras model.predict against the served LiteRT file.

    The Keras side is the same architecture built afresh (latency does not depend on the
    weights), so no Keras file has to ship. Needs TensorFlow, the `train` extra.
    """
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras  # noqa: F401 - only to find out whether TensorFlow is there
    except ImportError:
        return {"skipped": "TensorFlow is not installed (pip install -e '.[train]')"}
    import numpy as np

    from ..ml.artifacts import read_manifest
    from ..ml.inference import LiteRtModel
    from ..training.energy import build_forecaster

    entry = read_manifest(settings.models_dir)["models"]["energy_agent"]
    lite = LiteRtModel(settings.models_dir / entry["files"]["forecaster"]["path"], "bench")
    model = build_forecaster(entry["training"]["window"], entry["training"]["lstm_units"])
    x = np.random.default_rng(0).random((1, *lite.input_shape[1:]), dtype=np.float32)
    model.predict(x, verbose=0)
    lite.predict(x)

    def per_call(fn: Callable[[], Any], n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    keras_s = per_call(lambda: model.predict(x, verbose=0), repeats)
    lite_s = per_call(lambda: lite.predict(x), repeats * 50)
    return {
        "keras_predict_ms": keras_s * 1000,
        "litert_ms": lite_s * 1000,
        "speedup": keras_s / lite_s,
        "target": LITERT_SPEEDUP_TARGET,
        "met": keras_s / lite_s >= LITERT_SPEEDUP_TARGET,
    }


def run_inference_bench(settings: Settings, quick: bool) -> dict[str, Any]:
    budget_s = 0.3 if quick else 1.5
    agents = asyncio.run(_loaded_agents(settings))
    records = telemetry_records(8192 if quick else 32768)
    cases = cases_for(agents, records, frames=64 if quick else 256)
    results: dict[str, Any] = {"machine": machine_facts(), "quick": quick, "agents": {}}
    for case in cases:
        rows = [measure(case, b, budget_s) for b in BATCH_SIZES]
        results["agents"][case.name] = {
            "unit": case.unit,
            "batches": rows,
            "batching_gain": rows[-1]["per_s"] / rows[0]["per_s"],
        }
    telemetry = [c for c in cases if c.unit == "records"]
    threads = settings.inference.threads
    joint = together(telemetry, BATCH_SIZES[-1], budget_s * 2, threads)
    serial = 1 / sum(1 / results["agents"][c.name]["batches"][-1]["per_s"] for c in telemetry)
    results["telemetry_together"] = {
        "agents": [c.name for c in telemetry],
        "pool_threads": threads,
        "serial_per_s": serial,
        "pooled": joint,
        "target_per_s": TELEMETRY_TARGET_RPS,
        "met": joint["per_s"] >= TELEMETRY_TARGET_RPS,
    }
    ppe = results["agents"].get("ppe_agent")
    if ppe is not None:
        best = max(row["per_s"] for row in ppe["batches"])
        results["ppe"] = {
            "frames_per_s": best,
            "target": PPE_TARGET_FPS,
            "met": best >= PPE_TARGET_FPS,
        }
    results["lstm_keras_vs_litert"] = keras_versus_litert(settings, 5 if quick else 20)
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"inference bench: {results['machine']['cores']} cores, Python "
        f"{results['machine']['python']}{' (quick)' if results['quick'] else ''}",
        "",
        f"{'agent':<14}{'batch':>7}{'items/s':>12}{'p50 ms':>10}{'p99 ms':>10}",
    ]
    for name, agent in results["agents"].items():
        for row in agent["batches"]:
            lines.append(
                f"{name:<14}{row['batch']:>7}{row['per_s']:>12,.0f}"
                f"{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            )
        lines.append(f"{'':<14}batched/single: {agent['batching_gain']:.1f}x ({agent['unit']})")
    t = results["telemetry_together"]
    pooled = t["pooled"]
    lines += [
        "",
        f"telemetry agents together ({', '.join(t['agents'])}), batch {pooled['batch']}:",
        f"  one after another {t['serial_per_s']:,.0f} records/s; on the "
        f"{t['pool_threads']}-thread pool {pooled['per_s']:,.0f} records/s "
        f"(p99 {pooled['p99_ms']:.1f} ms per batch)",
        f"  target >= {t['target_per_s']:,} records/s: {'met' if t['met'] else 'MISSED'}",
    ]
    if "ppe" in results:
        p = results["ppe"]
        lines.append(
            f"PPE: {p['frames_per_s']:,.0f} frames/s, target >= {p['target']}: "
            f"{'met' if p['met'] else 'MISSED'}"
        )
    k = results["lstm_keras_vs_litert"]
    if "skipped" not in k:
        lines.append(
            f"energy LSTM per row: Keras model.predict {k['keras_predict_ms']:.2f} ms, LiteRT "
            f"{k['litert_ms']:.3f} ms: {k['speedup']:.0f}x, target >= {k['target']}x: "
            f"{'met' if k['met'] else 'MISSED'}"
        )
    else:
        lines.append(f"energy LSTM Keras vs LiteRT: skipped ({k['skipped']})")
    return "\n".join(lines)
