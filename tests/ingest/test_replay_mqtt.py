"""`python -m factory_mas replay --mqtt` against a real mosquitto, read by a plain aiomqtt
subscriber; and the broker fixture itself (publish/subscribe, a crash keeps queued QoS 1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_mas.ingest.schema import parse_record
from tests.support.net import free_port
from tests.support.waiting import wait_until

# The replay publishes to a real mosquitto.
pytestmark = pytest.mark.integration

# Hang guard only.
TIMEOUT_S = 30.0


def session_properties(expiry_s: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    return props


def persistent_client(broker, identifier: str) -> aiomqtt.Client:
    """A client whose subscriptions and queued QoS 1 messages outlive its connection."""
    return aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        properties=session_properties(),
    )


# ------------------------------------------------------------------ the broker fixture


async def test_the_broker_passes_messages_between_plain_clients(broker):
    async with (
        aiomqtt.Client(broker.host, broker.port) as sub,
        aiomqtt.Client(broker.host, broker.port) as pub,
    ):
        await sub.subscribe("test/+", qos=1)
        await pub.publish("test/a", b"hello", qos=1)
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(sub.messages))
    assert (str(message.topic), message.payload) == ("test/a", b"hello")


async def test_a_queued_qos1_message_survives_a_broker_crash(broker):
    subscriber = persistent_client(broker, "sanity-subscriber")
    async with subscriber:
        await subscriber.subscribe("test/queued", qos=1)
    # The subscriber is away; the broker queues the message for its session.
    async with aiomqtt.Client(broker.host, broker.port) as pub:
        await pub.publish("test/queued", b"kept", qos=1)
    broker.wait_persisted(b"kept")

    broker.stop(signal.SIGKILL)
    assert not broker.running
    port = broker.port
    broker.restart()
    assert broker.port == port

    async with subscriber:  # the same Client object, re-entered after the disconnect
        async with asyncio.timeout(TIMEOUT_S):
            message = await anext(aiter(subscriber.messages))
    assert (str(message.topic), message.payload, message.qos) == ("test/queued", b"kept", 1)


# ------------------------------------------------------------------ replay --mqtt


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    drop = ("PORT", "LOG_LEVEL", "MQTT_BROKER", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_") and k not in drop}
    env["FACTORY_DATA_DIR"] = str(tmp_path / "cli-data")
    return env


class Collector:
    """A plain aiomqtt subscriber, as a consumer of the plant's telemetry would run one.

    With `persistent`, its session (subscription and queued QoS 1 messages) outlives a
    broker restart, and it reconnects when the broker is back."""

    def __init__(self, broker, topic: str = "sensors/factory/data/#", persistent: bool = False):
        self.broker = broker
        self.topic = topic
        self.persistent = persistent
        self.messages: list[tuple[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.subscribed = asyncio.Event()
        self.disconnects = 0
        self._changed = asyncio.Event()
        if persistent:
            self.client = persistent_client(broker, "collector")
        else:
            self.client = aiomqtt.Client(broker.host, broker.port)

    async def run(self) -> None:
        while True:
            try:
                async with self.client:
                    await self.client.subscribe(self.topic, qos=1)
                    self.subscribed.set()
                    async for message in self.client.messages:
                        payload = json.loads(message.payload)
                        self.messages.append((str(message.topic), payload))
                        self.records.extend(payload if isinstance(payload, list) else [payload])
                        self._changed.set()
            except aiomqtt.MqttError:
                if not self.persistent:
                    raise
                self.disconnects += 1
                # The broker is restarting: wait for it to listen again, then rejoin.
                await asyncio.to_thread(wait_until, self.broker.accepting, what="the broker")

    async def until_received(self, records: int) -> None:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                while len(self.records) < records:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.records)} of {records} records arrived\n{self.broker.output()}"
            ) from None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Collector]:
        task = asyncio.create_task(self.run())
        subscribed = asyncio.create_task(self.subscribed.wait())
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.wait({task, subscribed}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()
            yield self
        finally:
            subscribed.cancel()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def replay(*args: str, env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "factory_mas",
        "replay",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finished(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    async with asyncio.timeout(TIMEOUT_S):
        _, err = await proc.communicate()
    return proc.returncode, err.decode(errors="replace")


async def test_replay_publishes_the_count_in_arrays_of_batch(broker, cli_env, tmp_path):
    async with Collector(broker).running() as sub:
        proc = await replay(
            "--mqtt",
            "--broker",
            broker.address,
            "--count",
            "500",
            "--batch",
            "50",
            "--rate",
            "0",
            env=cli_env,
            cwd=tmp_path,
        )
        code, err = await finished(proc)
        assert code == 0, err
        await sub.until_received(500)

    assert len(sub.records) == 500
    assert [(topic, len(p)) for topic, p in sub.messages] == [("sensors/factory/data", 50)] * 10
    records = [parse_record(r) for r in sub.records]
    assert {r.machine_id for r in records} == set(range(1, 51))
    assert "replay: 500 records in 10 messages" in err
    assert "Traceback" not in err


async def test_per_machine_topics_carry_that_machines_records(broker, cli_env, tmp_path):
    async with Collector(broker).running() as sub:
        proc = await replay(
            "--broker",
            broker.address,
            "--count",
            "60",
            "--machines",
            "6",
            "--rate",
            "0",
            "--per-machine-topics",
            env=cli_env,
            cwd=tmp_path,
        )
        code, err = await finished(proc)
        assert code == 0, err
        await sub.until_received(60)

    assert len(sub.messages) == 60  # --batch 1: one JSON object per message
    for topic, payload in sub.messages:
        assert isinstance(payload, dict)
        assert topic == f"sensors/factory/data/{parse_record(payload).machine_id}"
    assert Counter(topic for topic, _ in sub.messages) == {
        f"sensors/factory/data/{m}": 10 for m in range(1, 7)
    }


async def test_only_sends_the_chosen_machines(broker, cli_env, tmp_path):
    async with Collector(broker).running() as sub:
        proc = await replay(
            "--mqtt",
            "--broker",
            broker.address,
            "--count",
            "90",
            "--rate",
            "0",
            "--only",
            "2-4,9",
            "--batch",
            "7",
            "--qos",
            "0",
            env=cli_env,
            cwd=tmp_path,
        )
        code, err = await finished(proc)
        assert code == 0, err
        await sub.until_received(90)

    counts = Counter(parse_record(r).machine_id for r in sub.records)
    assert sum(counts.values()) == 90
    assert set(counts) == {2, 3, 4, 9}
    assert all(isinstance(p, list) and 1 <= len(p) <= 7 for _, p in sub.messages)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--broker", "127.0.0.1:notaport"], "the port must be a number"),
        (["--broker", "127.0.0.1:70000"], "the port must be a number"),
        (["--broker", ":1883"], "expected HOST or HOST:PORT"),
        (["--mqtt"], "no broker"),
        (["--mqtt", "--broker", "127.0.0.1", "--batch", "0"], "--batch 0"),
        (["--stdout", "--batch", "5"], "--batch need --mqtt"),
        (["--mqtt", "--broker", "127.0.0.1", "--only", "3-1"], "--only"),
        (["--mqtt", "--broker", "127.0.0.1", "--only", "60"], "machine 60 is not simulated"),
    ],
)
async def test_a_bad_option_exits_2_saying_why(args, says, cli_env, tmp_path):
    code, err = await finished(await replay(*args, "--count", "5", env=cli_env, cwd=tmp_path))
    assert code == 2
    assert says in err
    assert "Traceback" not in err


async def test_an_unreachable_broker_exits_1_saying_so(cli_env, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    proc = await replay("--broker", address, "--count", "5", env=cli_env, cwd=tmp_path)
    code, err = await finished(proc)
    assert code == 1
    assert f"cannot reach MQTT broker mqtt://{address}" in err
    assert "Traceback" not in err


async def test_a_broker_restart_loses_no_record(broker, cli_env, tmp_path):
    async with Collector(broker, persistent=True).running() as sub:
        proc = await replay(
            "--broker",
            broker.address,
            "--count",
            "600",
            "--rate",
            "300",
            "--batch",
            "10",
            "--machines",
            "20",
            env=cli_env,
            cwd=tmp_path,
        )
        await sub.until_received(100)
        # Mid-stream: the publisher has records in flight and more to come.
        broker.stop(signal.SIGTERM)
        broker.restart()
        code, err = await finished(proc)
        assert code == 0, err
        await sub.until_received(600)

    assert sub.disconnects >= 1
    assert "lost" in err, "the replay should have noticed the broker going away"
    # QoS 1 is at-least-once: a record may come twice, none may be missing.
    unique = {(r["machine_id"], r["timestamp"]) for r in sub.records}
    assert len(unique) == 600
    assert Counter(m for m, _ in unique) == {m: 30 for m in range(1, 21)}


async def test_ctrl_c_exits_130(broker, cli_env, tmp_path):
    async with Collector(broker).running() as sub:
        proc = await replay("--broker", broker.address, "--rate", "100", env=cli_env, cwd=tmp_path)
        await sub.until_received(20)
        proc.send_signal(signal.SIGINT)
        code, err = await finished(proc)
    assert code == 130, err
    assert "Traceback" not in err
