"""The orchestrator: agents' alerts in, managed alarms and decisions out.

Alerts arrive from the hub (alerts/#) and from POST /api/orchestrator/alert. Every change
to an alarm is committed to the store before anyone sees it: the open alarms in memory are
replaced only after the commit, so a failed write changes nothing and a kill -9 loses
nothing that was answered. One lock serialises alarm changes; that is what makes
concurrent duplicate alerts land on one alarm.

Plans are made apart from alarm changes (an external planner may take seconds): an alarm
change that needs a plan sets `plan_pending` in the same transaction, a single worker turns
it into a decision, and the decision, its SMS outbox row and the reset flag commit together.
A crash in between leaves the flag set, and the next start plans it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from ..errors import FactoryError, StoreError
from ..http.ws import WsClient, broadcast, frame
from ..hub import Hub, Subscription, SubscriptionClosed
from ..levels import RANK, worst
from ..messages import Alarm, Alert, Decision, Plan
from ..notify import Notifier
from ..planner import Planner
from ..planner import logic as planning
from ..settings import Settings
from ..store import Store
from ..tasks import cancel_all
from ..times import iso
from ..topics import ALARMS, ALERTS_TREE, DECISIONS
from . import kpis, logic, records
from .logic import AlarmConflict, Change, Key

log = logging.getLogger(__name__)

_BATCH = 256
_encoder = msgspec.json.Encoder()
_RETRY_S = 1.0
_HOUSEKEEPING_S = 1.0
_STOP_DRAIN_S = 5.0


class AlarmNotFound(FactoryError, LookupError):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


class Orchestrator:
    agent_id = "orchestrator"

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        store: Store,
        planner: Planner,
        notifier: Notifier,
        max_body_bytes: int = 10_000_000,
    ) -> None:
        self.settings = settings.orchestrator
        self.planner_settings = settings.planner
        self.hub, self.store, self.planner, self.notifier = hub, store, planner, notifier
        self.max_body_bytes = max_body_bytes
        s = self.settings
        self.flood = logic.FloodDetector(s.flood_threshold, s.flood_window_s, s.flood_end_below)
        self.chatter = logic.ActivationWindow(s.chatter_count, s.chatter_window_s)
        self.bursts = logic.ActivationWindow(s.group_min_alarms, s.group_window_s)
        self.open: dict[Key, Alarm] = {}
        self.recent_alerts: deque[Alert] = deque(maxlen=s.recent_size)
        self.recent_decisions: deque[Decision] = deque(maxlen=s.recent_size)
        self.last_update: datetime | None = None
        # Bumped by every change system-state shows: the key of its cached encoding.
        self.version = 0
        self._state_cache: tuple[tuple[int, int], bytes, str] | None = None
        self.clients: set[WsClient] = set()
        self.counters: dict[str, int] = {
            "alerts": 0,
            "alarms_raised": 0,
            "activations": 0,
            "chattering": 0,
            "chatter_shelved": 0,
            "grouped": 0,
            "suppressed": 0,
            "decisions": 0,
            "plans_repeated": 0,
            "store_retries": 0,
            "errors": 0,
        }
        self.running = False
        self._lock = asyncio.Lock()
        self._plans: asyncio.Queue[int] = asyncio.Queue()
        # Last plan per subject: the same evidence must not produce the same plan twice.
        self._last_plan: dict[str, Hashable] = {}
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Orchestrator:
        await self._restore()
        self._sub = self.hub.subscribe(ALERTS_TREE, name=self.agent_id)
        self._tasks = [
            asyncio.create_task(self._consume(), name="orchestrator-alerts"),
            asyncio.create_task(self._plan_worker(), name="orchestrator-plans"),
            asyncio.create_task(self._housekeeping(), name="orchestrator-housekeeping"),
        ]
        self.running = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.running = False
        if self._sub is not None:
            # Closing lets the consumer take what is queued first: the agents have already
            # stopped, and alerts they sent must become alarms before we go.
            self._sub.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), _STOP_DRAIN_S)
        # Owed plans are not waited for: their flags are in the store for the next start.
        await cancel_all(self._tasks)
        self._tasks = []

    async def _restore(self) -> None:
        now = time.time()
        horizon = now - self.planner_settings.correlation_window_s - 3600

        def load(conn: Any) -> tuple:
            return (
                records.load_open(conn),
                records.recent_alerts(conn, self.settings.recent_size),
                records.recent_decisions(conn, self.settings.recent_size),
                records.recent_decisions(conn, 10_000, since=horizon),
                records.annunciations_since(
                    conn,
                    now
                    - max(
                        self.settings.flood_window_s,
                        self.settings.chatter_window_s,
                        self.settings.group_window_s,
                    ),
                ),
                records.plans_owed(conn),
            )

        alarms, alerts, decisions, planned, annunciations, owed = await self.store.read(load)
        self.open = {logic.key_of(a): a for a in alarms}
        self.recent_alerts.extend(alerts)
        self.recent_decisions.extend(decisions)
        for decision in reversed(planned):  # oldest first, so the newest wins
            self._last_plan[self._subject_of_plan(decision)] = _signature(
                decision.plan, decision.alarm_ids, decision.level
            )
        for at, kind, key in annunciations:
            if kind in ("raised", "reactivated"):
                self.flood.note(at, new=kind == "raised")
                self.chatter.note(key, at)
            if key[2]:
                self.bursts.note((*key[:2], ""), at, key[2])
        self.flood.update(now)
        for alarm_id in owed:
            self._plans.put_nowait(alarm_id)
        if alarms or owed:
            log.info("orchestrator: %d open alarms restored, %d plans owed", len(alarms), len(owed))

    @staticmethod
    def _subject_of_plan(decision: Decision) -> str:
        return logic.subject_of(decision.plan.machine_id, decision.plan.camera_id)

    # -- alerts ------------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._sub is not None
        while True:
            try:
                messages = await self._sub.get_many(_BATCH)
            except SubscriptionClosed:
                return
            await self.submit_until_stored(
                [a for m in messages for a in self._alerts_of(m.payload, m.topic)]
            )

    async def submit_until_stored(self, alerts: Sequence[Alert]) -> None:
        """submit(), held and retried while the store fails: alarms are never dropped.
        Returns once they are committed (or found to hit a bug, which is logged)."""
        while alerts:
            try:
                await self.submit(alerts)
                return
            except StoreError as exc:
                self.counters["store_retries"] += 1
                if self.counters["store_retries"] % 60 == 1:
                    log.error("orchestrator: cannot save alarms, retrying: %s", exc)
                await asyncio.sleep(_RETRY_S)
            except Exception:
                # A bug must not stop every later alarm; retrying would loop on it.
                self.counters["errors"] += 1
                log.exception("orchestrator: %d alerts could not be handled", len(alerts))
                return

    def _alerts_of(self, payload: Any, topic: str) -> list[Alert]:
        items = payload if isinstance(payload, list) else [payload]
        out = []
        for item in items:
            if isinstance(item, Alert):
                out.append(item)
                continue
            try:
                if isinstance(item, bytes | str):
                    out.append(msgspec.json.decode(item, type=Alert))
                else:
                    out.append(msgspec.convert(item, Alert))
            except (msgspec.ValidationError, msgspec.DecodeError) as exc:
                log.warning("orchestrator: alert on %s ignored: %s", topic, exc)
        return out

    async def submit(self, alerts: Sequence[Alert]) -> list[Alarm]:
        """Apply alerts to the alarms and commit; returns the alarms they changed.

        Raises StoreError when the store cannot take it; then nothing has changed.
        """
        async with self._lock:
            working = dict(self.open)
            changes: list[Change] = []
            for alert in alerts:
                for change in logic.apply_alert(working, alert):
                    for grouped in self._rationalised(working, alert, change):
                        for c in [grouped, *self._chatter(grouped)]:
                            changes.append(c)
                            self._keep(working, c.alarm)
            await self.store.write(records.save, list(alerts), changes)
            self.open = working
        self.counters["alerts"] += len(alerts)
        self.recent_alerts.extendleft(alerts)
        self.version += 1
        await self._after(changes)
        return _distinct([c.alarm for c in changes])

    def _rationalised(
        self, working: dict[Key, Alarm], alert: Alert, change: Change
    ) -> list[Change]:
        """One situation, one annunciation. An activation that a related alarm on its
        subject already says (suppress_by) goes silent. And many alarms of one source
        and type at once are one situation: past
        group_min_alarms within group_window_s, a member's activation goes silent and its
        group alarm (no subject) is raised or updated instead; the group clears with the
        last active member."""
        s, alarm = self.settings, change.alarm
        group_key: Key = (alarm.source, alarm.type, "")
        if not s.group_min_alarms or logic.key_of(alarm) == group_key or change.event is None:
            return [change]
        kind, at = change.event.kind, change.event.at
        if kind == "cleared" and alarm.grouped:
            group = working.get(group_key)
            others = self._members(working, group_key, but=alarm.id)
            if group is not None and not any(a.grouped for a in others):
                cleared = logic.clear_alarm(group, "system", at)
                return [change] + ([cleared] if cleared is not None else [])
            return [change]
        if not change.annunciated:
            return [change]
        related = s.suppress_by.get(f"{alarm.source}/{alarm.type}")
        by = logic.suppressor(working, alarm, related) if related else None
        if by is not None:
            self.counters["suppressed"] += 1
            return [logic.as_suppressed(change, by)]
        subject = logic.key_of(alarm)[2]
        self.bursts.note(group_key, at.timestamp(), subject)
        if self.bursts.others(group_key, subject) < s.group_min_alarms:
            return [change]
        self.counters["grouped"] += 1
        member = logic.as_grouped(change)
        members = [*self._members(working, group_key, but=alarm.id), member.alarm]
        summary = logic.group_alert(alert, members)
        return [member, *logic.apply_alert(working, summary)]

    @staticmethod
    def _members(working: dict[Key, Alarm], group_key: Key, but: int) -> list[Alarm]:
        return [
            a
            for k, a in working.items()
            if k[:2] == group_key[:2] and k[2] and a.id != but and a.state in logic.ACTIVE_STATES
        ]

    def _chatter(self, change: Change) -> list[Change]:
        """What an activation does when its alarm chatters: marked once, and shelved for a
        while under the "shelve" policy (below chatter_shelve_below only)."""
        if not change.annunciated or change.event is None:
            return []
        s, alarm, at = self.settings, change.alarm, change.event.at
        n = self.chatter.note(logic.key_of(alarm), at.timestamp())
        if n < s.chatter_count or alarm.chattering:
            return []
        marked = logic.mark_chattering(alarm, at, n, s.chatter_window_s)
        out = [marked]
        if (
            s.chatter_policy == "shelve"
            and RANK[alarm.highest_level] < RANK[s.chatter_shelve_below]
        ):
            until = at + timedelta(seconds=s.chatter_shelve_s)
            reason = f"chattering: {marked.event.detail if marked.event else ''}"
            out.append(logic.shelve(marked.alarm, "system", at, until, reason))
        return out

    @staticmethod
    def _keep(alarms: dict[Key, Alarm], alarm: Alarm) -> None:
        if logic.is_open(alarm):
            alarms[logic.key_of(alarm)] = alarm
        else:
            alarms.pop(logic.key_of(alarm), None)

    async def _after(self, changes: Sequence[Change]) -> None:
        """What follows a committed change: flood count, plans, listeners."""
        if not changes:
            return
        now = time.time()
        self._touch()
        for change in changes:
            kind = change.event.kind if change.event is not None else ""
            if change.annunciated:
                # Counted when the operator is shown it: the flood is about now.
                self.flood.note(now, new=kind == "raised")
                self.counters["activations"] += 1
            if kind == "raised":
                self.counters["alarms_raised"] += 1
            elif kind == "chattering":
                self.counters["chattering"] += 1
            elif kind == "shelved" and change.event is not None and change.event.by == "system":
                self.counters["chatter_shelved"] += 1
            if change.plan:
                self._plans.put_nowait(change.alarm.id)
        self._flood_check(now)
        for alarm in _distinct([c.alarm for c in changes]):
            broadcast(self.clients, frame("alarm", alarm))
            await self.hub.publish(ALARMS, alarm, origin=self.agent_id)

    def _flood_check(self, now: float) -> None:
        started = self.flood.update(now)
        if started is None:
            return
        state = self.flood_state()
        if started:
            log.warning(
                "alarm flood: %d activations in %.0f s (%d new alarms, %d returned); "
                "alarms below %s are grouped",
                state["activations_in_window"],
                self.settings.flood_window_s,
                state["new_alarms_in_window"],
                state["reactivated_in_window"],
                self.settings.flood_group_below,
            )
        else:
            log.info(
                "alarm flood over: %d activations in the last %.0f s",
                state["activations_in_window"],
                self.settings.flood_window_s,
            )
        self._touch()
        broadcast(self.clients, frame("flood", state))

    # -- operator actions --------------------------------------------------------------

    async def act(self, alarm_id: int, *actions: Callable[[Alarm], Change]) -> Alarm:
        """Apply an operator's actions (ack, shelve, comment ...) to one alarm, each to
        what the one before made of it, and commit them together.

        Raises AlarmNotFound, AlarmConflict (from an action) or StoreError.
        """
        async with self._lock:
            alarm = self.alarm_by_id(alarm_id)
            if alarm is None:
                alarm = await self.store.read(records.get, alarm_id)
            if alarm is None:
                raise AlarmNotFound(f"no alarm with id {alarm_id}")
            changes: list[Change] = []
            for action in actions:
                changes.append(action(changes[-1].alarm if changes else alarm))
            final = changes[-1].alarm
            await self.store.write(records.save, [], changes)
            if logic.is_open(alarm) or logic.is_open(final):
                working = dict(self.open)
                self._keep(working, final)
                self.open = working
        await self._after(changes)
        return final

    def alarm_by_id(self, alarm_id: int) -> Alarm | None:
        return next((a for a in self.open.values() if a.id == alarm_id), None)

    async def ack(
        self, alarm_id: int, by: str, note: str = "", verdict: str | None = None, text: str = ""
    ) -> Alarm:
        """Acknowledge an alarm, with the operator's verdict on it when given (committed
        together); a group alarm's acknowledgement covers its silent members too (each
        gets its own audit line, by the same person; the verdict stays the group's)."""
        actions: list[Callable[[Alarm], Change]] = [
            lambda a: logic.acknowledge(a, by, _now(), note)
        ]
        if verdict is not None:
            actions.append(lambda a: logic.feedback(a, by, _now(), verdict, text))
        alarm = await self.act(alarm_id, *actions)
        if logic.key_of(alarm)[2] == "":
            members = [
                a
                for a in self.open.values()
                if a.grouped
                and (a.source, a.type) == (alarm.source, alarm.type)
                and a.state in ("ACTIVE_UNACK", "CLEARED_UNACK")
            ]
            with_group = f"with group alarm {alarm.id}" + (f": {note}" if note else "")
            for member in members:
                with contextlib.suppress(AlarmConflict, AlarmNotFound):
                    await self.act(
                        member.id, lambda a: logic.acknowledge(a, by, _now(), with_group)
                    )
        return alarm

    async def shelve(self, alarm_id: int, by: str, duration_s: float, reason: str = "") -> Alarm:
        at = _now()
        until = at + timedelta(seconds=duration_s)
        return await self.act(alarm_id, lambda a: logic.shelve(a, by, at, until, reason))

    async def unshelve(self, alarm_id: int, by: str) -> Alarm:
        return await self.act(alarm_id, lambda a: logic.unshelve(a, by, _now()))

    async def comment(self, alarm_id: int, by: str, text: str) -> Alarm:
        return await self.act(alarm_id, lambda a: logic.comment(a, by, _now(), text))

    async def feedback(self, alarm_id: int, by: str, verdict: str, text: str = "") -> Alarm:
        return await self.act(alarm_id, lambda a: logic.feedback(a, by, _now(), verdict, text))

    # -- plans -------------------------------------------------------------------------

    async def _plan_worker(self) -> None:
        while True:
            alarm_id = await self._plans.get()
            while True:
                try:
                    await self._decide(alarm_id)
                    break
                except StoreError as exc:
                    self.counters["store_retries"] += 1
                    log.error("orchestrator: cannot save the decision, retrying: %s", exc)
                    await asyncio.sleep(_RETRY_S)
                except Exception:
                    # Its plan stays owed in the store and is tried again at the next start.
                    self.counters["errors"] += 1
                    log.exception("orchestrator: no plan for alarm %d", alarm_id)
                    break
            self._plans.task_done()

    async def _decide(self, alarm_id: int) -> None:
        trigger = self.alarm_by_id(alarm_id)
        # Cleared, closed or shelved since: nothing to do about it now.
        if (
            trigger is None
            or trigger.state not in logic.ACTIVE_STATES
            or logic.is_shelved(trigger, _now())
        ):
            await self.store.write(records.mark_planned, [alarm_id])
            return
        group = planning.correlated(
            trigger, self.open.values(), self.planner_settings.correlation_window_s
        )
        plan, planner = await self.planner.plan(group)
        ids = [a.id for a in group]
        level = worst([a.highest_level for a in group])
        subject = logic.key_of(trigger)[2]
        signature = _signature(plan, ids, level)
        if self._last_plan.get(subject) == signature:
            self.counters["plans_repeated"] += 1
            await self.store.write(records.mark_planned, [alarm_id])
            return
        decision = Decision(alarm_ids=ids, level=level, plan=plan, planner=planner)

        def commit(conn: Any) -> None:
            decision.notified = self.notifier.queue_decision(conn, decision)
            records.save_decision(conn, decision)
            records.mark_planned(conn, [alarm_id])

        await self.store.write(commit)
        self._last_plan[subject] = signature
        self.counters["decisions"] += 1
        self.recent_decisions.appendleft(decision)
        self._touch()
        if decision.notified is not None:
            self.notifier.wake()
        broadcast(self.clients, frame("decision", decision))
        await self.hub.publish(DECISIONS, decision, origin=self.agent_id)

    async def idle(self, timeout_s: float = 10.0) -> None:
        """Wait until every owed plan is made (tests and orderly shutdowns use it)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._plans.join(), timeout_s)

    # -- housekeeping ------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            try:
                await self.unshelve_expired()
            except StoreError as exc:
                log.error("orchestrator: cannot unshelve expired alarms: %s", exc)
            self._flood_check(time.time())
            self.chatter.prune(time.time())
            self.bursts.prune(time.time())

    async def unshelve_expired(self) -> None:
        """Shelving is for a while only: return alarms whose time is up."""
        now = _now()
        for alarm in list(self.open.values()):
            if alarm.shelved_until is not None and alarm.shelved_until <= now:
                with contextlib.suppress(AlarmConflict, AlarmNotFound):
                    await self.act(
                        alarm.id, lambda a: logic.unshelve(a, "system", now, "shelving expired")
                    )

    # -- views -------------------------------------------------------------------------

    def flood_state(self) -> dict[str, Any]:
        now = time.time()
        new, returned = self.flood.breakdown(now)
        return {
            "active": self.flood.active,
            "since": iso(self.flood.since),
            # ISA-18.2 counts activations: alarms raised and alarms that came back.
            "activations_in_window": new + returned,
            "new_alarms_in_window": new,
            "reactivated_in_window": returned,
            "threshold": self.settings.flood_threshold,
            "ends_below": self.settings.flood_end_below,
            "window_s": self.settings.flood_window_s,
            "grouped_below": self.settings.flood_group_below,
        }

    def _touch(self) -> None:
        self.last_update = _now()
        self.version += 1

    def system_state_json(self) -> tuple[bytes, str]:
        """system-state encoded, and its entity tag.

        Dashboards poll it, many at once: it is built and encoded once per change, and
        at least once a second for what depends on the clock alone (shelving running
        out, the flood window). Building and encoding it cost some 60 % of a request.
        """
        key = (self.version, int(time.monotonic()))
        if self._state_cache is None or self._state_cache[0] != key:
            body = _encoder.encode(self.system_state())
            tag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
            self._state_cache = (key, body, tag)
        return self._state_cache[1], self._state_cache[2]

    def system_state(self) -> dict[str, Any]:
        now = _now()
        open_alarms = sorted(self.open.values(), key=lambda a: (a.last_seen, a.id), reverse=True)
        groups = (
            logic.flood_groups(open_alarms, self.settings.flood_group_below)
            if self.flood.active
            else []
        )
        grouped = {i for g in groups for i in g.alarm_ids}
        return {
            "alerts": list(self.recent_alerts),
            "decisions": list(self.recent_decisions),
            "last_update": self.last_update,
            "alarm_counts": logic.counts(open_alarms, now),
            "alarms": [a for a in open_alarms if a.id not in grouped],
            "alarm_groups": groups,
            "flood": self.flood_state(),
        }

    async def kpis(self, since: float, until: float) -> dict[str, Any]:
        """Alarm performance over [since, until) (see kpis.py); raises ValueError when the
        window holds more events than one request may read."""
        s = self.settings
        # Acknowledgements and chatter straddling `since` need the activations before it.
        lookback = max(s.chatter_window_s, 3600.0)
        found = await self.store.read(records.kpi_events, since - lookback, until)
        if found is None:
            raise ValueError(
                f"more than {records.KPI_EVENTS_MAX:,} alarm events in the window: "
                "ask for a shorter one"
            )
        events, keys = found
        rules = kpis.Rules(s.flood_threshold, s.chatter_count, s.chatter_window_s)
        return kpis.kpis(events, keys, since, until, list(self.open.values()), _now(), rules)

    def counts(self) -> dict[str, Any]:
        return logic.counts(self.open.values(), _now())

    def stats(self) -> dict[str, Any]:
        counted = self.counts()
        return {
            "running": self.running,
            "open_alarms": counted["open"],
            "active_alarms": counted["active"],
            "unacknowledged": counted["unacknowledged"],
            "plans_owed": self._plans.qsize(),
            "flood": self.flood.active,
            "ws_clients": len(self.clients),
            **self.counters,
        }


def _signature(plan: Plan, alarm_ids: list[int], level: str) -> Hashable:
    # The level is part of it: a fire risk going from CRITICAL to EMERGENCY keeps its plan
    # but is news for the supervisor all the same.
    return (planning.signature(plan, alarm_ids), level)


def _distinct(alarms: list[Alarm]) -> list[Alarm]:
    """The last version of each alarm, in order of first appearance."""
    last: dict[int, Alarm] = {}
    for alarm in alarms:
        last[alarm.id] = alarm
    return list(last.values())
