"""The replay publisher: a steady stream of telemetry from the simulator or a CSV file,
and frames from simulated cameras.

On by default in `serve`, so a new user sees all machines (and the PPE agent) live at once.
The same Replay class drives `python -m factory_mas replay`, which sends the stream to a
running server instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import FactoryError
from ..settings import ReplaySettings
from ..sim.synthetic import FactorySimulator
from ..tasks import cancel
from ..topics import ppe_frames
from .csv_reader import read_batches

log = logging.getLogger(__name__)

# (rows, what to call each row in error messages, e.g. CSV line numbers) -> awaitable
Sink = Callable[[list[dict[str, Any]], list[int] | None], Awaitable[Any]]
# When the consumer stalled for longer than this, the schedule restarts from now instead of
# bursting to catch up: a replay imitates a plant, and a plant does not send a backlog.
_MAX_LAG_S = 1.0
_FAST_TICKS = 20


class _Background:
    """`async with` runs `run()` as a task until the block ends; a FactoryError stops it
    and is kept in `error` (for /status) instead of being lost with the task."""

    _task: asyncio.Task | None = None
    error: str | None = None

    async def run(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def __aenter__(self) -> _Background:
        self._task = asyncio.create_task(self._guarded(), name=type(self).__name__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self._task)

    async def _guarded(self) -> None:
        try:
            await self.run()
        except FactoryError as exc:
            self.error = str(exc)
            log.error("%s stopped: %s", type(self).__name__, exc)


class Replay(_Background):
    def __init__(
        self,
        settings: ReplaySettings,
        sink: Sink,
        retime: bool = True,
        limit: int | None = None,
        keep: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.sink = sink
        # Stamp records with the current time, so a dashboard shows them as live.
        self.retime = retime
        # `limit` and the rate count only the rows `keep` lets through (`replay --only`).
        self.limit = limit
        self.keep = keep
        self.sent = 0
        self.started_at: float | None = None

    @property
    def source(self) -> str:
        return f"csv:{Path(self.settings.csv).name}" if self.settings.csv else "replay"

    def batches(self) -> Iterator[tuple[list[int] | None, list[dict[str, Any]]]]:
        s = self.settings
        if s.csv:
            while True:
                yield from read_batches(Path(s.csv), s.machines)
                if not s.loop:
                    return
        sim = FactorySimulator(seed=s.seed, machines=s.machines, step_minutes=s.step_minutes)
        # Unpaced, bigger batches cost the simulator and the hub less per record.
        ticks = _FAST_TICKS if s.rate == 0 else 1
        while True:
            yield None, sim.run(ticks).records()

    async def run(self) -> None:
        rate = self.settings.rate
        self.started_at = time.monotonic()
        next_at = self.started_at
        for indices, rows in self.batches():
            if self.keep is not None:
                kept = [i for i, row in enumerate(rows) if self.keep(row)]
                if len(kept) < len(rows):
                    rows = [rows[i] for i in kept]
                    indices = None if indices is None else [indices[i] for i in kept]
                if not rows:
                    await asyncio.sleep(0)
                    continue
            if self.limit is not None:
                rows = rows[: self.limit - self.sent]
            if self.retime:
                self._stamp_now(rows)
            await self.sink(rows, indices)
            self.sent += len(rows)
            if self.limit is not None and self.sent >= self.limit:
                return
            if rate > 0:
                next_at += len(rows) / rate
                delay = next_at - time.monotonic()
                if delay < -_MAX_LAG_S:
                    next_at = time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            else:
                await asyncio.sleep(0)  # let the rest of the loop run between batches

    @staticmethod
    def _stamp_now(rows: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC).isoformat()
        for row in rows:
            # Replace the timestamp under whatever spelling the source used (a CSV says
            # "Timestamp"); adding a second one would make the record ambiguous.
            for key in [k for k in row if isinstance(k, str) and k.lower() == "timestamp"]:
                del row[key]
            row["timestamp"] = now

    def stats(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started_at if self.started_at else 0.0
        return {
            "source": self.source,
            "running": self.running,
            "sent": self.sent,
            "rate_target": self.settings.rate,
            "rate_actual": round(self.sent / elapsed, 1) if elapsed > 0 else 0.0,
            "error": self.error,
        }


# Per camera and frame: how likely a worker shows up without one item, and for how many
# frames. Rare and short, like a real site: at the default 2 cameras and 1 frame/s about
# one episode per 10 minutes (0.01 made 12, more than the whole plant's other alarms).
_VIOLATION_CHANCE = 0.001
_VIOLATION_FRAMES = (8, 30)
_CAMERA_SIDE = 128


class CameraReplay(_Background):
    """Frames of a worker in front of each simulated camera, as JPEG bytes on
    sensors/factory/ppe/<camera>; now and then the worker lacks an item for a while."""

    def __init__(self, settings: ReplaySettings, publish: Callable[[str, bytes], Awaitable[Any]]):
        self.settings = settings
        self.publish = publish
        self.sent = 0
        self.frames: int | None = None  # stop after this many (tests); None = forever

    @property
    def cameras(self) -> list[str]:
        return [f"cam-{i}" for i in range(1, self.settings.cameras + 1)]

    async def run(self) -> None:
        import numpy as np

        from ..messages import PPE_ITEMS as ITEMS

        rng = np.random.default_rng(self.settings.seed)
        missing: dict[str, tuple[int, int]] = {}  # camera -> (item index, frames left)
        interval = 1.0 / self.settings.camera_fps
        next_at = time.monotonic()
        while self.frames is None or self.sent < self.frames:
            for camera in self.cameras:
                item, left = missing.get(camera, (-1, 0))
                if left == 0 and rng.random() < _VIOLATION_CHANCE:
                    item = int(rng.integers(len(ITEMS)))
                    left = int(rng.integers(*_VIOLATION_FRAMES))
                missing[camera] = (item, max(0, left - 1))
                worn = [not (left > 0 and i == item) for i in range(len(ITEMS))]
                # Rendering takes several milliseconds: off the event loop.
                jpeg = await asyncio.to_thread(_render_jpeg, rng, worn)
                await self.publish(ppe_frames(camera), jpeg)
                self.sent += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        return {
            "cameras": self.cameras,
            "fps": self.settings.camera_fps,
            "running": self.running,
            "sent": self.sent,
            "error": self.error,
        }


def _render_jpeg(rng: Any, worn: list[bool]) -> bytes:
    import io

    from PIL import Image

    from ..sim.ppe_images import render_worker

    out = io.BytesIO()
    Image.fromarray(render_worker(rng, worn, size=_CAMERA_SIDE)).save(out, "JPEG", quality=85)
    return out.getvalue()
