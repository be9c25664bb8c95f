"""The in-process hub: MQTT topic matching, routing, ordering and overload policies."""

from __future__ import annotations

import asyncio

import pytest

from factory_mas.errors import FactoryError
from factory_mas.hub import (
    Hub,
    Overflow,
    SubscriptionClosed,
    TopicError,
    check_filter,
    check_topic,
    matches,
)

# How long a publish is given to prove that it is waiting. Passing never depends on it
# being short or long: a publish that should wait never completes on its own.
STILL_WAITING_S = 0.05
# Upper bound for something that must complete; it only stops a broken test from hanging.
MUST_FINISH_S = 2.0


async def assert_still_waiting(task: asyncio.Task) -> None:
    done, _ = await asyncio.wait({task}, timeout=STILL_WAITING_S)
    assert not done, "publish completed although the subscriber's queue was full"


# --------------------------------------------------------------------------- matching

MATCH_TABLE = [
    # exact
    ("sport/tennis/player1", "sport/tennis/player1", True),
    ("sport/tennis/player1", "sport/tennis/player2", False),
    ("sport/tennis", "sport/tennis/player1", False),
    ("sport/tennis/player1", "sport/tennis", False),
    ("Sport", "sport", False),  # topic names are case-sensitive
    # + is exactly one level
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # the empty level after the slash is a level
    ("+", "sport", True),
    ("+", "sport/tennis", False),
    ("+/tennis/+", "sport/tennis/player1", True),
    ("+/tennis/+", "sport/golf/player1", False),
    ("sensors/factory/data/+", "sensors/factory/data/7", True),
    ("sensors/factory/data/+", "sensors/factory/data", False),
    # # is any number of levels, including none (the parent itself)
    ("sport/#", "sport", True),
    ("sport/#", "sport/tennis", True),
    ("sport/#", "sport/tennis/player1/ranking", True),
    ("sport/#", "sports", False),
    ("sport/#", "sports/tennis", False),
    ("sport/tennis/#", "sport/tennis", True),
    ("sport/tennis/#", "sport", False),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("+/tennis/#", "sport/tennis", True),
    ("+/+/#", "sport", False),
    ("alerts/#", "alerts/pm_agent", True),
    ("alerts/#", "predictions/pm_agent", False),
    # # alone
    ("#", "sport", True),
    ("#", "sport/tennis/player1", True),
    ("#", "/", True),
    ("#", "/finance", True),
    # +/+ and leading slashes: "/finance" has an empty first level
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/+", "sport", False),
    ("+/+", "sport/tennis", True),
    ("+/+", "sport/tennis/player1", False),
    # trailing slashes and empty levels are levels like any other
    ("sport/", "sport", False),
    ("sport", "sport/", False),
    ("sport/", "sport/", True),
    ("sport//x", "sport//x", True),
    ("sport//x", "sport/x", False),
    ("sport/+/x", "sport//x", True),
    ("/", "/", True),
    ("+/+", "/", True),
    # $ topics are not matched by filters that start with a wildcard (MQTT 3.1.1 4.7.2)
    ("#", "$SYS/broker/clients", False),
    ("#", "$SYS", False),
    ("+/broker/clients", "$SYS/broker/clients", False),
    ("+", "$SYS", False),
    ("+/#", "$SYS/broker", False),
    ("$SYS/#", "$SYS/broker/clients", True),
    ("$SYS/#", "$SYS", True),
    ("$SYS/+/clients", "$SYS/broker/clients", True),
    ("$SYS/broker", "$SYS/broker", True),
    # ...but a $ that is not at the start is an ordinary character
    ("+/$x", "a/$x", True),
    ("#", "a/$SYS", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), MATCH_TABLE)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    "topic_filter",
    ["#", "+", "a", "a/b", "a/+/b", "a/#", "+/+", "+/#", "/", "a//b", "/a/", "$SYS/#", "a/+"],
)
def test_check_filter_accepts_valid_filters(topic_filter: str) -> None:
    assert check_filter(topic_filter) == topic_filter


@pytest.mark.parametrize(
    "topic_filter",
    ["", "a/#/b", "#/a", "#/#", "a+", "+a", "a/b+", "a/+b/c", "#a", "a#", "a/b#", "##", "++"],
)
def test_check_filter_rejects_bad_filters(topic_filter: str) -> None:
    with pytest.raises(TopicError) as info:
        check_filter(topic_filter)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FactoryError)
    assert str(info.value)


@pytest.mark.parametrize(
    "topic", ["a", "a/b", "/", "/a/", "a//b", "$SYS/x", "sensors/factory/data/7"]
)
def test_check_topic_accepts_topic_names(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize("topic", ["", "+", "#", "a/+", "a/#", "a+b", "a/b#", "+/b"])
def test_check_topic_rejects_empty_names_and_wildcards(topic: str) -> None:
    with pytest.raises(TopicError) as info:
        check_topic(topic)
    assert isinstance(info.value, ValueError)


def test_subscribe_rejects_a_bad_filter() -> None:
    hub = Hub()
    with pytest.raises(TopicError):
        hub.subscribe("a/#/b", name="bad")
    assert hub.stats()["subscriptions"] == []


async def test_publish_rejects_a_topic_with_wildcards() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="all")
    with pytest.raises(TopicError):
        await hub.publish("sensors/+", {"x": 1})
    with pytest.raises(TopicError):
        await hub.publish("", {"x": 1})
    assert len(sub) == 0


# --------------------------------------------------------------------------- routing


async def test_publish_delivers_to_every_matching_subscription_and_no_other() -> None:
    hub = Hub()
    all_ = hub.subscribe("#", name="all")
    sensors = hub.subscribe("sensors/#", name="sensors")
    per_level = hub.subscribe("sensors/+/data", name="per_level")
    exact = hub.subscribe("sensors/factory/data", name="exact")
    alerts = hub.subscribe("alerts/#", name="alerts")
    machine = hub.subscribe("sensors/factory/data/+", name="machine")

    payload = {"machine_id": 3}
    delivered = await hub.publish("sensors/factory/data", payload, origin="test")

    assert delivered == 4
    for sub in (all_, sensors, per_level, exact):
        assert len(sub) == 1
        msg = await sub.get()
        assert msg.topic == "sensors/factory/data"
        assert msg.payload is payload
        assert msg.origin == "test"
    assert len(alerts) == 0
    assert len(machine) == 0


async def test_publish_without_subscribers_returns_zero() -> None:
    hub = Hub()
    hub.subscribe("alerts/#", name="alerts")
    assert await hub.publish("sensors/factory/data", 1) == 0


async def test_order_is_preserved_per_subscription() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="all", maxsize=100)
    sent = [(f"sensors/factory/data/{i % 3}", i) for i in range(30)]
    for topic, i in sent:
        await hub.publish(topic, i)
    received = [(m.topic, m.payload) for m in await sub.get_many(100)]
    assert received == sent


async def test_route_cache_sees_a_subscription_added_after_publishes() -> None:
    hub = Hub()
    first = hub.subscribe("sensors/#", name="first")
    assert await hub.publish("sensors/a", 1) == 1
    assert await hub.publish("sensors/a", 2) == 1  # now served from the route cache

    late = hub.subscribe("sensors/+", name="late")
    assert await hub.publish("sensors/a", 3) == 2
    assert [m.payload for m in await late.get_many(10)] == [3]
    assert [m.payload for m in await first.get_many(10)] == [1, 2, 3]


async def test_route_cache_forgets_a_closed_subscription() -> None:
    hub = Hub()
    keep = hub.subscribe("sensors/#", name="keep")
    gone = hub.subscribe("sensors/#", name="gone")
    assert await hub.publish("sensors/a", 1) == 2
    gone.close()
    assert await hub.publish("sensors/a", 2) == 1
    assert [m.payload for m in await keep.get_many(10)] == [1, 2]
    assert [s["name"] for s in hub.stats()["subscriptions"]] == ["keep"]


# --------------------------------------------------------------------------- BLOCK


async def test_block_full_queue_makes_publish_wait_until_a_read() -> None:
    hub = Hub()
    sub = hub.subscribe("sensors/#", name="agent", maxsize=2)  # BLOCK is the default
    assert sub.overflow is Overflow.BLOCK
    await hub.publish("sensors/a", 1)
    await hub.publish("sensors/a", 2)

    third = asyncio.create_task(hub.publish("sensors/a", 3))
    await assert_still_waiting(third)
    assert len(sub) == 2
    assert sub.waits == 1

    assert (await sub.get()).payload == 1
    assert await asyncio.wait_for(third, MUST_FINISH_S) == 1
    assert [m.payload for m in await sub.get_many(10)] == [2, 3]
    assert sub.dropped == 0
    assert sub.waits == 1
    assert sub.stats()["publisher_waits"] == 1


async def test_block_wait_holds_back_later_publishes_in_order() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="agent", maxsize=1)
    await hub.publish("t", 1)
    second = asyncio.create_task(hub.publish("t", 2))
    await assert_still_waiting(second)
    assert (await sub.get()).payload == 1
    await asyncio.wait_for(second, MUST_FINISH_S)
    assert (await sub.get()).payload == 2


async def test_get_many_makes_room_for_a_blocked_publisher() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="agent", maxsize=2)
    await hub.publish("t", 1)
    await hub.publish("t", 2)
    blocked = asyncio.create_task(hub.publish("t", 3))
    await assert_still_waiting(blocked)
    assert [m.payload for m in await sub.get_many(5)] == [1, 2]
    await asyncio.wait_for(blocked, MUST_FINISH_S)
    assert [m.payload for m in await sub.get_many(5)] == [3]


# --------------------------------------------------------------------------- DROP_OLDEST


async def test_drop_oldest_drops_the_oldest_unprotected_message_without_waiting() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="live", maxsize=2, overflow=Overflow.DROP_OLDEST)
    for i in range(5):
        await asyncio.wait_for(hub.publish("sensors/factory/data", i), MUST_FINISH_S)
    assert [m.payload for m in await sub.get_many(10)] == [3, 4]
    assert sub.dropped == 3
    assert sub.waits == 0
    assert sub.stats()["dropped"] == 3


@pytest.mark.parametrize(
    "topic",
    [
        "alerts/pm_agent",
        "alerts/cyber_agent",
        "orchestrator/decisions",
        "config/pm_agent",
        "backlog/shift_summary",
    ],
)
def test_protected_topics(topic: str) -> None:
    assert Hub().is_protected(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "sensors/factory/data",
        "sensors/factory/rejected",
        "predictions/pm_agent",
        "orchestrator/decisions/extra",
        "orchestrator",
        "alertsx/pm_agent",
    ],
)
def test_unprotected_topics(topic: str) -> None:
    assert not Hub().is_protected(topic)


async def test_messages_carry_their_protected_flag() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="all")
    await hub.publish("alerts/pm_agent", "a")
    await hub.publish("sensors/factory/data", "s")
    first, second = await sub.get_many(2)
    assert first.protected is True
    assert second.protected is False


async def test_drop_oldest_full_of_protected_messages_makes_a_protected_publish_wait() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="live", maxsize=2, overflow=Overflow.DROP_OLDEST)
    await hub.publish("alerts/pm_agent", "a1")
    await hub.publish("orchestrator/decisions", "d1")

    third = asyncio.create_task(hub.publish("config/pm_agent", "c1"))
    await assert_still_waiting(third)
    assert sub.dropped == 0
    assert sub.waits == 1

    assert (await sub.get()).payload == "a1"
    await asyncio.wait_for(third, MUST_FINISH_S)
    assert [m.payload for m in await sub.get_many(10)] == ["d1", "c1"]
    assert sub.dropped == 0


async def test_drop_oldest_never_drops_protected_messages_for_unprotected_ones() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="live", maxsize=2, overflow=Overflow.DROP_OLDEST)
    await hub.publish("alerts/pm_agent", "a1")
    await hub.publish("backlog/shift_summary", "b1")

    late = asyncio.create_task(hub.publish("sensors/factory/data", "s1"))
    await asyncio.wait({late}, timeout=STILL_WAITING_S)
    # Whatever happens to the telemetry, both protected messages are still there.
    assert [(await sub.get()).payload, (await sub.get()).payload] == ["a1", "b1"]
    await asyncio.wait_for(late, MUST_FINISH_S)
    assert sub.dropped == 0


async def test_drop_oldest_skips_a_protected_head_and_drops_an_unprotected_one() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="live", maxsize=3, overflow=Overflow.DROP_OLDEST)
    await hub.publish("alerts/pm_agent", "a1")
    await hub.publish("sensors/factory/data", "s1")
    await hub.publish("sensors/factory/data", "s2")

    await asyncio.wait_for(hub.publish("sensors/factory/data", "s3"), MUST_FINISH_S)

    assert [m.payload for m in await sub.get_many(10)] == ["a1", "s2", "s3"]
    assert sub.dropped == 1
    assert sub.waits == 0


async def test_drop_oldest_makes_room_for_a_protected_message_by_dropping_telemetry() -> None:
    # A live view (dashboard WebSocket) full of stale telemetry must not stall the alert
    # path: the oldest unprotected message makes room, and no protected one is lost.
    hub = Hub()
    sub = hub.subscribe("#", name="live", maxsize=3, overflow=Overflow.DROP_OLDEST)
    await hub.publish("alerts/pm_agent", "a1")
    await hub.publish("sensors/factory/data", "s1")
    await hub.publish("sensors/factory/data", "s2")

    alert = asyncio.create_task(hub.publish("alerts/pm_agent", "a2"))
    done, _ = await asyncio.wait({alert}, timeout=STILL_WAITING_S)
    try:
        assert done, "the alert publish waited although an unprotected message could be dropped"
        assert [m.payload for m in await sub.get_many(10)] == ["a1", "s2", "a2"]
        assert sub.dropped == 1
        assert sub.waits == 0
    finally:
        sub.close()
        await asyncio.wait_for(alert, MUST_FINISH_S)


# --------------------------------------------------------------------------- closing


async def test_close_releases_a_blocked_publisher() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="agent", maxsize=1)
    await hub.publish("t", 1)
    blocked = asyncio.create_task(hub.publish("t", 2))
    await assert_still_waiting(blocked)

    sub.close()
    await asyncio.wait_for(blocked, MUST_FINISH_S)
    assert sub.closed
    assert await hub.publish("t", 3) == 0  # no longer subscribed


async def test_close_ends_async_for_after_the_queued_messages() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="reader")
    got: list[int] = []
    first_seen = asyncio.Event()

    async def read() -> None:
        async for msg in sub:
            got.append(msg.payload)
            first_seen.set()

    reader = asyncio.create_task(read())
    await hub.publish("t", 1)
    await asyncio.wait_for(first_seen.wait(), MUST_FINISH_S)
    await assert_still_waiting(reader)  # waits on an empty queue

    await hub.publish("t", 2)
    sub.close()
    await asyncio.wait_for(reader, MUST_FINISH_S)
    assert got == [1, 2]


async def test_get_on_a_closed_empty_subscription_raises() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="reader")
    waiting = asyncio.create_task(sub.get())
    await assert_still_waiting(waiting)
    sub.close()
    with pytest.raises(SubscriptionClosed):
        await asyncio.wait_for(waiting, MUST_FINISH_S)
    with pytest.raises(SubscriptionClosed):
        await sub.get()


async def test_subscription_as_context_manager_and_hub_close() -> None:
    hub = Hub()
    with hub.subscribe("a/#", name="ctx") as sub:
        assert await hub.publish("a/b", 1) == 1
    assert sub.closed
    assert await hub.publish("a/b", 2) == 0

    s1 = hub.subscribe("#", name="one")
    s2 = hub.subscribe("#", name="two")
    hub.close()
    assert s1.closed and s2.closed
    assert hub.stats()["subscriptions"] == []


# --------------------------------------------------------------------------- batching, stats


async def test_get_many_takes_up_to_limit() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="batcher", maxsize=10)
    for i in range(5):
        await hub.publish("t", i)
    assert [m.payload for m in await sub.get_many(3)] == [0, 1, 2]
    assert [m.payload for m in await sub.get_many(10)] == [3, 4]
    assert len(sub) == 0


async def test_get_many_waits_for_the_first_message() -> None:
    hub = Hub()
    sub = hub.subscribe("#", name="batcher")
    batch = asyncio.create_task(sub.get_many(10))
    await assert_still_waiting(batch)
    await hub.publish("t", "x")
    assert [m.payload for m in await asyncio.wait_for(batch, MUST_FINISH_S)] == ["x"]


async def test_per_topic_counters_count_messages_and_items() -> None:
    hub = Hub()
    hub.subscribe("#", name="all")
    await hub.publish("sensors/factory/data", [{"m": 1}, {"m": 2}, {"m": 3}])
    await hub.publish("sensors/factory/data", {"m": 4})
    await hub.publish("sensors/factory/data", [])
    await hub.publish("alerts/pm_agent", {"level": "WARNING"})
    await hub.publish("nobody/listens", "x")  # counted even without subscribers

    topics = hub.stats()["topics"]
    assert set(topics) == {"sensors/factory/data", "alerts/pm_agent", "nobody/listens"}
    assert topics["sensors/factory/data"]["messages"] == 3
    assert topics["sensors/factory/data"]["items"] == 4
    assert topics["alerts/pm_agent"]["messages"] == 1
    assert topics["alerts/pm_agent"]["items"] == 1
    assert topics["nobody/listens"]["messages"] == 1
    assert topics["sensors/factory/data"]["last_at"] > 0


async def test_stats_report_each_subscription() -> None:
    hub = Hub(queue_size=4)
    agent = hub.subscribe("sensors/#", name="pm_agent")
    live = hub.subscribe("#", name="ws", maxsize=2, overflow=Overflow.DROP_OLDEST)
    for i in range(3):
        await hub.publish("sensors/factory/data", i)
    await agent.get()
    assert [m.payload for m in await live.get_many(10)] == [1, 2]

    subs = {s["name"]: s for s in hub.stats()["subscriptions"]}
    assert subs["pm_agent"] == {
        "name": "pm_agent",
        "filter": "sensors/#",
        "overflow": "block",
        "depth": 2,
        "maxsize": 4,  # the hub's queue_size is the default
        "high_water": 3,
        "delivered": 3,
        "dropped": 0,
        "publisher_waits": 0,
    }
    assert subs["ws"] == {
        "name": "ws",
        "filter": "#",
        "overflow": "drop_oldest",
        "depth": 0,
        "maxsize": 2,
        "high_water": 2,
        "delivered": 3,
        "dropped": 1,
        "publisher_waits": 0,
    }
