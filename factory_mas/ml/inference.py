"""One shared thread pool for CPU-bound model calls, with latency figures per caller.

numpy and LiteRT release the GIL inside their kernels, so a couple of threads keep
the event loop free while a batch is scored. Agents hand over whole batches (whatever
queued up while the previous batch ran), which is the micro-batching: under load the
batches grow and the per-record cost falls; when idle a record is scored alone, at once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import ArtifactError

T = TypeVar("T")


class LatencyWindow:
    """The last N durations, for p50/p99 without unbounded memory."""

    def __init__(self, size: int = 1024) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self.count = 0
        self.total_s = 0.0
        # Also told every duration (a Prometheus histogram): the window forgets, a
        # histogram's buckets do not, and rates over them need every observation.
        self.observer: Callable[[float], None] | None = None

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self.count += 1
        self.total_s += seconds
        if self.observer is not None:
            self.observer(seconds)

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


def _bucket(n: int) -> int:
    """The next power of two: a handful of tensor shapes instead of one per batch size."""
    return 1 << max(0, (n - 1).bit_length())


class LiteRtModel:
    """A .tflite model served with LiteRT, without importing TensorFlow.

    An interpreter is not thread-safe, so each pool thread gets its own. Batches are padded
    to a power of two so an interpreter re-allocates its tensors for a few sizes only; rows
    do not influence each other, so the padding changes no result.
    """

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version
        self._content = path.read_bytes()
        self._local = threading.local()
        try:
            interpreter = self._interpreter()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path} is not a LiteRT model: {exc}") from exc
        inp = interpreter.get_input_details()
        out = interpreter.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise ArtifactError(f"{path}: expected one input and one output tensor")
        self.input_shape = tuple(int(d) for d in inp[0]["shape_signature"])
        self.output_shape = tuple(int(d) for d in out[0]["shape_signature"])

    def _interpreter(self) -> Any:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self._content, num_threads=1)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
            self._local.rows = None
        return interpreter

    def predict(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n == 0:
            return np.zeros((0, *self.output_shape[1:]), np.float32)
        interpreter = self._interpreter()
        inp = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]
        rows = _bucket(n)
        if self._local.rows != rows:
            interpreter.resize_tensor_input(inp, [rows, *x.shape[1:]])
            interpreter.allocate_tensors()
            self._local.rows = rows
        padded = np.zeros((rows, *x.shape[1:]), np.float32)
        padded[:n] = x
        interpreter.set_tensor(inp, padded)
        interpreter.invoke()
        return interpreter.get_tensor(out)[:n].copy()
