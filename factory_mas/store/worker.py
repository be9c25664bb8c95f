"""The store's one thread, on which all database work runs."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class Worker:
    """The store's one thread: database calls run one at a time, in order, except that an
    urgent call goes before the queued ones.

    The ingest journal is urgent: a producer waits on it before its telemetry counts as
    accepted, while history, checkpoints and the alarm log can wait a few milliseconds.
    It cannot starve them: Intake journals under one lock, so at most one urgent call is
    ever queued.
    """

    _STOP = 2

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.PriorityQueue[tuple[int, int, Any, tuple[Any, ...], Any]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...], urgent: bool) -> Future[T]:
        if self._closed:
            raise RuntimeError(f"{self._name}: cannot run calls after shutdown")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        future: Future[T] = Future()
        self._queue.put((0 if urgent else 1, next(self._order), fn, args, future))
        return future

    def _loop(self) -> None:
        while True:
            priority, _, fn, args, future = self._queue.get()
            if priority == self._STOP:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread."""
        self._closed = True
        if self._thread is not None:
            self._queue.put((self._STOP, next(self._order), None, (), None))
            self._thread.join()
            self._thread = None
