"""Waiting for what another task or process makes true, with a hang guard."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def until(
    predicate: Callable[[], Any], what: str, timeout_s: float = 30.0, interval_s: float = 0.01
) -> Any:
    """Wait for what another task makes true; `predicate` may be async (a probe over HTTP,
    Modbus, OPC UA). The timeout is only a hang guard."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = predicate()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval_s)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def wait_until(
    predicate, timeout_s: float = 20.0, interval_s: float = 0.05, what: str = "condition"
):
    """Poll a condition that another process makes true; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}")
