"""Stopping background tasks: one way, used by every component."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


async def cancel(*tasks: asyncio.Task | None) -> None:
    """Cancel the tasks and wait until each has finished unwinding (None is skipped)."""
    await cancel_all(tasks)


async def cancel_all(tasks: Iterable[asyncio.Task | None]) -> None:
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    for task in running:
        with contextlib.suppress(asyncio.CancelledError):
            await task
