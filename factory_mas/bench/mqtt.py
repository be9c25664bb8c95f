"""`bench --mqtt`: broker to prediction through the real app, against the same broker
carrying the same payloads to a plain aiomqtt subscriber (the baseline, in the same run)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..agents.registry import AGENTS
from ..errors import FactoryError
from ..settings import Settings
from ..sim.synthetic import FactorySimulator
from ..topics import TELEMETRY, TELEMETRY_FILTER
from .machine import machine_facts
from .pipeline import at_least

# -- bench --mqtt --------------------------------------------------------------------------
#
# Broker to prediction through the real app, against the same broker carrying the same
# payloads to a plain aiomqtt subscriber (the baseline, measured in the same run). The
# publisher is a separate process, so the side being measured has the event loop to itself.

MQTT_BATCH = 100  # records per message in the batched case
MQTT_RATIO_TARGET = 0.7  # batched broker-to-prediction >= 70% of raw publish->subscribe
MQTT_TIMEOUT_S = 300.0  # a case that stalls this long fails the bench


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

        binary = shutil.which("mosquitto") or shutil.which(
            "mosquitto", path="/usr/sbin:/usr/local/sbin"
        )
        if binary is None:
            raise FactoryError(
                "bench --mqtt needs mosquitto (not found on PATH or in /usr/sbin): "
                "apt-get install mosquitto"
            )
        self.binary = binary
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
            await client.publish(TELEMETRY, payload, qos=1)
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
        await client.subscribe(TELEMETRY, qos=1)
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

    from ..app import build_app

    replace = msgspec.structs.replace
    agent_settings = settings.agents
    if not scoring:
        agent_settings = replace(
            agent_settings,
            **{e.slug: replace(e.settings_of(settings), enabled=False) for e in AGENTS},
        )
    with tempfile.TemporaryDirectory(prefix="factory_mas-bench-data-") as data_dir:
        s = replace(
            settings,
            data=replace(settings.data, dir=data_dir),
            replay=replace(settings.replay, enabled=False),
            # Its fixed ports could clash, and its cost is `bench --scada`'s to measure.
            scada=replace(settings.scada, enabled=False),
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
            agents = [
                a for a in c.agents if a.input_filter == TELEMETRY_FILTER and a.settings.enabled
            ]

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
                    await _wait_for(at_least(scored, target), "the warm-up", 5)
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
                    at_least(accepted, accepted_target), f"{name}: records accepted"
                )
                scored_at = await _wait_for(
                    at_least(scored, scored_target), f"{name}: records scored"
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
