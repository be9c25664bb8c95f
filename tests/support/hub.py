"""Reading what arrives on a hub subscription."""

from __future__ import annotations

import asyncio
from typing import Any

from factory_mas.hub import Subscription


async def collect(sub: Subscription, n: int, timeout_s: float = 15.0) -> list[Any]:
    """Items from a subscription until n have arrived (a message may hold a batch)."""
    items: list[Any] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(items) < n:
                message = await sub.get()
                items.extend(
                    message.payload if isinstance(message.payload, list) else [message.payload]
                )
    except TimeoutError:
        raise AssertionError(f"only {len(items)} of {n} items arrived on {sub.filter}") from None
    return items


async def drain(sub: Subscription) -> list[Any]:
    """What is already queued on a subscription (get() returns at once while len(sub) > 0)."""
    items: list[Any] = []
    while len(sub):
        message = await sub.get()
        items.extend(message.payload if isinstance(message.payload, list) else [message.payload])
    return items
