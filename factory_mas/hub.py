"""In-process publish/subscribe with MQTT topic names and filters.

Every component talks through the hub, using the same topic names a real broker carries,
so the MQTT bridge is a loop that copies messages rather than a translation layer.

Overload policy, per subscription and per message:
- BLOCK (the default): a full queue makes `publish` wait. Telemetry producers (HTTP
  ingest, the MQTT bridge, the replay publisher) therefore slow down to what the agents
  can score: back-pressure, not loss.
- DROP_OLDEST: for live views that prefer fresh data to complete data. The oldest
  *unprotected* message makes room. Protected topics (alerts, decisions, config, shift
  summaries) are never dropped by any subscription: only when the queue holds nothing
  but protected messages does a publisher wait, as with BLOCK.

A component must not subscribe to a topic that it publishes from the same task, or a full
queue would wait on itself.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import FactoryError
from .topics import PROTECTED_FILTERS

_TOPIC_CACHE_MAX = 10_000
_STATS_TOPICS_MAX = 2_000


class TopicError(FactoryError, ValueError):
    """A topic name or filter breaks the MQTT rules."""


class SubscriptionClosed(FactoryError):
    """The subscription was closed while a reader waited on it."""


class Overflow(enum.Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


def check_filter(topic_filter: str) -> str:
    """Return the filter if it is valid MQTT (`+` a whole level, `#` last and whole)."""
    if not topic_filter:
        raise TopicError("a topic filter must not be empty")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"{topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise TopicError(f"{topic_filter!r}: '+' must be a whole level")
    return topic_filter


def check_topic(topic: str) -> str:
    if not topic or "+" in topic or "#" in topic:
        raise TopicError(f"{topic!r}: a topic name must be non-empty and hold no wildcards")
    return topic


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: `+` is one level, `#` is any number of levels including none.

    Per MQTT 3.1.1 section 4.7.2, filters starting with a wildcard do not match topics
    starting with `$` (broker-internal topics such as $SYS).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


@dataclass(slots=True, frozen=True)
class Message:
    topic: str
    payload: Any
    # Who published it; the MQTT bridge uses it not to echo its own messages back.
    origin: str = ""
    protected: bool = False
    # Position in the store's ingest journal; 0 for messages that were not journaled.
    seq: int = 0

    @property
    def items(self) -> int:
        """How many records the message carries (a batch is one message)."""
        return len(self.payload) if isinstance(self.payload, list) else 1


@dataclass(slots=True)
class TopicStats:
    messages: int = 0
    items: int = 0
    last_at: float = 0.0


class Subscription:
    """A bounded queue of messages matching one filter; iterate it or call get()."""

    def __init__(self, hub: Hub, topic_filter: str, name: str, maxsize: int, overflow: Overflow):
        self.hub = hub
        self.filter = topic_filter
        self.name = name
        self.maxsize = maxsize
        self.overflow = overflow
        self.delivered = 0
        self.dropped = 0
        self.waits = 0  # times a publisher had to wait for room: the back-pressure signal
        self.high_water = 0
        self._items: deque[Message] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    async def _put(self, message: Message) -> None:
        while len(self._items) >= self.maxsize and not self.closed:
            if self.overflow is Overflow.DROP_OLDEST and self._drop():
                break
            self.waits += 1
            self._not_full.clear()
            await self._not_full.wait()
        if self.closed:
            return
        self._items.append(message)
        self.delivered += 1
        self.high_water = max(self.high_water, len(self._items))
        self._not_empty.set()

    def _drop(self) -> bool:
        for i, queued in enumerate(self._items):
            if not queued.protected:
                del self._items[i]
                self.dropped += 1
                return True
        return False

    async def get(self) -> Message:
        while not self._items:
            if self.closed:
                raise SubscriptionClosed(f"subscription {self.name!r} on {self.filter!r} is closed")
            self._not_empty.clear()
            await self._not_empty.wait()
        message = self._items.popleft()
        self._not_full.set()
        return message

    async def get_many(self, limit: int, wait_s: float = 0.0) -> list[Message]:
        """Wait for one message, then gather more: the micro-batch.

        Stops at `limit` items (a message carrying a list counts its length) or when
        nothing more arrives within `wait_s` of the first. Under load the queue already
        holds plenty and no time is spent waiting; when idle a lone record waits `wait_s`.
        """
        batch = [await self.get()]
        items = batch[0].items
        deadline: float | None = None
        while items < limit:
            if self._items:
                message = self._items.popleft()
                batch.append(message)
                items += message.items
                continue
            if wait_s <= 0 or self.closed:
                break
            now = time.monotonic()
            deadline = deadline or now + wait_s
            if now >= deadline:
                break
            self._not_full.set()
            self._not_empty.clear()
            try:
                await asyncio.wait_for(self._not_empty.wait(), deadline - now)
            except TimeoutError:
                break
        self._not_full.set()
        return batch

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.get()
        except SubscriptionClosed:
            raise StopAsyncIteration from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._remove(self)
            # Wake readers (they see `closed`) and blocked publishers (they give up on us).
            self._not_empty.set()
            self._not_full.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "filter": self.filter,
            "overflow": self.overflow.value,
            "depth": len(self._items),
            "maxsize": self.maxsize,
            "high_water": self.high_water,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "publisher_waits": self.waits,
        }


@dataclass
class Hub:
    queue_size: int = 256
    protected_filters: Iterable[str] = PROTECTED_FILTERS
    _subs: list[Subscription] = field(default_factory=list)
    _route_cache: dict[str, tuple[Subscription, ...]] = field(default_factory=dict)
    _protected_cache: dict[str, bool] = field(default_factory=dict)
    topics: dict[str, TopicStats] = field(default_factory=dict)

    def subscribe(
        self,
        topic_filter: str,
        *,
        name: str,
        maxsize: int | None = None,
        overflow: Overflow = Overflow.BLOCK,
    ) -> Subscription:
        sub = Subscription(
            self, check_filter(topic_filter), name, maxsize or self.queue_size, overflow
        )
        self._subs.append(sub)
        self._route_cache.clear()
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._route_cache.clear()

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        subs = self._route_cache.get(topic)
        if subs is None:
            if len(self._route_cache) >= _TOPIC_CACHE_MAX:
                self._route_cache.clear()
            check_topic(topic)
            subs = tuple(s for s in self._subs if matches(s.filter, topic))
            self._route_cache[topic] = subs
        return subs

    def is_protected(self, topic: str) -> bool:
        flag = self._protected_cache.get(topic)
        if flag is None:
            flag = any(matches(f, topic) for f in self.protected_filters)
            if len(self._protected_cache) < _TOPIC_CACHE_MAX:
                self._protected_cache[topic] = flag
        return flag

    async def publish(self, topic: str, payload: Any, origin: str = "", seq: int = 0) -> int:
        """Deliver to every matching subscription; returns how many got it.

        Waits while a BLOCK subscriber's queue is full: that wait is the back-pressure.
        """
        subs = self._route(topic)
        message = Message(topic, payload, origin, self.is_protected(topic), seq)
        self._count(message)
        for sub in subs:
            await sub._put(message)
        return len(subs)

    def _count(self, message: Message) -> None:
        stats = self.topics.get(message.topic)
        if stats is None:
            key = message.topic if len(self.topics) < _STATS_TOPICS_MAX else "(other)"
            stats = self.topics.setdefault(key, TopicStats())
        stats.messages += 1
        stats.items += message.items
        stats.last_at = time.time()

    def stats(self) -> dict[str, Any]:
        return {
            "topics": {
                t: {"messages": s.messages, "items": s.items, "last_at": s.last_at}
                for t, s in sorted(self.topics.items())
            },
            "subscriptions": [s.stats() for s in self._subs],
        }

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()
