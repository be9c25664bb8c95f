"""Background tasks: one way to stop them, used by every component, and one way to run a
store chore on an interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable

from .errors import StoreError


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


async def retry_every(
    interval_s: float, chore: Callable[[], Awaitable[object]], log: logging.Logger, what: str
) -> None:
    """Run `chore` every `interval_s` until cancelled. A failing store (or one closed under
    it) is logged once, as "`what`, retrying", until the chore succeeds again: a chore
    that is due again soon must not fill the log while the disk is full."""
    failing = False
    while True:
        await asyncio.sleep(interval_s)
        try:
            await chore()
        except (StoreError, RuntimeError) as exc:  # RuntimeError: the store is closed
            if not failing:
                failing = True
                log.error("%s, retrying: %s", what, exc)
        else:
            failing = False
