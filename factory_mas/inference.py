"""One shared thread pool for CPU-bound model calls, with latency figures per caller.

numpy and scikit-learn release the GIL inside their kernels, so a couple of threads keep
the event loop free while a batch is scored. Agents hand over whole batches (whatever
queued up while the previous batch ran), which is the micro-batching: under load the
batches grow and the per-record cost falls; when idle a record is scored alone, at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class LatencyWindow:
    """The last N durations, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 1024) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self.total_s += seconds

    def summary(self) -> dict[str, float]:
        if not self._samples:
            return {"count": 0}
        ordered = sorted(self._samples)

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 3)

        return {"count": self.count, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


class Inference:
    """`async with Inference(threads) as pool:`; `await pool.run(fn, *args)`."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    async def __aenter__(self) -> Inference:
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="inference")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def run(self, fn: Callable[..., T], *args: Any, timing: LatencyWindow | None = None) -> T:
        if self._pool is None:
            raise RuntimeError("the inference pool is not running")
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        if timing is not None:
            timing.add(time.perf_counter() - started)
        return result
