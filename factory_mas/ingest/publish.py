"""The replay publisher's MQTT side: `python -m factory_mas replay --mqtt`.

Publishes the replay stream to a broker the way a plant gateway would: one record per
message or arrays of up to --batch records, on sensors/factory/data or per-machine topics.

A dropped broker loses nothing: every message stays here until the broker acknowledged
it (QoS 1), and each connection gets a fresh client. aiomqtt 2.5 raises MqttError at once
for a publish while disconnected, yet paho underneath has queued the message for the next
connection of the same client; re-using the client would send it twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import msgspec

from ..bridges.connection import client_options, tls_context
from ..errors import FactoryError, SettingsError
from ..settings import MqttSettings
from ..tasks import cancel
from ..topics import TELEMETRY

log = logging.getLogger(__name__)

# Messages held here (waiting or unacknowledged) before the replay has to wait: enough to
# ride out a broker restart at full speed without letting memory grow without bound.
_MAX_HELD_MESSAGES = 10_000
_json = msgspec.json.Encoder()


class BrokerUnreachable(FactoryError, ConnectionError):
    """The broker refused the first connection or could not be reached at all."""


# ------------------------------------------------------------------ argument parsing


def parse_broker(value: str, default_port: int) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[v6]:PORT' or 'mqtt://HOST:PORT' -> (host, port)."""
    text = value.strip()
    text = re.sub(r"^(?:mqtt|tcp)://", "", text)
    match = re.fullmatch(
        r"\[(?P<v6>[0-9A-Fa-f:.]+)\](?::(?P<p6>[^:]*))?|(?P<host>[^:/\s\[\]]+)(?::(?P<port>[^:]*))?",
        text,
    )
    if not match:
        raise SettingsError(f"broker {value!r}: expected HOST or HOST:PORT, e.g. 127.0.0.1:1883")
    host = match["v6"] or match["host"]
    port_text = match["p6"] if match["v6"] else match["port"]
    if port_text is None:
        return host, default_port
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise SettingsError(f"broker {value!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


def parse_machine_ids(spec: str) -> frozenset[int]:
    """'1-10,15' -> {1, ..., 10, 15}."""
    ids: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise SettingsError(f"machines {spec!r}: expected ids and ranges such as 1-10,15")
        first, last = int(match[1]), int(match[2] or match[1])
        if first < 1 or last < first:
            raise SettingsError(f"machines {spec!r}: {part!r} is not a range of ids from 1 up")
        ids.update(range(first, last + 1))
    return frozenset(ids)


def machine_id_of(row: dict[str, Any]) -> int | None:
    """The machine id of a replayed row, under either spelling (machine_id, Machine_ID);
    None when it has none a consumer would accept."""
    for key, value in row.items():
        if isinstance(key, str) and key.lower() == "machine_id":
            if isinstance(value, bool):
                return None
            if isinstance(value, int):
                return value
            if isinstance(value, str) and value.strip().isdigit():
                return int(value)
            return None
    return None


def only_machines(ids: Iterable[int]) -> Callable[[dict[str, Any]], bool]:
    wanted = frozenset(ids)
    return lambda row: machine_id_of(row) in wanted


# ------------------------------------------------------------------ the publisher


@dataclass(slots=True)
class _Message:
    seq: int
    topic: str
    payload: bytes
    records: int


class MqttPublisher:
    """`async with MqttPublisher(settings) as p: await p.publish(...); await p.drain()`.

    Entering connects once and fails with BrokerUnreachable when that is impossible;
    later drops are retried with backoff (settings.reconnect_min_s .. reconnect_max_s)
    while publish() keeps taking messages, up to a bound, then waits.
    """

    def __init__(self, settings: MqttSettings, qos: int = 1) -> None:
        if qos not in (0, 1):
            raise SettingsError(f"qos {qos!r}: use 0 or 1")
        self.settings = settings
        self.qos = qos
        # Never settings.client_id: that is the server bridge's session, which a second
        # client with the same id would take over.
        self.client_id = f"factory_mas-replay-{socket.gethostname()}-{os.getpid()}"
        self.window = settings.max_inflight_messages
        self.max_held = max(_MAX_HELD_MESSAGES, self.window)
        self.connected = False
        self.connects = 0
        self.last_error: str | None = None
        self.messages_sent = 0
        self.records_sent = 0
        self._seq = 0
        self._waiting: deque[_Message] = deque()
        self._unacked: dict[int, _Message] = {}  # seq -> message, oldest first
        self._changed = asyncio.Event()
        self._runner: asyncio.Task | None = None

    @property
    def where(self) -> str:
        scheme = "mqtts" if self.settings.tls else "mqtt"
        host = self.settings.broker
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.settings.port}"

    @property
    def held_records(self) -> int:
        """Records published by the caller that the broker has not acknowledged yet."""
        return sum(m.records for m in self._waiting) + sum(
            m.records for m in self._unacked.values()
        )

    async def __aenter__(self) -> MqttPublisher:
        client = self._client()
        try:
            await client.__aenter__()
        except (aiomqtt.MqttError, OSError) as exc:
            raise BrokerUnreachable(f"cannot reach MQTT broker {self.where}: {exc}") from exc
        self._up()
        self._runner = asyncio.create_task(self._run(client), name="mqtt-replay-publisher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await cancel(self._runner)

    async def publish(self, topic: str, payload: bytes, records: int = 1) -> None:
        """Hand a message over; returns once it is held here (not yet acknowledged)."""
        while len(self._waiting) + len(self._unacked) >= self.max_held:
            await self._wait_changed()
        self._seq += 1
        self._waiting.append(_Message(self._seq, topic, payload, records))
        self._notify()

    async def drain(self) -> None:
        """Return once the broker acknowledged every message handed over so far."""
        while self._waiting or self._unacked:
            await self._wait_changed()

    # -- internals ---------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self) -> None:
        if self._runner is None:
            raise RuntimeError("MqttPublisher used outside `async with`")
        waiter = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._runner.done():
            # Only a bug ends the runner: raise it instead of waiting forever.
            self._runner.result()
            raise RuntimeError("the MQTT publisher stopped")

    def _client(self) -> aiomqtt.Client:
        client = aiomqtt.Client(
            **client_options(self.settings, tls_context(self.settings)),
            identifier=self.client_id,
        )
        # aiomqtt warns above 10 unacknowledged publishes; a window of them is the point.
        client.pending_calls_threshold = self.window + 1
        return client

    def _up(self) -> None:
        self.connected = True
        self.connects += 1
        self.last_error = None

    async def _run(self, client: aiomqtt.Client) -> None:
        s = self.settings
        while True:
            try:
                await self._serve(client)
            except* (aiomqtt.MqttError, OSError) as group:
                self.last_error = _reason(group.exceptions[0])
            finally:
                self.connected = False
                with contextlib.suppress(aiomqtt.MqttError, OSError):
                    await client.__aexit__(None, None, None)
            # Unacknowledged messages go out again first, in their order.
            self._waiting.extendleft(reversed(self._unacked.values()))
            self._unacked.clear()
            self._notify()
            log.warning(
                "MQTT broker %s lost (%s); reconnecting, %d records kept",
                self.where,
                self.last_error,
                self.held_records,
            )
            delay = s.reconnect_min_s
            while True:
                # Jitter spreads the reconnects of many publishers after a broker restart.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, s.reconnect_max_s)
                client = self._client()
                try:
                    await client.__aenter__()
                except (aiomqtt.MqttError, OSError) as exc:
                    self.last_error = _reason(exc)
                    continue
                break
            self._up()
            log.info("MQTT broker %s is back", self.where)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Publish until the connection breaks (raises) or the task is cancelled."""
        window = asyncio.Semaphore(self.window)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch(client))
            while True:
                while not self._waiting:
                    await self._changed.wait()
                await window.acquire()
                message = self._waiting.popleft()
                self._unacked[message.seq] = message
                tasks.create_task(self._send(client, message, window))

    @staticmethod
    async def _watch(client: aiomqtt.Client) -> None:
        # Nothing is subscribed: the iterator only ends, with MqttError, on a disconnect.
        async for _ in client.messages:
            pass

    async def _send(
        self, client: aiomqtt.Client, message: _Message, window: asyncio.Semaphore
    ) -> None:
        try:
            # No timeout: a lost connection ends this through _watch; a timeout on a slow
            # but live broker would only send the message twice.
            await client.publish(message.topic, message.payload, qos=self.qos, timeout=math.inf)
        finally:
            window.release()
        del self._unacked[message.seq]
        self.messages_sent += 1
        self.records_sent += message.records
        self._notify()


def _reason(exc: BaseException) -> str:
    # aiomqtt's "Disconnected during message iteration" keeps the real cause underneath.
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    return str(cause) or type(cause).__name__


# ------------------------------------------------------------------ the replay sink


class ReplaySink:
    """A Replay sink: a replay step's rows as messages of up to `batch` records each.

    batch 1 sends one JSON object per message, more sends JSON arrays. Rows of one step
    are never held back to fill a batch for the next: a replay imitates live sensors.
    """

    def __init__(
        self,
        publisher: MqttPublisher,
        batch: int = 1,
        per_machine_topics: bool = False,
        max_payload_bytes: int | None = None,
    ) -> None:
        if batch < 1:
            raise SettingsError(f"batch {batch}: at least 1 record per message")
        self.publisher = publisher
        self.batch = batch
        self.per_machine_topics = per_machine_topics
        self.max_payload_bytes = max_payload_bytes or publisher.settings.max_payload_bytes

    def topic(self, row: dict[str, Any]) -> str:
        if self.per_machine_topics:
            machine_id = machine_id_of(row)
            # A row without a usable id still goes out: the server rejects it, with reason.
            if machine_id is not None:
                return f"{TELEMETRY}/{machine_id}"
        return TELEMETRY

    async def __call__(self, rows: list[dict[str, Any]], _indices: list[int] | None) -> None:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_topic.setdefault(self.topic(row), []).append(row)
        for topic, group in by_topic.items():
            for start in range(0, len(group), self.batch):
                chunk = group[start : start + self.batch]
                payload = _json.encode(chunk[0] if self.batch == 1 else chunk)
                if len(payload) > self.max_payload_bytes:
                    raise SettingsError(
                        f"batch {self.batch}: a message of {len(chunk)} records is "
                        f"{len(payload)} bytes, over mqtt.max_payload_bytes "
                        f"{self.max_payload_bytes}; use a smaller --batch"
                    )
                await self.publisher.publish(topic, payload, len(chunk))


def progress_line(publisher: MqttPublisher, started_at: float, topic: str) -> str:
    """What `replay --mqtt` shows on stderr, refreshed about once a second."""
    elapsed = time.monotonic() - started_at
    rate = publisher.records_sent / elapsed if elapsed > 0 else 0.0
    line = (
        f"replay: {publisher.records_sent} records in {publisher.messages_sent} messages "
        f"to {publisher.where} {topic} ({rate:.1f}/s)"
    )
    if not publisher.connected:
        line += f"; broker lost ({publisher.last_error}), {publisher.held_records} records kept"
    return line
