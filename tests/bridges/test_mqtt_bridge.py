"""The MQTT bridge against a real mosquitto, as the plant's MQTT clients see it.

Plain aiomqtt clients publish telemetry and read what the bridge sends back; where the
network between processes matters (broker down, broker crash, server kill -9, two
instances) the server is a real `python -m factory_mas` child process.

A note on waiting: the bridge reports `mqtt_connected` as soon as the broker answers
CONNECT, a moment before its SUBSCRIBEs are in place, and mosquitto drops a message no
subscription matches. Tests that publish right after the bridge connects for the first
time therefore wait until the broker has logged the bridge's subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from factory_mas.hub import matches
from factory_mas.settings import Settings, load_settings
from tests.support.app import TEST_ENV, running_app
from tests.support.mqtt_broker import INSTALL_HINT, Broker, mosquitto_path
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import until

# Every test runs a real mosquitto.
pytestmark = pytest.mark.integration

# Hang guard only.
TIMEOUT_S = 30.0
TELEMETRY = "sensors/factory/data"
REJECTED = "sensors/factory/rejected"
TELEMETRY_AGENTS = ("pm_agent", "energy_agent", "cyber_agent", "safety_agent")
BRIDGE_FILTERS = 4  # mqtt.subscribe in settings.toml
BASE_TS = datetime(2025, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------ helpers


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    """The conftest broker (persistence on, a SIGKILL keeps queued QoS 1 messages), also
    logging subscriptions so a test can see when the bridge's are in place."""
    try:
        mosquitto_path()
    except RuntimeError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    b = Broker(tmp_path / "broker", persistence=True, extra_config=["log_type subscribe"])
    b.start()
    yield b
    b.stop(signal.SIGKILL)


def numbered(i: int, machines: int = 50) -> dict:
    """Record number i: a (machine_id, timestamp) pair that no other number has."""
    ts = BASE_TS + timedelta(minutes=i // machines)
    return record(i % machines + 1, timestamp=ts.strftime("%Y-%m-%dT%H:%M:%SZ"))


def key(item: dict) -> tuple[int, datetime]:
    """Which record a record or a prediction is about."""
    return int(item["machine_id"]), datetime.fromisoformat(
        item.get("record_ts") or item["timestamp"]
    )


def encode(body: Any) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


def session_properties(expiry_s: int = 3600) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = expiry_s
    return props


async def bridge_subscribed(broker: Broker, client_id: str, count: int = BRIDGE_FILTERS) -> None:
    await until(
        lambda: broker.output().count(f" {client_id} 1 ") >= count,
        f"{client_id}'s subscriptions on the broker\n{broker.output()}",
    )


def bridge_settings(tmp_path: Path, port: int, client_id: str, **env: str) -> Settings:
    """Settings for an in-process app bridged to 127.0.0.1:port."""
    return load_settings(
        path=REPO / "settings.toml",
        env={
            "FACTORY_DATA_DIR": str(tmp_path / "data"),
            **TEST_ENV,
            "MQTT_BROKER": "127.0.0.1",
            "MQTT_PORT": str(port),
            "FACTORY_MQTT_CLIENT_ID": client_id,
            "FACTORY_MQTT_RECONNECT_MIN_S": "0.1",
            "FACTORY_MQTT_RECONNECT_MAX_S": "0.5",
            **env,
        },
    )


def server_env(port: int, client_id: str, **env: str) -> dict[str, str]:
    """Environment for a server child process bridged to 127.0.0.1:port."""
    return {
        "MQTT_BROKER": "127.0.0.1",
        "MQTT_PORT": str(port),
        "FACTORY_MQTT_CLIENT_ID": client_id,
        "FACTORY_MQTT_RECONNECT_MIN_S": "0.1",
        "FACTORY_MQTT_RECONNECT_MAX_S": "0.5",
        **env,
    }


async def get_status(http: httpx.AsyncClient) -> dict:
    response = await http.get("/status")
    assert response.status_code == 200, response.text
    return response.json()


async def get_health(http: httpx.AsyncClient) -> tuple[int, dict]:
    response = await http.get("/health")
    return response.status_code, response.json()


def accepted_from_mqtt(status: dict) -> int:
    return status["ingest"]["accepted"].get("mqtt", 0)


async def scored_keys(http: httpx.AsyncClient, agent: str = "pm") -> Counter:
    """How often each record appears in the agent's history (newest 10,000)."""
    response = await http.get(f"/api/{agent}/history", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return Counter(key(p) for p in response.json()["predictions"])


class Listener:
    """A plain aiomqtt subscriber that keeps every (topic, payload) it hears.

    With `identifier` its session (subscriptions, queued QoS 1 messages) outlives its
    connection and a broker restart, and it rejoins when the broker is back."""

    def __init__(self, broker: Broker, *filters: str, identifier: str | None = None) -> None:
        self.broker = broker
        self.filters = filters
        self.identifier = identifier
        self.messages: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()
        self._subscribed = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        if self.identifier is None:
            return aiomqtt.Client(
                self.broker.host, self.broker.port, protocol=aiomqtt.ProtocolVersion.V5
            )
        return aiomqtt.Client(
            self.broker.host,
            self.broker.port,
            identifier=self.identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=session_properties(),
        )

    async def _run(self) -> None:
        client = self._client()
        while True:
            try:
                async with client:
                    for f in self.filters:
                        await client.subscribe(f, qos=1)
                    self._subscribed.set()
                    async for m in client.messages:
                        self.messages.append((str(m.topic), bytes(m.payload)))
                        self._changed.set()
            except aiomqtt.MqttError:
                if self.identifier is None:
                    raise
                await until(self.broker.accepting, "the broker to listen again")

    def on(self, topic_filter: str) -> list[Any]:
        """Decoded payloads heard on topics that match the filter."""
        return [json.loads(p) for t, p in self.messages if matches(topic_filter, t)]

    def items(self, topic_filter: str) -> list[Any]:
        """Like `on`, with JSON arrays taken apart."""
        return [i for p in self.on(topic_filter) for i in (p if isinstance(p, list) else [p])]

    async def until_heard(
        self, predicate: Callable[[], Any], what: str, timeout_s: float = TIMEOUT_S
    ):
        try:
            async with asyncio.timeout(timeout_s):
                while not (value := predicate()):
                    self._changed.clear()
                    await self._changed.wait()
                return value
        except TimeoutError:
            heard = Counter(t for t, _ in self.messages)
            raise AssertionError(f"timed out waiting for {what}; heard {dict(heard)}") from None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Listener]:
        task = asyncio.create_task(self._run())
        try:
            async with asyncio.timeout(TIMEOUT_S):
                subscribed = asyncio.ensure_future(self._subscribed.wait())
                await asyncio.wait({task, subscribed}, return_when=asyncio.FIRST_COMPLETED)
                subscribed.cancel()
            if task.done():
                task.result()
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Publisher:
    """A device gateway publishing batches with QoS 1. A batch whose publish failed (the
    broker was away) is sent again once it is back, so it may arrive twice; `acked` holds
    only the records whose publish returned OK."""

    def __init__(
        self, broker: Broker, batches: Iterable[tuple[str, Any]], pause_s: float = 0.0
    ) -> None:
        self.broker = broker
        self.batches = iter(batches)
        self.pause_s = pause_s
        self.acked: list[dict] = []
        self.last_payload = b""
        self.failures = 0
        self.done = False
        self._gate = asyncio.Event()
        self._gate.set()
        self._parked = asyncio.Event()

    async def _run(self) -> None:
        pending = None
        while True:
            try:
                client = aiomqtt.Client(
                    self.broker.host,
                    self.broker.port,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    timeout=3,
                )
                async with client:
                    while True:
                        if not self._gate.is_set():
                            self._parked.set()
                            await self._gate.wait()
                            self._parked.clear()
                        if pending is None:
                            pending = next(self.batches, None)
                            if pending is None:
                                self.done = True
                                return
                        topic, body = pending
                        payload = encode(body)
                        await client.publish(topic, payload, qos=1)
                        self.acked.extend(body if isinstance(body, list) else [body])
                        self.last_payload = payload
                        pending = None
                        if self.pause_s:
                            await asyncio.sleep(self.pause_s)
            except aiomqtt.MqttError:
                self.failures += 1
                await asyncio.sleep(0.05)

    async def pause(self) -> None:
        """Stop between two publishes; returns once no publish is in flight."""
        self._gate.clear()
        await until(lambda: self._parked.is_set() or self.done, "the publisher to pause")

    def resume(self) -> None:
        self._gate.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Publisher]:
        task = asyncio.create_task(self._run())
        try:
            yield self
            await until(lambda: self.done or task.done(), "the publisher to finish")
            if task.done():
                task.result()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def publish_all(broker: Broker, messages: Iterable[tuple[str, Any]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as c:
        for topic, body in messages:
            await c.publish(topic, encode(body), qos=1)


def canonical(topic: str, payload: Any) -> tuple[str, str]:
    return topic, json.dumps(payload, sort_keys=True)


# ------------------------------------------------------------------ in and out


async def test_records_come_back_as_predictions_and_alerts_and_are_not_echoed(mosquitto, tmp_path):
    settings = bridge_settings(tmp_path, mosquitto.port, "bridge-roundtrip")
    listener = Listener(mosquitto, "predictions/+", "alerts/+", "sensors/factory/#")
    hot = record(5, temperature_c=140.0, vibration_hz=12.0)
    sent = [
        (TELEMETRY, record(1)),
        (TELEMETRY, [record(2), record(3)]),
        (f"{TELEMETRY}/4", record(4)),
        (f"{TELEMETRY}/5", [hot]),
        (TELEMETRY, record(6, temperature_c="hot")),
    ]
    async with listener.running(), running_app(settings) as (components, _http):
        await bridge_subscribed(mosquitto, "bridge-roundtrip")
        await publish_all(mosquitto, sent)

        def machines(agent: str) -> set[int]:
            return {p["machine_id"] for p in listener.items(f"predictions/{agent}")}

        await listener.until_heard(
            lambda: all(machines(a) >= {1, 2, 3, 4, 5} for a in TELEMETRY_AGENTS),
            "predictions for machines 1-5 from every telemetry agent",
        )
        await listener.until_heard(
            lambda: [a for a in listener.items("alerts/safety_agent") if a["machine_id"] == 5],
            "the safety alert for machine 5",
        )
        await listener.until_heard(lambda: listener.on(REJECTED), "the rejection of machine 6")
        bridge = components.mqtt.stats()

    for agent in TELEMETRY_AGENTS:
        predictions = listener.items(f"predictions/{agent}")
        assert all(p["agent_id"] == agent for p in predictions)
        assert 6 not in {p["machine_id"] for p in predictions}
    (alert,) = [a for a in listener.items("alerts/safety_agent") if a["machine_id"] == 5]
    assert alert["source"] == "safety_agent"
    assert alert["level"] in ("CRITICAL", "EMERGENCY")

    (rejection,) = listener.items(REJECTED)
    assert rejection["field"] == "temperature_c"
    assert rejection["reason"]

    # No echo: on sensors/factory/# the broker carried what this test sent, and the
    # rejection, nothing else.
    heard = [(t, json.loads(p)) for t, p in listener.messages if matches("sensors/factory/#", t)]
    telemetry = [canonical(t, p) for t, p in heard if t != REJECTED]
    assert Counter(telemetry) == Counter(canonical(t, p) for t, p in sent)
    assert [t for t, _ in heard if t == REJECTED] == [REJECTED]
    assert bridge["received"] == len(sent)
    assert bridge["received_records"] == 6


async def test_garbage_is_rejected_with_a_reason_and_good_records_still_flow(mosquitto, tmp_path):
    limit = 2048
    settings = bridge_settings(
        tmp_path, mosquitto.port, "bridge-garbage", FACTORY_MQTT_MAX_PAYLOAD_BYTES=str(limit)
    )
    oversize = encode([record(m) for m in range(1, 21)])
    assert len(oversize) > limit
    garbage = [
        (TELEMETRY, b"not json at all", "not JSON"),
        (TELEMETRY, b"42", "got int"),
        (f"{TELEMETRY}/3", b"[]", "empty array"),
        (TELEMETRY, oversize, "exceeds mqtt.max_payload_bytes"),
    ]
    mixed = [record(7), record(8, operation_mode="Sleeping"), record(9)]
    listener = Listener(mosquitto, REJECTED, "predictions/pm_agent")
    async with listener.running(), running_app(settings) as (components, http):
        await bridge_subscribed(mosquitto, "bridge-garbage")
        await publish_all(mosquitto, [(t, p) for t, p, _ in garbage] + [(TELEMETRY, mixed)])

        def predicted() -> set[int]:
            return {p["machine_id"] for p in listener.items("predictions/pm_agent")}

        await listener.until_heard(lambda: len(listener.items(REJECTED)) >= 5, "five rejections")
        await listener.until_heard(lambda: predicted() >= {7, 9}, "machines 7 and 9 scored")
        # The bridge keeps running: a good record after all that still flows.
        await publish_all(mosquitto, [(TELEMETRY, record(10))])
        await listener.until_heard(lambda: 10 in predicted(), "machine 10 scored")
        status = await get_status(http)
        assert components.mqtt.connected

    rejections = listener.items(REJECTED)
    assert len(rejections) == 5
    by_payload = rejections[:4]
    for (topic, _, reason), rejection in zip(garbage, by_payload, strict=True):
        assert reason in rejection["reason"], rejection
        assert topic in rejection["source"], rejection
    (bad_record,) = rejections[4:]
    assert bad_record["field"] == "operation_mode"
    assert bad_record["index"] == 1
    assert 8 not in predicted()

    assert status["mqtt"]["rejected_payloads"] == 4
    assert status["mqtt"]["disconnects"] == 0
    assert status["ingest"]["rejected"]["mqtt"] == 5
    assert status["ingest"]["rejected_by_field"]["operation_mode"] == 1
    assert accepted_from_mqtt(status) == 3


# ------------------------------------------------------------------ broker outages


async def test_health_says_degraded_while_the_configured_broker_is_away(tmp_path):
    settings = bridge_settings(tmp_path, free_port(), "bridge-away")
    async with running_app(settings) as (_components, http):
        code, body = await get_health(http)
    # The process serves (HTTP ingest, dashboard, SCADA): 200, so no orchestrator kills
    # it or takes it out of rotation for the broker's sake. But a configured broker that
    # cannot be reached is not "ok": an operator glancing at /health must see it.
    assert code == 200
    assert body["ready"] is True
    assert body["components"]["mqtt_connected"] is False
    assert body["status"] == "degraded"


async def test_the_server_starts_without_its_broker_and_connects_when_it_comes(
    server_factory, tmp_path
):
    late = Broker(tmp_path / "late-broker", port=free_port(), extra_config=["log_type subscribe"])
    try:
        server = await asyncio.to_thread(server_factory, server_env(late.port, "bridge-late"))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            code, body = await get_health(http)
            assert code == 200
            assert body["ready"] is True
            assert body["components"]["mqtt_connected"] is False
            status = await get_status(http)
            assert status["mqtt"]["connected"] is False
            assert status["mqtt"]["last_error"]

            # HTTP ingest does not wait for the broker.
            response = await http.post("/api/ingest", json=[record(1), record(2)])
            assert response.status_code == 202, response.text
            assert response.json()["accepted"] == 2

            async def pm_predictions() -> int:
                return (await get_status(http))["agents"]["pm_agent"]["counters"].get(
                    "predictions", 0
                )

            await until(lambda: _at_least(pm_predictions(), 2), "HTTP records scored")

            await asyncio.to_thread(late.start)

            async def connected() -> bool:
                return (await get_health(http))[1]["components"]["mqtt_connected"] is True

            await until(connected, "/health to say the bridge is connected")
            await bridge_subscribed(late, "bridge-late")
            listener = Listener(late, "predictions/pm_agent")
            async with listener.running():
                await publish_all(late, [(TELEMETRY, [record(3), record(4)])])
                await listener.until_heard(
                    lambda: (
                        {p["machine_id"] for p in listener.items("predictions/pm_agent")} >= {3, 4}
                    ),
                    "predictions for the records sent over MQTT",
                )
            status = await get_status(http)
            assert accepted_from_mqtt(status) == 2
            assert status["ingest"]["accepted"]["http"] == 2
            assert status["mqtt"]["connects"] == 1
    finally:
        late.stop(signal.SIGKILL)


async def _at_least(value: Any, n: int) -> bool:
    return (await value) >= n


async def test_a_broker_crash_mid_stream_loses_no_acknowledged_record(mosquitto, server_factory):
    server = await asyncio.to_thread(server_factory, server_env(mosquitto.port, "bridge-crash"))
    await bridge_subscribed(mosquitto, "bridge-crash")
    batches = [(TELEMETRY, [numbered(i) for i in range(b * 20, b * 20 + 20)]) for b in range(100)]
    publisher = Publisher(mosquitto, batches, pause_s=0.005)
    control_room = Listener(
        mosquitto,
        "orchestrator/decisions",
        "alerts/safety_agent",
        "predictions/pm_agent",
        identifier="control-room",
    )
    # Sent over HTTP while the broker is away: its prediction waits in memory, its alert
    # in the outbox.
    hot = record(43, temperature_c=140.0, vibration_hz=12.0, timestamp="2030-01-01T00:00:00Z")

    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        control_room.running(),
        publisher.running(),
    ):

        async def accepted() -> int:
            return accepted_from_mqtt(await get_status(http))

        async def mqtt_connected() -> bool | None:
            code, body = await get_health(http)
            assert code == 200, body  # the process keeps serving throughout
            return body["components"]["mqtt_connected"]

        async def outbox_waiting() -> int:
            return (await get_status(http))["mqtt"]["outbox_waiting"]

        await until(lambda: _at_least(accepted(), 400), "the stream to be flowing")
        await publisher.pause()

        # mosquitto sends PUBACK before it writes its database (Broker.wait_persisted):
        # wait until what it acknowledged is on disk or already taken by the bridge.
        def saved() -> bool:
            with contextlib.suppress(FileNotFoundError):
                return publisher.last_payload in mosquitto.persistence_file.read_bytes()
            return False

        async def saved_or_taken() -> bool:
            return saved() or await accepted() >= len(publisher.acked)

        await until(saved_or_taken, "the broker to save what it acknowledged")
        mosquitto.stop(signal.SIGKILL)
        publisher.resume()  # it keeps trying; every publish fails until the broker is back

        await until(lambda: _is(mqtt_connected(), False), "/health to see the broker gone")
        # An alert raised while the broker is away: its decision waits in the outbox.
        response = await http.post(
            "/api/orchestrator/alert",
            json={
                "level": "CRITICAL",
                "type": "FIRE_RISK",
                "source": "smoke_detector",
                "details": "smoke at machine 42",
                "machine_id": 42,
            },
        )
        assert response.status_code == 202, response.text
        response = await http.post("/api/ingest", json=[hot])
        assert response.status_code == 202, response.text
        await until(lambda: _at_least(outbox_waiting(), 2), "the alert and decision in the outbox")
        await until(lambda: publisher.failures > 0, "the publisher to notice the outage")

        await asyncio.to_thread(mosquitto.start)
        await until(lambda: _is(mqtt_connected(), True), "/health to see the broker back")
        await until(lambda: publisher.done, "the publisher to send everything")

        acked = {key(r) for r in publisher.acked}
        assert len(acked) == 2000

        async def missing() -> set:
            return acked - set(await scored_keys(http))

        await until(lambda: _is(missing(), set()), "every acknowledged record scored")
        await until(lambda: _is(outbox_waiting(), 0), "the outbox to empty")
        await control_room.until_heard(
            lambda: [
                d
                for d in control_room.items("orchestrator/decisions")
                if d["plan"]["machine_id"] == 42
            ],
            "the decision made during the outage",
        )
        await control_room.until_heard(
            lambda: [a for a in control_room.items("alerts/safety_agent") if a["machine_id"] == 43],
            "the alert raised during the outage",
        )
        await control_room.until_heard(
            lambda: key(hot) in {key(p) for p in control_room.items("predictions/pm_agent")},
            "the prediction made during the outage",
        )
        status = await get_status(http)

    assert status["mqtt"]["connects"] >= 2
    assert status["mqtt"]["disconnects"] >= 1
    assert status["mqtt"]["connected"] is True
    (decision,) = [
        d for d in control_room.items("orchestrator/decisions") if d["plan"]["machine_id"] == 42
    ]
    assert decision["level"] == "CRITICAL"
    assert decision["plan"]["action"] == "evacuate_area"


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


# ------------------------------------------------------------------ scale-out and crashes


async def test_two_instances_in_a_shared_group_split_the_stream_exactly(
    mosquitto, server_factory, tmp_path
):
    servers = await asyncio.gather(
        *(
            asyncio.to_thread(
                server_factory,
                server_env(mosquitto.port, f"bridge-share-{n}", FACTORY_MQTT_SHARED_GROUP="g1"),
                tmp_path / f"share-{n}" / "data",
            )
            for n in (1, 2)
        )
    )
    for n in (1, 2):
        await bridge_subscribed(mosquitto, f"bridge-share-{n}")
    assert "$share/g1/sensors/factory/data" in mosquitto.output()

    total = 10_000
    rng = random.Random(6)
    topics = [TELEMETRY] + [f"{TELEMETRY}/{m}" for m in range(1, 51)]
    batches = [
        (rng.choice(topics), [numbered(i) for i in range(start, start + 100)])
        for start in range(0, total, 100)
    ]
    rng.shuffle(batches)
    await publish_all(mosquitto, batches)

    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in servers]
    try:

        async def counts() -> list[int]:
            return [accepted_from_mqtt(await get_status(c)) for c in clients]

        async def all_in() -> bool:
            return sum(await counts()) >= total

        await until(all_in, f"{total} records accepted between the two instances")
        await asyncio.sleep(0.5)  # a duplicate would still be on its way
        final = await counts()
    finally:
        for c in clients:
            await c.aclose()
    assert sum(final) == total, final
    assert all(n > 0 for n in final), final


async def test_two_instances_in_a_shared_group_score_each_camera_frame_once(
    mosquitto, server_factory, tmp_path
):
    """Camera frames are ingest too: with a shared group, each frame must be scored by
    one instance, or every PPE violation becomes two alarms, two decisions, two texts."""
    from factory_mas.bench.inference import camera_frames

    servers = await asyncio.gather(
        *(
            asyncio.to_thread(
                server_factory,
                server_env(mosquitto.port, f"bridge-ppe-{n}", FACTORY_MQTT_SHARED_GROUP="g1"),
                tmp_path / f"ppe-{n}" / "data",
            )
            for n in (1, 2)
        )
    )
    for n in (1, 2):
        await bridge_subscribed(mosquitto, f"bridge-ppe-{n}")
    frames = camera_frames(20, side=128)
    await publish_all(
        mosquitto, [(f"sensors/factory/ppe/gate-{i % 2}", f) for i, f in enumerate(frames)]
    )

    clients = [httpx.AsyncClient(base_url=s.url, timeout=10) for s in servers]
    try:

        async def scored() -> list[int]:
            return [
                (await get_status(c))["agents"]["ppe_agent"]["counters"].get("predictions", 0)
                for c in clients
            ]

        async def all_in() -> bool:
            return sum(await scored()) >= len(frames)

        await until(all_in, f"{len(frames)} frames scored between the two instances")
        await asyncio.sleep(0.5)  # a second copy would still be on its way
        final = await scored()
    finally:
        for c in clients:
            await c.aclose()
    assert sum(final) == len(frames), f"frames scored per instance: {final}"


async def test_kill_9_of_the_server_loses_no_acknowledged_record(
    mosquitto, server_factory, tmp_path
):
    env = server_env(mosquitto.port, "bridge-kill9")
    data_dir = tmp_path / "kill9" / "data"
    first = await asyncio.to_thread(server_factory, env, data_dir)
    await bridge_subscribed(mosquitto, "bridge-kill9")
    batches = [(TELEMETRY, [numbered(i) for i in range(b * 50, b * 50 + 50)]) for b in range(60)]
    publisher = Publisher(mosquitto, batches, pause_s=0.01)
    async with publisher.running():
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as http:

            async def accepted() -> int:
                return accepted_from_mqtt(await get_status(http))

            await until(lambda: _at_least(accepted(), 300), "the stream to be flowing")
        first.stop(signal.SIGKILL)
        # The publisher goes on; the broker keeps what the bridge has not acknowledged.
        second = await asyncio.to_thread(server_factory, env, data_dir)

    acked = {key(r) for r in publisher.acked}
    assert len(acked) == 3000
    async with httpx.AsyncClient(base_url=second.url, timeout=10) as http:

        async def missing() -> set:
            return acked - set(await scored_keys(http))

        await until(lambda: _is(missing(), set()), "every acknowledged record scored")
        status = await get_status(http)
    # The second run took messages from the broker: those sent while it was down at least.
    assert accepted_from_mqtt(status) > 0
    assert status["mqtt"]["client_id"] == "bridge-kill9"


# ------------------------------------------------------------------ config over MQTT


async def test_a_config_request_over_mqtt_is_answered_on_its_result_topic(mosquitto, tmp_path):
    settings = bridge_settings(tmp_path, mosquitto.port, "bridge-config")
    old = settings.agents.pm.rul_critical_hours
    listener = Listener(mosquitto, "config/pm_agent/result")
    request = {"set": {"rul_critical_hours": 30}, "by": "scada", "id": "r1"}
    async with listener.running(), running_app(settings) as (_components, http):
        await bridge_subscribed(mosquitto, "bridge-config")
        await publish_all(mosquitto, [("config/pm_agent", request)])
        await listener.until_heard(
            lambda: listener.on("config/pm_agent/result"),
            "an answer on config/pm_agent/result",
            timeout_s=15,
        )
        pm = (await http.get("/api/pm/status")).json()
    (result,) = listener.on("config/pm_agent/result")
    assert result["id"] == "r1"
    assert result["target"] == "pm_agent"
    assert result["accepted"] is True, result
    assert result["by"] == "scada"
    assert result["changed"] == {"rul_critical_hours": [old, 30]}
    assert pm["settings"]["rul_critical_hours"] == 30


async def test_retained_messages_are_not_taken_again_on_resubscribe(mosquitto, tmp_path):
    """A retained config request and a retained reading sit on the broker. Neither is
    taken when the bridge subscribes, nor after a broker restart, so a newer HTTP change
    stands and no reading is scored twice; a live message still is."""
    settings = bridge_settings(tmp_path, mosquitto.port, "bridge-retained")
    async with aiomqtt.Client(
        mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as c:
        await c.publish("config/pm_agent", encode({"set": {"rul_critical_hours": 30}}), 1, True)
        await c.publish(TELEMETRY, encode([numbered(0)]), qos=1, retain=True)
    async with running_app(settings) as (_components, http):
        await bridge_subscribed(mosquitto, "bridge-retained")
        changed = await http.post("/api/config/pm_agent", json={"set": {"rul_critical_hours": 26}})
        assert changed.status_code == 200, changed.text
        await asyncio.to_thread(mosquitto.restart)

        async def connects() -> int:
            return (await get_status(http))["mqtt"]["connects"]

        await until(lambda: _at_least(connects(), 2), "the bridge to reconnect")
        await bridge_subscribed(mosquitto, "bridge-retained")
        # A live reading published after the resubscribe: once it is scored, anything the
        # broker handed over on subscribing would have been taken before it.
        await publish_all(mosquitto, [(TELEMETRY, [numbered(1)])])
        await until(lambda: _at_least(pm_count(http), 1), "the live reading to be scored")
        scored = await scored_keys(http)
        status = await get_status(http)
        pm = (await http.get("/api/pm/status")).json()
        trail = (await http.get("/api/config/changes")).json()
    assert pm["settings"]["rul_critical_hours"] == 26
    assert scored == Counter({key(numbered(1)): 1})
    assert accepted_from_mqtt(status) == 1
    assert [c["origin"] for c in trail["changes"]] == ["http"]


async def pm_count(http: httpx.AsyncClient) -> int:
    return sum((await scored_keys(http)).values())


async def test_a_broker_loss_is_one_warning_line(mosquitto, tmp_path, caplog):
    settings = bridge_settings(tmp_path, mosquitto.port, "bridge-loss")
    caplog.set_level("INFO")
    async with running_app(settings) as (_components, http):
        await bridge_subscribed(mosquitto, "bridge-loss")
        caplog.clear()
        await asyncio.to_thread(mosquitto.stop, signal.SIGKILL)

        async def disconnected() -> bool:
            return (await get_status(http))["mqtt"]["connected"] is False

        await until(disconnected, "the bridge to see the broker gone")
        await until(
            lambda: any("unavailable" in r.getMessage() for r in caplog.records),
            "the outage to be logged",
        )
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    (line,) = loud
    assert line.levelno == logging.WARNING
    assert line.exc_info is None
    assert "\n" not in line.getMessage()
