"""The MQTT bridge: the hub's topics on a real broker, in both directions (aiomqtt, MQTT v5).

In: telemetry, PPE frames and config requests from the broker go to the hub. Telemetry is
validated by the same Intake as HTTP and journaled in the store before the broker's QoS 1
message is acknowledged (manual acks), so a crash after the PUBACK cannot lose it: the
broker redelivers what we never acknowledged, and the journal has what we did.

Out: predictions, alerts, decisions and the rest go from the hub to the broker. Anything
on a protected hub topic (alerts, alarms, decisions, config results, summaries) is first
written to the store's mqtt_outbox and deleted once the broker has acknowledged it, so an
outage or a kill -9 delays it but never loses it (QoS 1: it may arrive twice). Predictions
wait in a bounded memory queue that drops its oldest when the broker is away long.

Loop-free: messages the bridge took from the broker are never sent back to it, and our
own subscriptions use MQTT v5's no-local flag.

Scale-out (`serve --role`): an ingest instance takes telemetry through a shared
subscription and keeps its outbox rows under its own instance id (Store.instance), so
instances sharing a database never send or delete each other's messages. The control
instance subscribes to alerts/+ and predictions/+ instead: alerts go to the orchestrator
(`alert_sink`) and are acknowledged only once their alarms are committed, as telemetry is
once journaled; predictions are a live view for SCADA, the shift tally and the dashboard,
taken at QoS 0 so the broker does not hoard them while the control is away.

The connection is kept by one loop: connect, subscribe, run until it breaks, wait with
capped exponential backoff and jitter, again. The session is persistent (clean_start off,
a session expiry), so the broker queues QoS 1 telemetry while we are away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StoreError
from ..hub import Hub, Message, Overflow, Subscription, SubscriptionClosed, matches
from ..ingest.intake import Intake
from ..messages import Alert, Prediction, Rejection
from ..settings import MqttSettings
from ..store import Store, mqtt_outbox
from ..tasks import cancel_all
from ..topics import ALERTS_FILTER, PREDICTIONS_FILTER, TELEMETRY, TELEMETRY_FILTER
from .connection import client_options, tls_context

# aiomqtt and paho are imported where a connection is made: a process without a broker
# (the default) never loads them.
if TYPE_CHECKING:
    import aiomqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

ORIGIN = "mqtt"
_IN_BATCH = 500  # broker messages handled (and journaled) together
_OUT_BATCH = 200  # messages published before waiting for their acknowledgements
_OUTBOX_POLL_S = 0.05
# Alert ids already handed to the alert sink: a QoS 1 redelivery (an ingest instance that
# died between publishing and deleting its outbox row sends it again) is not counted twice.
_SEEN_ALERTS = 10_000
# Topics taken at QoS 0: a live view, which the broker need not keep for us while we are
# away (a day of every instance's predictions would bury a returning control instance).
LIVE_ONLY = ("predictions/",)
_json = msgspec.json.Encoder()
_alerts = msgspec.json.Decoder(list[Alert] | Alert)
_predictions = msgspec.json.Decoder(list[Prediction] | Prediction)

AlertSink = Callable[[Sequence[Alert]], Awaitable[Any]]


def _leaves(exc: BaseException) -> list[BaseException]:
    """What broke a connection: the TaskGroup serving it wraps the failures of its tasks
    (a lost broker fails the receiver and often the sender too)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _outbox_add(conn: Connection, rows: list[tuple[str, bytes, float]], instance: str = "") -> None:
    conn.execute(
        mqtt_outbox.insert(),
        [{"topic": t, "payload": p, "created_at": at, "instance": instance} for t, p, at in rows],
    )


def _outbox_head(conn: Connection, limit: int, instance: str = "") -> list[tuple[int, str, bytes]]:
    rows = conn.execute(
        sa.select(mqtt_outbox.c.seq, mqtt_outbox.c.topic, mqtt_outbox.c.payload)
        .where(mqtt_outbox.c.instance == instance)
        .order_by(mqtt_outbox.c.seq)
        .limit(limit)
    )
    return [(r.seq, r.topic, r.payload) for r in rows]


def _outbox_delete(conn: Connection, seqs: list[int]) -> None:
    conn.execute(mqtt_outbox.delete().where(mqtt_outbox.c.seq.in_(seqs)))


def _outbox_size(conn: Connection, instance: str = "") -> int:
    count = sa.select(sa.func.count()).where(mqtt_outbox.c.instance == instance)
    return int(conn.execute(count).scalar() or 0)


class MqttBridge:
    """`async with MqttBridge(...)` runs it; it never fails the process for the broker's
    sake: a broker that is down at start is retried while everything else serves."""

    def __init__(
        self,
        settings: MqttSettings,
        hub: Hub,
        store: Store,
        intake: Intake,
        port: int = 8000,
        *,
        instance_id: str = "",
        alert_sink: AlertSink | None = None,
    ) -> None:
        """`instance_id` names the default client id (else <hostname>-<port>);
        `alert_sink` takes the alerts that arrive from the broker, and returns once they
        are durable (else they go on the hub like any other message)."""
        self.settings = settings
        self.hub, self.store, self.intake = hub, store, intake
        instance = instance_id or f"{socket.gethostname()}-{port}"
        self.client_id = settings.client_id or f"factory_mas-{instance}"
        self.alert_sink = alert_sink
        self._seen_alerts: dict[str, None] = {}  # insertion-ordered: the oldest go first
        self.connected = False
        self.counters: dict[str, int] = {
            "received": 0,
            "received_records": 0,
            "received_alerts": 0,
            "duplicate_alerts": 0,
            "received_predictions": 0,
            "rejected_payloads": 0,
            "published": 0,
            "dropped": 0,
            "connects": 0,
            "disconnects": 0,
        }
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self._memory: deque[tuple[str, bytes]] = deque()
        self._outbox_rows = 0  # in the store, as far as we know
        self._wake_out = asyncio.Event()
        self._tls: ssl.SSLContext | None = None
        self._subs: list[Subscription] = []
        self._tasks: list[asyncio.Task] = []

    @property
    def enabled(self) -> bool:
        return bool(self.settings.broker)

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> MqttBridge:
        if not self.enabled:
            return self
        # A missing package stops start-up here, by name, not later in the connection task.
        import aiomqtt  # noqa: F401

        self._tls = tls_context(self.settings)  # a bad file stops start-up, naming it
        self._outbox_rows = await self.store.read(_outbox_size, self.store.instance)
        # Drop-oldest never drops a protected message: only predictions can be lost here,
        # and only when the bridge itself cannot keep up with the hub.
        self._subs = [
            self.hub.subscribe(f, name=f"mqtt-out:{f}", overflow=Overflow.DROP_OLDEST)
            for f in self.settings.publish
        ]
        self._tasks = [
            asyncio.create_task(self._collect(sub), name=f"mqtt-collect:{sub.filter}")
            for sub in self._subs
        ]
        self._tasks.append(asyncio.create_task(self._connection_loop(), name="mqtt-connection"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            sub.close()
        # The collectors finish what their queues hold (protected messages reach the store
        # outbox, sent at the next start); the connection simply ends. Telemetry received
        # but not yet acknowledged is redelivered by the broker to our persistent session.
        collectors = self._tasks[:-1]  # the last task is the connection's
        if collectors:
            await asyncio.wait(collectors, timeout=5)
        await cancel_all(self._tasks)
        self._tasks = []
        self.connected = False

    # -- hub -> outbox -----------------------------------------------------------------

    async def _collect(self, sub: Subscription) -> None:
        """Take the hub's outgoing messages at once, connected or not, so the hub never
        waits on the broker: protected ones into the store, the rest into memory."""
        while True:
            try:
                messages = await sub.get_many(_OUT_BATCH)
            except SubscriptionClosed:
                return
            durable: list[tuple[str, bytes, float]] = []
            now = time.time()
            for m in messages:
                if self._came_from_broker(m):
                    continue
                payload = self._encode(m)
                if m.protected:
                    durable.append((m.topic, payload, now))
                else:
                    self._remember(m.topic, payload)
            while durable:
                try:
                    await self.store.write(_outbox_add, durable, self.store.instance)
                    self._outbox_rows += len(durable)
                    break
                except StoreError as exc:
                    self.last_error = exc.public
                    log.error("mqtt: cannot keep outgoing messages, retrying: %s", exc)
                    await asyncio.sleep(1.0)
            self._wake_out.set()

    def _came_from_broker(self, m: Message) -> bool:
        # What we took from the broker is not sent back to it (no loops), but what our
        # input caused on other topics (a rejection) is news for the broker's clients.
        return m.origin == ORIGIN and any(matches(f, m.topic) for f in self.settings.subscribe)

    @staticmethod
    def _encode(m: Message) -> bytes:
        if isinstance(m.payload, bytes):
            return m.payload
        if isinstance(m.payload, str):
            return m.payload.encode()
        return _json.encode(m.payload)

    def _remember(self, topic: str, payload: bytes) -> None:
        if len(self._memory) >= self.settings.memory_queue:
            self._memory.popleft()
            self.counters["dropped"] += 1
        self._memory.append((topic, payload))

    # -- the connection ----------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        s = self.settings
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = s.session_expiry_s
        client = aiomqtt.Client(
            **client_options(s, self._tls),
            identifier=self.client_id,
            clean_start=False,
            properties=props,
            max_queued_incoming_messages=s.max_queued_messages,
            max_queued_outgoing_messages=s.max_queued_messages,
        )
        # aiomqtt has no manual acks yet (aiomqtt issue #345); paho, underneath, does: we
        # acknowledge a QoS 1 message only once what it carries is journaled. Set before
        # connecting, so not even a message queued for our session is acked early.
        client._client.manual_ack_set(True)
        client.pending_calls_threshold = s.max_inflight_messages
        return client

    async def _connection_loop(self) -> None:
        import aiomqtt

        s = self.settings
        delay = s.reconnect_min_s
        outage_logged = False
        while True:
            try:
                async with self._client() as client:
                    await self._serve(client, again=self.counters["connects"] > 0)
            except Exception as exc:  # the bridge must outlive any one failure
                causes = _leaves(exc)
                self.last_error = "; ".join(f"{type(e).__name__}: {e}" for e in causes)
                if not all(
                    isinstance(e, aiomqtt.MqttError | OSError | ssl.SSLError) for e in causes
                ):
                    log.exception("mqtt: unexpected failure; reconnecting")
            if self.connected:
                # A connection that worked: the next outage starts its backoff afresh.
                self.counters["disconnects"] += 1
                self.connected, outage_logged, delay = False, False, s.reconnect_min_s
            if not outage_logged:
                log.warning(
                    "mqtt: broker %s:%d unavailable (%s); retrying with backoff",
                    s.broker,
                    s.port,
                    self.last_error,
                )
                outage_logged = True
            # Jitter spreads the reconnects of many instances after a broker restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, s.reconnect_max_s)

    async def _serve(self, client: aiomqtt.Client, again: bool) -> None:
        s = self.settings
        for topic_filter in s.subscribe:
            topic, options = self._subscription(topic_filter)
            await client.subscribe(topic, options=options)
        # Connected means subscribed: only now does nothing sent to us fall on the floor.
        self.connected, self.connected_since = True, time.time()
        self.counters["connects"] += 1
        if again:
            log.info("mqtt: connected to %s:%d again", s.broker, s.port)
        else:
            log.info("mqtt: connected to %s:%d as %s", s.broker, s.port, self.client_id)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive(client))
            tasks.create_task(self._send(client))

    def _subscription(self, topic_filter: str) -> tuple[str, SubscribeOptions]:
        from paho.mqtt.subscribeoptions import SubscribeOptions

        if self.settings.shared_group and topic_filter.startswith("sensors/"):
            # Input is split between the group's instances (telemetry and camera frames
            # alike, or each frame would be scored, alarmed and texted once per instance);
            # config is not: every instance must apply a change. MQTT v5 forbids no-local
            # on a shared subscription.
            group = self.settings.shared_group
            return f"$share/{group}/{topic_filter}", SubscribeOptions(
                qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
            )
        qos = 0 if topic_filter.startswith(LIVE_ONLY) else 1
        # A retained message is an old one the broker hands every new subscription: taken
        # on each (re)subscribe, a retained reading was scored again and a retained config
        # request reverted newer changes. Live messages still arrive, retained or not, and
        # the persistent session queues what is published while we are away.
        return topic_filter, SubscribeOptions(
            qos=qos, noLocal=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
        )

    # -- broker -> hub -----------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        messages = client.messages
        async for first in messages:
            batch = [first]
            while len(messages) and len(batch) < _IN_BATCH:
                batch.append(await anext(messages))
            await self._take(batch)
            for m in batch:
                if m.qos:
                    client._client.ack(m.mid, m.qos)

    async def _take(self, batch: list[aiomqtt.Message]) -> None:
        """Hand a batch to the hub: telemetry through Intake (journaled), the rest as is.

        Returns only once everything is safe to acknowledge. A store outage makes it wait
        and retry: unacknowledged, the broker keeps the messages meanwhile.
        """
        self.counters["received"] += len(batch)
        items: list[Any] = []
        indices: list[int] = []
        alerts: list[Alert] = []
        for m in batch:
            topic = m.topic.value
            data = m.payload if isinstance(m.payload, bytes | bytearray) else b""
            if len(data) > self.settings.max_payload_bytes:
                await self._reject(
                    topic, f"payload of {len(data)} bytes exceeds mqtt.max_payload_bytes", data
                )
                continue
            if matches(TELEMETRY_FILTER, topic):
                decoded = await self._decode(topic, bytes(data))
                if decoded is not None:
                    many = decoded if isinstance(decoded, list) else [decoded]
                    items.extend(many)
                    indices.extend(range(len(many)))
            elif matches(ALERTS_FILTER, topic):
                found = await self._typed(topic, bytes(data), _alerts, "alerts")
                self.counters["received_alerts"] += len(found)
                if self.alert_sink is not None:
                    alerts.extend(found)
                elif found:
                    await self.hub.publish(topic, found, origin=ORIGIN)
            elif matches(PREDICTIONS_FILTER, topic):
                # Decoded here, so their consumers (SCADA, the shift tally) see the same
                # Prediction objects as from a local agent.
                found = await self._typed(topic, bytes(data), _predictions, "predictions")
                self.counters["received_predictions"] += len(found)
                if found:
                    await self.hub.publish(topic, found, origin=ORIGIN)
            else:
                # PPE frames and config requests: their consumers decode and judge them.
                await self.hub.publish(topic, bytes(data), origin=ORIGIN)
        if alerts:
            await self._sink_alerts(alerts)
        while items:
            try:
                await self.intake.accept(
                    items, source=ORIGIN, topic=TELEMETRY, indices=indices, journal=True
                )
                self.counters["received_records"] += len(items)
                break
            except StoreError as exc:
                self.last_error = exc.public
                log.error("mqtt: cannot journal telemetry, holding it: %s", exc)
                await asyncio.sleep(1.0)

    async def _decode(self, topic: str, data: bytes) -> Any:
        try:
            value = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            await self._reject(topic, f"payload is not JSON: {exc}", data)
            return None
        if isinstance(value, dict) or (isinstance(value, list) and value):
            return value
        what = "an empty array" if value == [] else type(value).__name__
        await self._reject(topic, f"expected a record or an array of records, got {what}", data)
        return None

    async def _typed(
        self, topic: str, data: bytes, decoder: msgspec.json.Decoder, what: str
    ) -> list[Any]:
        """One message decoded as a list of `what`; [] (and a rejection) when it is not."""
        try:
            value = decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(topic, f"expected {what} (an object or an array): {exc}", data)
            return []
        return value if isinstance(value, list) else [value]

    async def _sink_alerts(self, alerts: list[Alert]) -> None:
        """Hand alerts to the sink; returns once it has them (then they may be acked)."""
        assert self.alert_sink is not None
        fresh: list[Alert] = []
        for alert in alerts:
            if alert.id in self._seen_alerts:
                self.counters["duplicate_alerts"] += 1
            else:
                self._seen_alerts[alert.id] = None
                fresh.append(alert)
        if fresh:
            # Unacknowledged until it returns: the broker keeps them if we die waiting.
            await self.alert_sink(fresh)
        while len(self._seen_alerts) > _SEEN_ALERTS:
            del self._seen_alerts[next(iter(self._seen_alerts))]

    async def _reject(self, topic: str, reason: str, data: bytes) -> None:
        self.counters["rejected_payloads"] += 1
        preview = data[:200].decode("utf-8", "replace")
        rejection = Rejection(source=f"{ORIGIN}:{topic}", reason=reason, input=preview)
        await self.intake.reject([rejection], ORIGIN)

    # -- outbox -> broker --------------------------------------------------------------

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            if self._outbox_rows:
                rows = await self.store.read(_outbox_head, _OUT_BATCH, self.store.instance)
                if rows:
                    await self._publish_all(client, [(t, p) for _, t, p in rows])
                    await self.store.write(_outbox_delete, [seq for seq, _, _ in rows])
                    self._outbox_rows = max(0, self._outbox_rows - len(rows))
                    continue
                self._outbox_rows = 0
            if self._memory:
                batch = [self._memory.popleft() for _ in range(min(_OUT_BATCH, len(self._memory)))]
                try:
                    await self._publish_all(client, batch)
                except BaseException:
                    # Not sent: back to the front, in order, for the next connection.
                    self._memory.extendleft(reversed(batch))
                    raise
                continue
            self._wake_out.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_out.wait(), _OUTBOX_POLL_S * 20)

    async def _publish_all(self, client: aiomqtt.Client, batch: list[tuple[str, bytes]]) -> None:
        """Publish with QoS 1 and return once the broker has acknowledged all of them."""
        await asyncio.gather(*(client.publish(t, p, qos=1) for t, p in batch))
        self.counters["published"] += len(batch)

    # -- views -------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "broker": f"{self.settings.broker}:{self.settings.port}" if self.enabled else None,
            "client_id": self.client_id if self.enabled else None,
            "connected": self.connected,
            "connected_since": self.connected_since if self.connected else None,
            "shared_group": self.settings.shared_group or None,
            "outbox_waiting": self._outbox_rows,
            "memory_waiting": len(self._memory),
            "last_error": self.last_error,
            **self.counters,
        }
