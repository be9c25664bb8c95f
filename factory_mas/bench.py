"""`python -m factory_mas bench`: how fast each agent scores, alone and batched
(`--inference`), and how fast telemetry goes from an MQTT broker to predictions (`--mqtt`).

Every figure comes from this run on this machine, and the targets are ratios or floors
measured beside their baselines in the same run, because shared machines are noisy. The
scoring measured is each agent's real `score()` (features, model, rules, per-machine state)
on records that are already validated: no hub, no HTTP, no store.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .agents import build_agents
from .agents.base import AgentContext, BaseAgent
from .data.schema import parse_record
from .data.synthetic import FactorySimulator
from .errors import FactoryError
from .hub import Hub
from .inference import Inference, LatencyWindow
from .settings import Settings
from .store import Store

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

    from .data.ppe_images import render_worker

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
    from .agents.ppe.frames import frames_of_payload

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

    from .artifacts import read_manifest
    from .inference import LiteRtModel
    from .training.energy import build_forecaster

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


def machine_facts() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


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


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")


# -- bench --mqtt --------------------------------------------------------------------------
#
# Broker to prediction through the real app, against the same broker carrying the same
# payloads to a plain aiomqtt subscriber (the baseline, measured in the same run). The
# publisher is a separate process, so the side being measured has the event loop to itself.

MQTT_BATCH = 100  # records per message in the batched case
MQTT_RATIO_TARGET = 0.7  # batched broker-to-prediction >= 70% of raw publish->subscribe
MQTT_TIMEOUT_S = 300.0  # a case that stalls this long fails the bench
_MQTT_TOPIC = "sensors/factory/data"


def mqtt_payloads(records: int, per_message: int, seed: int = 11) -> list[bytes]:
    """Simulated telemetry as a gateway publishes it: one JSON object per message, or
    JSON arrays of `per_message` records."""
    import msgspec

    rows = FactorySimulator(seed=seed, machines=50).run(max(1, -(-records // 50))).records()
    rows = rows[:records]
    encode = msgspec.json.encode
    if per_message == 1:
        return [encode(r) for r in rows]
    return [encode(rows[i : i + per_message]) for i in range(0, len(rows), per_message)]


class Mosquitto:
    """A private mosquitto on a free loopback port, persistence off, for the bench."""

    def __init__(self) -> None:
        import shutil

        self.binary = shutil.which("mosquitto") or shutil.which(
            "mosquitto", path="/usr/sbin:/usr/local/sbin"
        )
        if self.binary is None:
            raise FactoryError(
                "bench --mqtt needs mosquitto (not found on PATH or in /usr/sbin): "
                "apt-get install mosquitto"
            )
        self.host = "127.0.0.1"
        self.port = 0
        self.version = ""
        self._proc: Any = None
        self._dir: Any = None

    def __enter__(self) -> Mosquitto:
        import getpass
        import socket
        import subprocess
        import tempfile

        self._dir = tempfile.TemporaryDirectory(prefix="factory_mas-bench-mosquitto-")
        folder = Path(self._dir.name)
        with socket.socket() as s:
            s.bind((self.host, 0))
            self.port = s.getsockname()[1]
        config = folder / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    # As root it would drop to the `mosquitto` user otherwise.
                    f"user {getpass.getuser()}",
                    "persistence false",
                    # Its default of 1000 queued messages per client drops the rest quietly.
                    "max_queued_messages 0",
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        self._log = (folder / "mosquitto.log").open("wb")
        self._proc = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                log = (folder / "mosquitto.log").read_text(errors="replace")
                self.__exit__()
                raise FactoryError(f"mosquitto exited with {self._proc.returncode}:\n{log}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex((self.host, self.port)) == 0:
                    break
            time.sleep(0.01)
        else:
            self.__exit__()
            raise FactoryError(f"mosquitto did not listen on {self.host}:{self.port} in 10 s")
        help_text = subprocess.run(
            [self.binary, "-h"], capture_output=True, text=True, check=False
        ).stdout
        self.version = help_text.partition("mosquitto version ")[2].split("\n")[0].strip()
        return self

    def __exit__(self, *exc: object) -> None:
        import subprocess

        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._dir is not None:
            self._log.close()
            self._dir.cleanup()
            self._dir = None


def _publisher_main(host: str, port: int, commands: Any, answers: Any) -> None:
    """The publisher process: connect once, then publish what each command asks for."""
    asyncio.run(_publisher_loop(host, port, commands, answers))


# QoS 1 publishes in flight: mosquitto's default receive maximum. More only queue inside
# paho, whose acknowledgement handling slows down with its queue (measured: 100 or 1000
# in flight publish fewer messages per second than 20).
WINDOW = 20


async def _publish_windowed(client: Any, payloads: list[bytes]) -> None:
    """QoS 1 publishes with a sliding window of WINDOW in flight: waiting for whole rounds
    of PUBACKs would measure round trips, not throughput."""
    window = asyncio.Semaphore(WINDOW)

    async def one(payload: bytes) -> None:
        try:
            await client.publish(_MQTT_TOPIC, payload, qos=1)
        finally:
            window.release()

    tasks = []
    for payload in payloads:
        await window.acquire()
        tasks.append(asyncio.create_task(one(payload)))
    await asyncio.gather(*tasks)


async def _publisher_loop(host: str, port: int, commands: Any, answers: Any) -> None:
    import aiomqtt

    async with aiomqtt.Client(
        host,
        port,
        protocol=aiomqtt.ProtocolVersion.V5,
        max_inflight_messages=WINDOW,
        max_queued_outgoing_messages=1_000_000,
        timeout=60,
    ) as client:
        client.pending_calls_threshold = 1_000_000  # many calls pending is the point here
        answers.put(("ready", 0.0))
        while True:
            command = await asyncio.to_thread(commands.get)
            if command is None:
                return
            records, per_message = command
            payloads = mqtt_payloads(records, per_message)
            answers.put(("prepared", 0.0))
            await asyncio.to_thread(commands.get)  # go
            began = time.perf_counter()
            await _publish_windowed(client, payloads)
            answers.put(("published", time.perf_counter() - began))


class PublisherProcess:
    """A separate process publishing simulated telemetry with QoS 1, on command."""

    def __init__(self, broker: Mosquitto) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._commands = context.Queue()
        self._answers = context.Queue()
        self._proc = context.Process(
            target=_publisher_main,
            args=(broker.host, broker.port, self._commands, self._answers),
            daemon=True,
        )

    def __enter__(self) -> PublisherProcess:
        self._proc.start()
        self._expect("ready")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc.is_alive():
            self._commands.put(None)
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    def _expect(self, what: str, timeout_s: float = 120.0) -> float:
        import queue

        try:
            answer, value = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            raise FactoryError(
                f"bench --mqtt: the publisher process did not answer ({what})"
            ) from None
        if answer != what:
            raise FactoryError(f"bench --mqtt: the publisher said {answer!r}, not {what!r}")
        return value

    async def prepare(self, records: int, per_message: int) -> None:
        self._commands.put((records, per_message))
        await asyncio.to_thread(self._expect, "prepared")

    def go(self) -> None:
        self._commands.put("go")

    async def published(self) -> float:
        return await asyncio.to_thread(self._expect, "published", MQTT_TIMEOUT_S)


async def _wait_for(
    reached: Callable[[], bool], what: str, timeout_s: float = MQTT_TIMEOUT_S
) -> float:
    """Poll until `reached()`; the perf_counter time it was first seen true."""

    deadline = time.perf_counter() + timeout_s
    while not reached():
        if time.perf_counter() > deadline:
            raise FactoryError(f"bench --mqtt: timed out waiting for {what}")
        await asyncio.sleep(0.002)
    return time.perf_counter()


async def _raw_case(
    broker: Mosquitto, publisher: PublisherProcess, records: int, per_message: int
) -> dict[str, Any]:
    """Baseline: the same payloads from the same publisher to a plain aiomqtt subscriber."""
    import aiomqtt

    await publisher.prepare(records, per_message)
    messages = -(-records // per_message)
    async with aiomqtt.Client(
        broker.host,
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        max_queued_incoming_messages=0,
    ) as client:
        await client.subscribe(_MQTT_TOPIC, qos=1)
        heard = 0

        async def consume() -> None:
            nonlocal heard
            async for _ in client.messages:
                heard += 1
                if heard >= messages:
                    return

        task = asyncio.create_task(consume())
        began = time.perf_counter()
        publisher.go()
        try:
            async with asyncio.timeout(MQTT_TIMEOUT_S):
                await task
        except TimeoutError:
            raise FactoryError(
                f"bench --mqtt: the raw subscriber heard {heard} of {messages} messages"
            ) from None
        ended = time.perf_counter()
        publish_s = await publisher.published()
    return {
        "records": records,
        "messages": messages,
        "per_s": records / (ended - began),
        "publish_per_s": records / publish_s,
    }


async def _app_cases(
    settings: Settings,
    broker: Mosquitto,
    publisher: PublisherProcess,
    sizes: dict[str, tuple[int, int]],
    scoring: bool,
) -> dict[str, Any]:
    """Broker to prediction through the real app, its lifespan run in this process.

    Without `scoring` every agent is disabled: what is left is the bridge, validation and
    the journal, which shows how much of the cost is the bridge's and how much scoring's.
    """
    import tempfile

    import msgspec

    from .app import build_app

    replace = msgspec.structs.replace
    agent_settings = settings.agents
    if not scoring:
        agent_settings = replace(
            agent_settings,
            **{
                name: replace(getattr(agent_settings, name), enabled=False)
                for name in ("pm", "energy", "cyber", "safety", "ppe")
            },
        )
    with tempfile.TemporaryDirectory(prefix="factory_mas-bench-data-") as data_dir:
        s = replace(
            settings,
            data=replace(settings.data, dir=data_dir),
            replay=replace(settings.replay, enabled=False),
            agents=agent_settings,
            mqtt=replace(
                settings.mqtt,
                broker=broker.host,
                port=broker.port,
                client_id=f"factory_mas-bench-{os.getpid()}-{'scoring' if scoring else 'bridge'}",
                # No session left behind on the broker to queue the next run's messages.
                session_expiry_s=0,
                tls=False,
                username="",
                password="",
            ),
        )
        app = build_app(s)
        async with app.router.lifespan_context(app):
            c = app.state.components
            agents = [a for a in c.agents if a.agent_id != "ppe_agent" and a.settings.enabled]

            def accepted() -> int:
                return c.intake.accepted["mqtt"]

            def scored() -> int:
                return min(a.counters["predictions"] for a in agents) if agents else accepted()

            await _wait_for(lambda: c.mqtt.connected, "the bridge to connect", 30)
            # Warm-up, and proof that the bridge's subscriptions are in place: a message
            # published before them would be dropped by the broker, so repeat until one
            # is scored.
            for _ in range(20):
                target = scored() + MQTT_BATCH
                await publisher.prepare(MQTT_BATCH, MQTT_BATCH)
                publisher.go()
                await publisher.published()
                try:
                    await _wait_for(lambda t=target: scored() >= t, "the warm-up", 5)
                    break
                except FactoryError:
                    continue
            else:
                raise FactoryError("bench --mqtt: the app never scored a warm-up record")
            results: dict[str, Any] = {"agents": [a.agent_id for a in agents]}
            for name, (records, per_message) in sizes.items():
                await publisher.prepare(records, per_message)
                accepted_target = accepted() + records
                scored_target = scored() + records
                began = time.perf_counter()
                publisher.go()
                accepted_at = await _wait_for(
                    lambda t=accepted_target: accepted() >= t, f"{name}: records accepted"
                )
                scored_at = await _wait_for(
                    lambda t=scored_target: scored() >= t, f"{name}: records scored"
                )
                await publisher.published()
                results[name] = {
                    "accepted_per_s": records / (accepted_at - began),
                    "scored_per_s": records / (scored_at - began),
                }
            stats = c.mqtt.stats()
            results["bridge"] = {
                k: stats[k] for k in ("received", "received_records", "rejected_payloads")
            }
            return results


def run_mqtt_bench(settings: Settings, quick: bool) -> dict[str, Any]:
    sizes = {
        "single": (2_000 if quick else 10_000, 1),
        "batched": (50_000 if quick else 200_000, MQTT_BATCH),
    }
    with Mosquitto() as broker, PublisherProcess(broker) as publisher:
        raw = {
            name: asyncio.run(_raw_case(broker, publisher, records, per))
            for name, (records, per) in sizes.items()
        }
        bridge = asyncio.run(_app_cases(settings, broker, publisher, sizes, scoring=False))
        app = asyncio.run(_app_cases(settings, broker, publisher, sizes, scoring=True))
    cases = {}
    for name, (records, per) in sizes.items():
        raw_per_s = raw[name]["per_s"]
        cases[name] = {
            "records": records,
            "records_per_message": per,
            "raw_per_s": raw_per_s,
            "raw_publish_per_s": raw[name]["publish_per_s"],
            "bridge_only_per_s": bridge[name]["accepted_per_s"],
            "accepted_per_s": app[name]["accepted_per_s"],
            "scored_per_s": app[name]["scored_per_s"],
            "bridge_only_ratio": bridge[name]["accepted_per_s"] / raw_per_s,
            "ratio": app[name]["scored_per_s"] / raw_per_s,
        }
    ratio = cases["batched"]["ratio"]
    return {
        "machine": machine_facts(),
        "quick": quick,
        "broker": f"mosquitto {broker.version}".strip(),
        "publisher_window": WINDOW,
        "agents": app["agents"],
        "cases": cases,
        "bridge": app["bridge"],
        "target": {
            "batched_ratio": MQTT_RATIO_TARGET,
            "ratio": ratio,
            "met": ratio >= MQTT_RATIO_TARGET,
        },
    }


def mqtt_report(results: dict[str, Any]) -> str:
    lines = [
        f"mqtt bench: {results['broker']}, {results['machine']['cores']} cores, Python "
        f"{results['machine']['python']}{' (quick)' if results['quick'] else ''}",
        "QoS 1 throughout; the publisher is a separate process "
        f"({results['publisher_window']} publishes in flight). Records per second:",
        "  raw          publisher -> broker -> plain aiomqtt subscriber (the baseline)",
        "  bridge only  publisher -> broker -> bridge -> validated and journaled, agents off",
        "  scored       publisher -> broker -> bridge -> journal -> scored by every telemetry",
        f"               agent ({', '.join(results['agents'])})",
        "",
        f"{'payload':<24}{'records':>9}{'raw':>10}{'bridge only':>13}{'scored':>9}"
        f"{'scored/raw':>12}",
    ]
    for name, case in results["cases"].items():
        per = case["records_per_message"]
        shape = "1 record" if per == 1 else f"arrays of {per}"
        lines.append(
            f"{name + ' (' + shape + ')':<24}{case['records']:>9,}{case['raw_per_s']:>10,.0f}"
            f"{case['bridge_only_per_s']:>13,.0f}{case['scored_per_s']:>9,.0f}"
            f"{case['ratio']:>12.0%}"
        )
    t = results["target"]
    lines.append(
        f"target: batched broker-to-prediction >= {t['batched_ratio']:.0%} of raw: "
        f"{t['ratio']:.0%}, {'met' if t['met'] else 'MISSED'}"
    )
    return "\n".join(lines)
