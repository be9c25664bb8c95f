"""The backlog agent: a summary of every shift, on time, once, even across restarts.

APScheduler (3.x, in the event loop) fires at every shift change; its job lives in the
same database, with coalescing and a long misfire grace, so a restart neither loses nor
doubles the next run. What a run does is idempotent: it summarises every shift that ended
since the last one summarised (at most `catch_up_days` back, never before the database
existed), each exactly once. The final summaries' unique index on the shift start makes
"once" hold even if two runs race.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import StoreError
from ..http.api import ApiError, json_response, query_int
from ..hub import Hub, Subscription
from ..messages import Prediction, ShiftSummary
from ..settings import BacklogSettings
from ..store import Store, inserted_id, put_checkpoint, shift_summaries
from ..tasks import cancel
from ..topics import PREDICTIONS_FILTER, SHIFT_SUMMARY
from . import facts as F
from .markdown import to_markdown
from .writers import GeminiWriter, write_summary

# APScheduler loads when the agent starts, not with the app: whatever imports the app
# without running it (tests, tools) is spared it.
if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.combining import OrTrigger

log = logging.getLogger(__name__)

TALLY_CHECKPOINT = "backlog:tallies"
JOB_ID = "shift-summaries"
_SAVE_TALLIES_S = 30.0
_summary = msgspec.json.Decoder(ShiftSummary)
# The running agent, for the scheduler's persisted job (it stores a reference by name).
_active: BacklogAgent | None = None


async def run_scheduled() -> None:
    if _active is not None:
        await _active.summarise_due()


# -- SQL -------------------------------------------------------------------------------


def _insert(conn: Connection, summary: ShiftSummary) -> int | None:
    """Store a summary; None when a final one for that shift already exists."""
    if not summary.partial:
        exists = conn.execute(
            sa.select(shift_summaries.c.id).where(
                shift_summaries.c.shift_start == summary.shift_start.timestamp(),
                ~shift_summaries.c.partial,
            )
        ).first()
        if exists:
            return None
    result = conn.execute(
        shift_summaries.insert().values(
            shift_start=summary.shift_start.timestamp(),
            shift_end=summary.shift_end.timestamp(),
            partial=summary.partial,
            generated_at=summary.generated_at.timestamp(),
            generator=summary.generator[:200],
            data=b"",
        )
    )
    summary.id = inserted_id(result)
    conn.execute(
        shift_summaries.update()
        .where(shift_summaries.c.id == summary.id)
        .values(data=msgspec.json.encode(summary))
    )
    return summary.id


def _last_final_end(conn: Connection) -> float | None:
    return conn.execute(
        sa.select(sa.func.max(shift_summaries.c.shift_end)).where(~shift_summaries.c.partial)
    ).scalar()


def _list(conn: Connection, limit: int, partial: bool | None) -> list[ShiftSummary]:
    query = sa.select(shift_summaries.c.data).order_by(
        shift_summaries.c.shift_start.desc(), shift_summaries.c.id.desc()
    )
    if partial is not None:
        query = query.where(shift_summaries.c.partial == partial)
    return [_summary.decode(r.data) for r in conn.execute(query.limit(limit))]


def _get(conn: Connection, summary_id: int) -> ShiftSummary | None:
    data = conn.execute(
        sa.select(shift_summaries.c.data).where(shift_summaries.c.id == summary_id)
    ).scalar()
    return None if data is None else _summary.decode(data)


# -- the agent -------------------------------------------------------------------------


class BacklogAgent:
    agent_id = "backlog_agent"

    def __init__(self, settings: BacklogSettings, hub: Hub, store: Store) -> None:
        self.settings, self.hub, self.store = settings, hub, store
        self.gemini = GeminiWriter(settings) if settings.gemini_api_key else None
        self.tallies = F.Tallies()
        self.scheduler: AsyncIOScheduler | None = None
        self.running = False
        self.last_generated_at = 0.0  # for the on-demand rate limit
        self.counters: dict[str, int] = {"summaries": 0, "gemini": 0, "offline": 0}
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> BacklogAgent:
        global _active
        raw = await self.store.load_checkpoint(TALLY_CHECKPOINT)
        if raw:
            try:
                self.tallies = F.decode_tallies(raw)
            except msgspec.DecodeError as exc:
                log.error("backlog: saved tallies unreadable, starting afresh: %s", exc)
        self._sub = self.hub.subscribe(PREDICTIONS_FILTER, name=self.agent_id, maxsize=4096)
        self._tasks = [
            asyncio.create_task(self._follow(), name="backlog-tally"),
            asyncio.create_task(self._save_loop(), name="backlog-save"),
        ]
        _active = self
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self.scheduler = AsyncIOScheduler(timezone=zoneinfo.ZoneInfo(self.settings.timezone))
        jobstore = SQLAlchemyJobStore(
            url=self.store.url,
            tablename="apscheduler_jobs",
            # Managed PostgreSQL closes idle connections, and this one idles for hours.
            engine_options={"pool_pre_ping": True},
        )
        self.scheduler.add_jobstore(jobstore, "default")
        self.scheduler.start()
        self.scheduler.add_job(
            "factory_mas.backlog.service:run_scheduled",
            self._trigger(),
            id=JOB_ID,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=int(self.settings.catch_up_days * 86400) or None,
        )
        self.running = True
        # Shifts that ended while we were down: summarised now, once each.
        self._tasks.append(asyncio.create_task(self.summarise_due(), name="backlog-catch-up"))
        return self

    def _trigger(self) -> OrTrigger:
        from apscheduler.triggers.combining import OrTrigger
        from apscheduler.triggers.cron import CronTrigger

        tz = zoneinfo.ZoneInfo(self.settings.timezone)
        crons = []
        for hhmm in sorted(set(self.settings.shift_starts)):
            hour, minute = hhmm.split(":")
            crons.append(CronTrigger(hour=int(hour), minute=int(minute), timezone=tz))
        return OrTrigger(crons)

    async def __aexit__(self, *exc: object) -> None:
        global _active
        self.running = False
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self._sub is not None:
            self._sub.close()
        for task in self._tasks:
            await cancel(task)
        await self._save_tallies()
        _active = None

    # -- the tally ---------------------------------------------------------------------

    async def _follow(self) -> None:
        assert self._sub is not None
        # Ends when the subscription is closed and what it holds is taken.
        async for message in self._sub:
            start = self._current_shift()[0].timestamp()
            tally = self.tallies.for_shift(start)
            items = message.payload if isinstance(message.payload, list) else [message.payload]
            tally.add(p for p in items if isinstance(p, Prediction))

    def _current_shift(self, at: datetime | None = None) -> tuple[datetime, datetime]:
        s = self.settings
        return F.shift_of(at or datetime.now(UTC), s.shift_starts, s.timezone)

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(_SAVE_TALLIES_S)
            await self._save_tallies()

    async def _save_tallies(self) -> None:
        try:
            await self.store.save_checkpoint(TALLY_CHECKPOINT, F.encode_tallies(self.tallies))
        except (StoreError, RuntimeError) as exc:
            log.error("backlog: tallies not saved: %s", exc)

    # -- summaries ---------------------------------------------------------------------

    async def summarise_due(self, now: datetime | None = None) -> list[ShiftSummary]:
        """Summarise every shift that has ended and has no summary yet, oldest first."""
        now = now or datetime.now(UTC)
        async with self._lock:
            last, installed = await self.store.read(
                lambda conn: (_last_final_end(conn), F.installed_at(conn))
            )
            floor = max(installed, (now - timedelta(days=self.settings.catch_up_days)).timestamp())
            after = datetime.fromtimestamp(max(last or 0.0, floor), UTC)
            due = F.shifts_ended(after, now, self.settings.shift_starts, self.settings.timezone)
            done = []
            for start, end in due:
                summary = await self._summarise(start, end, partial=False)
                if summary is not None:
                    done.append(summary)
            return done

    async def _summarise(
        self, start: datetime, end: datetime, partial: bool
    ) -> ShiftSummary | None:
        key = start.timestamp()
        tally = self.tallies.shifts.get(key, F.Tally()) if partial else self.tallies.take(key)
        facts = await self.store.read(F.gather, start, end, tally)
        narrative, recommendations, generator, note = await write_summary(
            facts, self.settings, self.gemini
        )
        summary = ShiftSummary(
            shift_start=facts.shift_start,
            shift_end=facts.shift_end,
            facts=facts,
            narrative=narrative,
            recommendations=recommendations,
            generator=generator,
            partial=partial,
            note=note,
        )

        def store(conn: Connection) -> int | None:
            summary_id = _insert(conn, summary)
            # The tally goes with its summary: a crash cannot count a shift twice.
            put_checkpoint(conn, TALLY_CHECKPOINT, F.encode_tallies(self.tallies))
            return summary_id

        if await self.store.write(store) is None:
            return None  # summarised already (a race with a restart's catch-up)
        self.counters["summaries"] += 1
        self.counters["gemini" if generator.startswith("gemini") else "offline"] += 1
        log.info(
            "backlog: %s summary of the shift %s - %s written (%s)",
            "partial" if partial else "final",
            start.isoformat(),
            end.isoformat(),
            generator,
        )
        await self.hub.publish(SHIFT_SUMMARY, summary, origin=self.agent_id)
        return summary

    async def summarise_now(self) -> ShiftSummary:
        """The current shift so far (partial), on request."""
        start, end = self._current_shift()
        now = datetime.now(UTC)
        summary = await self._summarise(start, min(end, now), partial=True)
        assert summary is not None
        return summary

    # -- views -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        job = self.scheduler.get_job(JOB_ID) if self.scheduler and self.running else None
        start, end = self._current_shift()
        return {
            "running": self.running,
            "generator": f"gemini:{self.settings.gemini_model}" if self.gemini else "offline",
            "timezone": self.settings.timezone,
            "shift_starts": self.settings.shift_starts,
            "current_shift": {"start": start.isoformat(), "end": end.isoformat()},
            "next_run": job.next_run_time.isoformat() if job and job.next_run_time else None,
            **self.counters,
        }

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/latest", self.latest_route),
            Route("/summaries", self.list_route),
            Route("/summaries/{name}", self.one_route),
            Route("/generate", self.generate_route, methods=["POST"]),
            Route("/status", self.status_route),
        ]

    async def latest_route(self, _request: Request) -> Response:
        found = await self.store.read(_list, 1, False)
        if not found:
            raise ApiError(
                404, "not_found", "no shift has ended since factory_mas started keeping summaries"
            )
        return json_response(found[0])

    async def list_route(self, request: Request) -> Response:
        limit = query_int(request, "limit", 20, 1, 1000) or 20
        raw = (request.query_params.get("partial") or "").lower()
        partial = {"": False, "false": False, "true": True, "all": None}.get(raw, "bad")
        if partial == "bad":
            raise ApiError(400, "bad_query", f"partial: expected true, false or all, got {raw!r}")
        found = await self.store.read(_list, limit, partial)
        return json_response({"count": len(found), "summaries": found})

    async def one_route(self, request: Request) -> Response:
        name: str = request.path_params["name"]
        as_markdown = name.endswith(".md")
        number = name.removesuffix(".md")
        if not number.isdigit() or len(number) > 18:
            raise ApiError(404, "not_found", f"no summary {name[:40]!r}: ids are integers")
        summary = await self.store.read(_get, int(number))
        if summary is None:
            raise ApiError(404, "not_found", f"no summary with id {number}")
        if as_markdown:
            text = to_markdown(summary, self.settings.timezone)
            return Response(text, media_type="text/markdown; charset=utf-8")
        return json_response(summary)

    async def generate_route(self, _request: Request) -> Response:
        wait = self.last_generated_at + self.settings.generate_min_interval_s - time.time()
        if wait > 0:
            raise ApiError(
                429,
                "too_many_requests",
                f"a summary was generated moments ago; try again in {wait:.0f} s",
                retry_after_s=round(wait, 1),
            )
        self.last_generated_at = time.time()
        return json_response(await self.summarise_now(), 201)

    async def status_route(self, _request: Request) -> Response:
        return json_response(self.status())
