"""The notifier: one background task that drains the SMS outbox through Twilio.

The orchestrator records a text with `queue_decision` inside the transaction that writes
the decision and calls `wake()` once it committed. The task looks at the outbox on every
wake and at least every second: it keeps the rolling-hour rate limit (what exceeds it is
held, then summed up in one digest when room returns), sends what is due one text at a
time, and retries failures with exponential backoff. Rows left queued by a crash are due
at the next start, which is all the recovery there is.

Logs say "the supervisor", never a number; every error text passes through `redact`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import FactoryError
from ..http.api import ApiError, json_response, query_int
from ..messages import Decision, Notified
from ..settings import NotifySettings
from ..store import Store
from . import outbox
from .sms import SendError, TwilioSender, redact

log = logging.getLogger(__name__)

POLL_S = 1.0
OUTBOX_LIMIT_MAX = 1000
# How long stopping waits for a text already on its way before abandoning it (it is then
# sent again at the next start: at least once, never lost).
STOP_GRACE_S = 2.0


class Notifier:
    """`async with Notifier(settings, store) as notifier:` runs the outbox task."""

    def __init__(
        self,
        settings: NotifySettings,
        store: Store,
        clock: Callable[[], float] = time.time,
        poll_s: float = POLL_S,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.poll_s = poll_s
        self._sender: TwilioSender | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future[None]] = []
        self._stopping = False
        self._failing = False
        self._store_failing = False
        self._limited = False
        # Without credentials, rows a configured run left queued are settled once a start:
        # every later text is recorded as not_configured from the outset.
        self._leftovers_settled = False
        self._counts: dict[str, int] = dict.fromkeys(outbox.STATUSES, 0)
        self._sent_last_hour = 0
        self._last_sent_at: float | None = None
        self._last_error: str | None = None

    async def __aenter__(self) -> Notifier:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._leftovers_settled = False
        if self.settings.configured:
            self._sender = TwilioSender(self.settings)
            log.info(
                "notify: texting %s and above to the supervisor through Twilio",
                self.settings.min_level,
            )
        else:
            log.info(
                "notify: Twilio credentials are not configured; texts are recorded in the "
                "outbox, not sent"
            )
        self._task = asyncio.create_task(self._run(), name="notifier")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(FactoryError("the notifier stopped"))
        self._waiters.clear()
        if self._sender is not None:
            self._sender.close()
            self._sender = None

    # -- what the orchestrator calls ----------------------------------------------------

    def queue_decision(self, conn: Connection, decision: Decision) -> Notified | None:
        """Record `decision`'s text in the caller's transaction (sync, on the store's
        thread: pass it to `Store.write`). Call `wake()` once that transaction committed."""
        return outbox.queue_decision(conn, decision, self.settings, self.clock())

    def wake(self) -> None:
        """Look at the outbox now rather than within a second. Safe from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Return once a whole pass over the outbox has run after this call."""
        if self._task is None or self._task.done():
            raise FactoryError("the notifier is not running")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        await asyncio.wait_for(waiter, timeout_s)

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            waiters, self._waiters = self._waiters, []
            self._wake.clear()
            try:
                await self._pass()
                if self._store_failing:
                    log.info("notify: the outbox is readable again")
                    self._store_failing = False
            except FactoryError as exc:
                if not self._store_failing:
                    log.error("notify: outbox pass failed, retrying every second: %s", exc)
                    self._store_failing = True
            except Exception:
                log.exception("notify: outbox pass failed")
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await self._wake.wait()

    async def _pass(self) -> None:
        now = self.clock()
        if self._sender is None and not self._leftovers_settled:
            abandoned = await self.store.write(outbox.abandon_unsendable)
            self._leftovers_settled = True
            if abandoned:
                log.warning(
                    "notify: %d text(s) left queued by an earlier run will not be sent: "
                    "Twilio credentials are not configured",
                    abandoned,
                )
        elif self._sender is not None:
            await self._send_due(self._sender, now)
        self._counts, self._last_sent_at, self._sent_last_hour = await self.store.read(
            outbox.summary, self.clock()
        )

    async def _send_due(self, sender: TwilioSender, now: float) -> None:
        limit = self.settings.rate_limit_per_hour
        room = limit - await self.store.read(outbox.sent_in_last_hour, now)
        if room > 0:
            self._limited = False
            digest_id = await self.store.write(outbox.make_digest, now)
            if digest_id is not None:
                log.info("notify: texts held back by the rate limit go out as digest %d", digest_id)
        held: list[int] = []
        for row in await self.store.read(outbox.due, now):
            if self._stopping:
                break
            if room <= 0:
                # A digest waits for room instead: holding it would only digest a digest.
                if not row.is_digest:
                    held.append(row.id)
                continue
            if await self._send(sender, row):
                room -= 1
        if held:
            await self.store.write(outbox.hold, held)
            if not self._limited:  # once per spell at the limit, not once per text
                log.warning(
                    "notify: rate limit of %d texts an hour reached; texts are held back "
                    "for a digest",
                    limit,
                )
                self._limited = True

    async def _send(self, sender: TwilioSender, row: outbox.DueRow) -> bool:
        try:
            provider_id = await asyncio.to_thread(sender.send, row.body)
        except SendError as exc:
            await self._failed(row, exc)
            return False
        await self.store.write(outbox.mark_sent, row.id, provider_id, self.clock())
        if self._failing:
            log.info("notify: texting the supervisor works again")
            self._failing = False
        log.info("notify: text %d sent to the supervisor (%s)", row.id, provider_id)
        return True

    async def _failed(self, row: outbox.DueRow, exc: SendError) -> None:
        # SendError texts are redacted where they are made; redacting again costs nothing
        # and keeps this line safe whatever a future sender puts in them.
        error = redact(str(exc), self.settings)
        self._last_error = error
        attempts = row.attempts + 1
        if exc.permanent or attempts >= self.settings.max_attempts:
            await self.store.write(outbox.mark_failed, row.id, error)
            why = "permanent error" if exc.permanent else f"{attempts} attempts"
            log.error("notify: text %d to the supervisor failed (%s): %s", row.id, why, error)
            return
        delay_s = outbox.retry_delay_s(attempts, self.settings)
        await self.store.write(outbox.mark_retry, row.id, error, self.clock() + delay_s)
        if not self._failing:
            log.warning(
                "notify: text %d to the supervisor failed, retrying with backoff: %s",
                row.id,
                error,
            )
            self._failing = True

    # -- status and routes --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """As of the last pass over the outbox (at most a second old while running)."""
        return {
            "configured": self.settings.configured,
            "running": self._task is not None and not self._task.done(),
            "to": outbox.mask_number(self.settings.twilio_to_number),
            "min_level": self.settings.min_level,
            "rate_limit_per_hour": self.settings.rate_limit_per_hour,
            "sent_last_hour": self._sent_last_hour,
            "counts": dict(self._counts),
            "last_sent_at": None
            if self._last_sent_at is None
            else datetime.fromtimestamp(self._last_sent_at, UTC),
            "last_error": self._last_error,
        }

    async def outbox_route(self, request: Request) -> Response:
        status = request.query_params.get("status") or None
        if status is not None and status not in outbox.STATUSES:
            raise ApiError(
                400,
                "bad_query",
                f"status: expected one of {', '.join(outbox.STATUSES)}, got {status!r}",
            )
        limit = query_int(request, "limit", 100, 1, OUTBOX_LIMIT_MAX)
        to = outbox.mask_number(self.settings.twilio_to_number)
        messages = await self.store.read(outbox.list_messages, status, limit, to)
        return json_response({"messages": messages})

    async def status_route(self, _request: Request) -> Response:
        self._counts, self._last_sent_at = await self.store.read(outbox.counts)
        self._sent_last_hour = await self.store.read(outbox.sent_in_last_hour, self.clock())
        return json_response(self.stats())

    def routes(self) -> list[BaseRoute]:
        """Mount at /api/notify."""
        return [Route("/outbox", self.outbox_route), Route("/status", self.status_route)]
