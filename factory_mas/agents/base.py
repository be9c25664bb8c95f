"""BaseAgent: everything the ML agents share, written once.

An agent subclass supplies three things: how to load its model (`load`), how to score a
batch (`score`, runs on the shared inference pool) and what an alert says (`make_alert`);
agents with per-machine memory also export and import it (`export_state`/`import_state`).
This class does the rest: the life cycle (start/stop/restart, as an async context manager),
consuming its hub subscription in micro-batches, history, counters, alerts on level
changes, checkpoints to the store and recovery on start (their format in checkpoint.py),
hot model reload, and the predict route; routes.py has its other REST routes and the
WebSocket fan-out, mounted under /api/<slug>.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from .. import topics
from ..errors import FactoryError, StoreError
from ..http.api import ApiError, json_response, read_json, rejected_response
from ..http.ws import WsClient
from ..hub import Hub, Message, Subscription, SubscriptionClosed, matches
from ..ingest.machines import Machines
from ..levels import LEVELS, RANK, Level, worst
from ..messages import RETURN_TO_NORMAL, Alert, Prediction, Rejection, TelemetryRecord
from ..ml.inference import Inference, LatencyWindow
from ..settings import AgentSettings
from ..store import Store
from ..tasks import cancel
from . import checkpoint
from .conditioning import Conditioner, Gate, gate_prediction
from .result import AgentResult
from .routes import AgentRoutes, Subject, fan_out

log = logging.getLogger(__name__)

_STOP_DRAIN_S = 2.0


@dataclass(frozen=True)
class AgentContext:
    """The shared services an agent works with."""

    hub: Hub
    store: Store
    inference: Inference
    models_dir: Path
    max_batch: int = 1024
    max_wait_s: float = 0.002
    max_body_bytes: int = 10_000_000
    # The same as Intake's: a machine admitted by either is known to both.
    machines: Machines = field(default_factory=Machines)


class BaseAgent(abc.ABC):
    agent_id: ClassVar[str]
    slug: ClassVar[str]
    input_filter: ClassVar[str] = topics.TELEMETRY_FILTER
    # Settings read once, when the agent is built or started: a change takes a restart.
    # Every other setting is read where it is used and may change at run time
    # (apply_settings, driven by config/<agent_id> messages).
    restart_only: ClassVar[frozenset[str]] = frozenset({"enabled", "history_size", "ws_queue_size"})
    # What a journaled message on the input topic decodes to.
    journal_type: ClassVar[Any] = list[TelemetryRecord]

    def __init__(self, settings: AgentSettings, ctx: AgentContext) -> None:
        self.settings = settings
        self.ctx = ctx
        self.status: str = "stopped"
        self.error: str | None = None
        self.model: Any = None
        self.started_at: float | None = None
        self.last_prediction_at: float | None = None
        self.history: deque[Prediction] = deque(maxlen=settings.history_size)
        self.counters: Counter[str] = Counter()
        # Latest level per subject: a machine id, or a camera id for PPE.
        self.last_levels: dict[int | str, Level] = {}
        # Per subject: smoothed scores (score() keeps them) and the alarm gate.
        self.conditioner = Conditioner()
        self.gates: dict[int | str, Gate] = {}
        self.latency = LatencyWindow()
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task] = []
        self.ws_clients: set[WsClient] = set()
        self._dirty = False
        self._failing = False
        self._scoring = asyncio.Lock()
        self.inbox_cursor = 0  # journaled messages scored, in memory
        self.durable_cursor = 0  # ... and as far as the saved checkpoint knows
        self.last_checkpoint_at: float | None = None

    # -- what a subclass provides ------------------------------------------------------

    @abc.abstractmethod
    def load(self) -> Any:
        """Load and verify the model (blocking; runs in a thread).

        Returns the model object, which must have a `version` string. Raise ArtifactError
        (or another FactoryError) when the files are missing or do not match.
        """

    @abc.abstractmethod
    def score(self, records: Sequence[Any]) -> list[Prediction]:
        """Score a batch with `self.model` (blocking; runs on the inference pool).

        Calls are serialised per agent, so per-machine state needs no lock of its own.
        """

    def export_state(self) -> Any:
        """Per-machine memory to checkpoint (msgpack-encodable builtins); None if none."""
        return None

    def import_state(self, state: Any) -> None:  # noqa: B027 - optional hook, no-op by default
        """Take back what export_state() gave, after a restart."""

    @property
    def model_version(self) -> str:
        return getattr(self.model, "version", "") if self.model is not None else ""

    @abc.abstractmethod
    def make_alert(self, prediction: Prediction) -> Alert:
        """The alert for a prediction whose level change is news."""

    def urgent(self, prediction: Prediction) -> bool:
        """Whether a prediction in the alarm band is told at once, whatever the on-delay
        (safety: a physical limit exceeded)."""
        return False

    # -- life cycle --------------------------------------------------------------------

    def return_to_normal(self, prediction: Prediction) -> Alert:
        p = prediction
        what = f"Machine {p.machine_id}" if p.machine_id is not None else f"Camera {p.camera_id}"
        return Alert(
            source=self.agent_id,
            type=RETURN_TO_NORMAL,
            level="NORMAL",
            machine_id=p.machine_id,
            camera_id=p.camera_id,
            details=f"{what} is back to NORMAL",
        )

    @property
    def topic_predictions(self) -> str:
        return topics.predictions(self.agent_id)

    @property
    def topic_alerts(self) -> str:
        return topics.alerts(self.agent_id)

    @property
    def checkpoint_name(self) -> str:
        # Its cursor points into this instance's journal only, and its per-machine memory
        # is of the records this instance scored: instances sharing a database (the ingest
        # role) each keep their own. The single-process name stays what it always was.
        instance = self.ctx.store.instance
        return f"agent:{self.agent_id}@{instance}" if instance else f"agent:{self.agent_id}"

    @property
    def reads_journal(self) -> bool:
        """Whether journaled telemetry is this agent's input. Only these agents' cursors
        may hold the journal back: ppe_agent's never moves (it takes camera frames), and
        while it ran no row was pruned until ingest refused with 503."""
        return matches(self.input_filter, topics.TELEMETRY)

    async def __aenter__(self) -> BaseAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.status == "running":
            return
        if not self.settings.enabled:
            self.status = "disabled"
            return
        self.status, self.error = "starting", None
        try:
            self.model = await asyncio.to_thread(self.load)
        except FactoryError as exc:
            # One broken model must not take the alarm system down with it: the agent
            # reports failed on /health and the rest of the process keeps serving.
            self.status, self.error = "failed", str(exc)
            log.error("%s: not started: %s", self.agent_id, exc)
            return
        await self._restore()
        # Subscribe before reading the journal, so nothing falls between the two; what
        # arrives twice is skipped by its sequence number.
        self._sub = self.ctx.hub.subscribe(self.input_filter, name=self.agent_id)
        await self._catch_up()
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"{self.agent_id}:consume"),
            asyncio.create_task(self._checkpoint_loop(), name=f"{self.agent_id}:checkpoint"),
        ]
        self.started_at = time.time()
        self.status = "running"
        log.info("%s: running model %s", self.agent_id, self.model_version)

    async def stop(self) -> None:
        if self.status not in ("running", "starting"):
            return
        self.status = "stopping"
        consume, checkpointer = self._tasks
        if self._sub is not None:
            # Closing lets the consumer finish what is already queued, then end.
            self._sub.close()
        try:
            await asyncio.wait_for(consume, _STOP_DRAIN_S)
        except TimeoutError:
            log.warning("%s: queue not drained within %.0f s", self.agent_id, _STOP_DRAIN_S)
        await cancel(checkpointer)
        self._tasks = []
        await self.save_checkpoint()
        self.status = "stopped"
        for client in self.ws_clients:
            client.ready.set()

    async def apply_settings(self, new: AgentSettings) -> None:
        """Swap in new settings between two batches: no batch is scored half with the old
        thresholds and half with the new. The caller has validated `new` (a whole settings
        Struct of this agent's type) and kept the restart_only keys as they were."""
        if type(new) is not type(self.settings):
            raise TypeError(
                f"{self.agent_id} takes {type(self.settings).__name__}, got {type(new).__name__}"
            )
        async with self._scoring:
            old, self.settings = self.settings, new
            self.settings_changed(old)
        self.counters["settings_changes"] += 1

    def settings_changed(self, old: AgentSettings) -> None:  # noqa: B027 - optional hook
        """Recompute what was derived from the settings; runs between two batches, with
        the new settings already in self.settings and `old` the ones they replace."""

    async def set_running(self, on: bool) -> None:
        """Start or stop the agent on an operator's request (POST /api/<slug>/start or
        /stop, a SCADA `enabled` write); FactoryError when it does not start."""
        if on and self.status != "running":
            await self.start()
            if self.status != "running":
                why = f": {self.error}" if self.error else ""
                if self.status == "disabled":
                    why = f" (agents.{self.slug}.enabled is false in settings.toml)"
                raise FactoryError(f"{self.agent_id} did not start: it is {self.status}{why}")
        elif not on and self.status in ("running", "starting"):
            await self.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()
        self.counters["restarts"] += 1

    async def reload(self) -> str:
        """Load the model files again and swap them in between two batches.

        Records keep flowing: the old model scores until the new one is verified and
        loaded. A broken artifact raises FactoryError and the old model stays.
        """
        new = await asyncio.to_thread(self.load)
        async with self._scoring:
            old_version, self.model = self.model_version, new
        self.counters["reloads"] += 1
        if self.status == "failed":
            self.status = "stopped"
            await self.start()
        log.info("%s: model reloaded %s -> %s", self.agent_id, old_version, self.model_version)
        return self.model_version

    # -- scoring -----------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._sub is not None
        while True:
            try:
                messages = await self._sub.get_many(self.ctx.max_batch, self.ctx.max_wait_s)
            except SubscriptionClosed:
                return
            fresh = [m for m in messages if not m.seq or m.seq > self.inbox_cursor]
            await self._score_messages(fresh)
            # Messages arrive in journal order (Intake publishes under one lock).
            self.inbox_cursor = max([self.inbox_cursor, *(m.seq for m in fresh)])

    async def _score_messages(self, messages: list[Message]) -> int:
        """Score the items of hub messages; returns how many there were.

        A journaled record's predictions carry its place in the journal (seq, position),
        which the stored history is keyed by: a record scored again after a crash is then
        stored once. items_of passes the payload's own objects on, so they are found by
        identity; an item it makes anew (a decoded PPE frame) was never journaled.
        """
        items = await self.items_of(messages)
        journaled = {
            id(item): (m.seq, i)
            for m in messages
            if m.seq
            for i, item in enumerate(m.payload if isinstance(m.payload, list) else [m.payload])
        }
        positions = [journaled.get(id(item)) for item in items]
        step = self.ctx.max_batch
        for start in range(0, len(items), step):
            await self.process(items[start : start + step], positions[start : start + step])
        return len(items)

    async def _catch_up(self) -> None:
        """Score journaled records that the restored checkpoint had not covered."""
        decoder = msgspec.msgpack.Decoder(self.journal_type)
        scored = 0
        try:
            while rows := await self.ctx.store.inbox_after(self.inbox_cursor):
                for seq, topic, data in rows:
                    if matches(self.input_filter, topic):
                        try:
                            payload = decoder.decode(data)
                        except msgspec.DecodeError as exc:
                            log.error("%s: journal row %d unreadable: %s", self.agent_id, seq, exc)
                        else:
                            scored += await self._score_messages(
                                [Message(topic, payload, "journal", seq=seq)]
                            )
                    self.inbox_cursor = seq
        except StoreError as exc:
            log.error(
                "%s: journal not read, records since the checkpoint are not rescored: %s",
                self.agent_id,
                exc,
            )
        if scored:
            log.info(
                "%s: scored %d journaled records from before the restart", self.agent_id, scored
            )

    def predicted(
        self, record: TelemetryRecord, now: datetime, level: Level, result: AgentResult
    ) -> Prediction:
        """A prediction about one telemetry record, stamped with this agent and model."""
        return Prediction(
            agent_id=self.agent_id,
            machine_id=record.machine_id,
            record_ts=record.timestamp or now,
            produced_at=now,
            model_version=self.model_version,
            level=level,
            result=result.as_result(),
        )

    async def items_of(self, messages: list[Message]) -> list[Any]:
        """The items to score in a micro-batch of hub messages on the input topic.

        Telemetry arrives validated, as one record or a list per message; an agent whose
        input needs decoding (PPE frames) overrides this.
        """
        return [
            r for m in messages for r in (m.payload if isinstance(m.payload, list) else [m.payload])
        ]

    async def process(
        self,
        records: Sequence[Any],
        positions: Sequence[tuple[int, int] | None] = (),
    ) -> list[Prediction]:
        """Score, remember, alert and publish; returns the predictions. `positions`:
        each journaled record's (journal seq, position in that row), None for the others."""
        if not records:
            return []
        try:
            async with self._scoring:
                predictions = await self.ctx.inference.run(self.score, records, timing=self.latency)
        except Exception:
            self.counters["errors"] += len(records)
            if not self._failing:
                self._failing = True
                log.exception("%s: scoring failed; further failures are counted", self.agent_id)
            return []
        if self._failing:
            self._failing = False
            log.info("%s: scoring recovered", self.agent_id)
        if len(positions) == len(predictions):  # one prediction per record, in order
            for p, at in zip(predictions, positions, strict=True):
                if at is not None:
                    p.journal_seq, p.journal_index = at
        alerts = self._remember(predictions)
        await self.ctx.hub.publish(self.topic_predictions, predictions, origin=self.agent_id)
        for alert in alerts:
            await self.ctx.hub.publish(self.topic_alerts, alert, origin=self.agent_id)
        fan_out(self.ws_clients, predictions, alerts)
        return predictions

    def _remember(self, predictions: list[Prediction]) -> list[Alert]:
        alerts = []
        s = self.settings
        self.history.extend(predictions)
        for level, n in Counter(p.level for p in predictions).items():
            self.counters[f"level_{level}"] += n
        for p in predictions:
            subject = p.machine_id if p.machine_id is not None else p.camera_id or ""
            self.last_levels[subject] = p.level
            gate = self.gates.get(subject)
            if gate is None:
                gate = self.gates[subject] = Gate()
            elif gate.reported == p.level and gate.rising_since is gate.normal_since is None:
                continue  # most predictions: the level told is the level seen, no news
            alert = self.make_alert(p) if RANK[p.level] >= RANK[s.alert_min_level] else None
            told = (
                gate_prediction(gate, p, alert.type, s, self.urgent(p))
                if alert is not None
                else gate_prediction(gate, p, "", s)
            )
            if told == "alert" and alert is not None:
                alert.timestamp = p.record_ts
                alerts.append(alert)
                self.counters["alerts"] += 1
            elif told == "normal":
                # The orchestrator clears this subject's alarms of this agent (ISA-18.2
                # "return to normal"), whatever level they had reached.
                back = self.return_to_normal(p)
                back.timestamp = p.record_ts
                alerts.append(back)
                self.counters["returns_to_normal"] += 1
        self.counters["predictions"] += len(predictions)
        self.counters["batches"] += 1
        self.last_prediction_at = time.time()
        self._dirty = True
        return alerts

    # -- checkpoints -------------------------------------------------------------------

    async def saved_machines(self) -> list[int]:
        """The machines this agent's checkpoint keeps state for, read without restoring
        it (before the agent starts, so that limits.max_machines counts them)."""
        try:
            raw = await self.ctx.store.load_checkpoint(self.checkpoint_name)
            return checkpoint.saved_machines(raw) if raw is not None else []
        except (StoreError, msgspec.DecodeError):
            return []  # _restore says why, when the agent starts

    async def _restore(self) -> None:
        try:
            raw = await self.ctx.store.load_checkpoint(self.checkpoint_name)
        except StoreError as exc:
            log.error("%s: checkpoint not read, starting empty: %s", self.agent_id, exc)
            return
        if raw is None:
            return
        try:
            restored = checkpoint.restore(self, raw)
        except msgspec.DecodeError as exc:
            log.error("%s: checkpoint unreadable, starting empty: %s", self.agent_id, exc)
            return
        log.info("%s: restored %d predictions from checkpoint", self.agent_id, restored)

    async def save_checkpoint(self) -> None:
        self._dirty = False
        # Between two batches: score() may be changing per-machine state on a pool thread.
        async with self._scoring:
            snapshot = checkpoint.snapshot(self)
        # Encoding thousands of predictions takes milliseconds: off the event loop.
        data = await asyncio.to_thread(checkpoint.encode, snapshot)
        try:
            await self.ctx.store.save_checkpoint(self.checkpoint_name, data)
        except StoreError as exc:
            self._dirty = True
            log.error("%s: checkpoint not saved: %s", self.agent_id, exc)
            return
        self.last_checkpoint_at = time.time()
        self.durable_cursor = snapshot.inbox_cursor

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval_s)
            if self._dirty:
                await self.save_checkpoint()

    # -- reading -----------------------------------------------------------------------

    def recent(
        self, limit: int, machine_id: int | None = None, camera_id: str | None = None
    ) -> list[Prediction]:
        """Newest first."""
        subject = Subject(machine_id, camera_id)
        out: list[Prediction] = []
        for p in reversed(self.history):
            if subject.matches(p):
                out.append(p)
                if len(out) >= limit:
                    break
        return out

    def health(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "status": self.status,
            "healthy": self.status in ("running", "disabled"),
            "model_version": self.model_version or None,
            "error": self.error,
            "uptime_s": round(time.time() - self.started_at, 1) if self.started_at else None,
            "last_prediction_at": self.last_prediction_at,
        }

    def machines(self) -> dict[str, Any]:
        by_level = Counter(self.last_levels.values())
        ranked = sorted(self.last_levels.items(), key=lambda kv: (-RANK[kv[1]], str(kv[0])))
        return {
            "count": len(self.last_levels),
            "by_level": {level: by_level.get(level, 0) for level in LEVELS},
            "worst_level": worst(list(self.last_levels.values())),
            "worst": [{"subject": m, "level": lvl} for m, lvl in ranked[:5]],
        }

    def stats(self) -> dict[str, Any]:
        return {
            **self.health(),
            "counters": dict(self.counters),
            "inference": self.latency.summary(),
            "queue": self._sub.stats() if self._sub is not None else None,
            "history": {"size": len(self.history), "capacity": self.history.maxlen},
            "websocket": {
                "clients": len(self.ws_clients),
                "dropped": sum(c.dropped for c in self.ws_clients),
            },
            "last_checkpoint_at": self.last_checkpoint_at,
            "journal": {
                "scored_up_to": self.inbox_cursor,
                "checkpointed_up_to": self.durable_cursor,
            },
            "machines": self.machines(),
            "settings": msgspec.to_builtins(self.settings),
        }

    # -- predict (the other routes are in routes.py) ---------------------------------------

    def _require_running(self) -> None:
        if self.status != "running":
            detail = f"{self.agent_id} is {self.status}" + (f": {self.error}" if self.error else "")
            raise ApiError(503, "agent_unavailable", detail)

    def parse_request(self, items: list[Any]) -> tuple[list[TelemetryRecord], list[Rejection]]:
        return self.ctx.machines.parse(items, source=f"http:{self.slug}")

    async def predict_route(self, request: Request) -> Response:
        body = await read_json(request, self.ctx.max_body_bytes)
        self._require_running()
        single = not isinstance(body, list)
        items = [body] if single else body
        if not items:
            raise ApiError(400, "empty_batch", "the array holds no records")
        records, rejections = self.parse_request(items)
        if rejections:
            await self.ctx.hub.publish(topics.REJECTED, rejections, origin=self.agent_id)
        if not records:
            return rejected_response(rejections, single)
        return await self.scored_response(records, rejections, single)

    async def scored_response(
        self, items: Sequence[Any], rejections: list[Rejection], single: bool
    ) -> Response:
        """Score what a predict request held: the prediction itself for one item, else
        {"predictions", "rejected"}."""
        predictions = await self.process(items)
        if not predictions:
            raise ApiError(
                500, "scoring_failed", f"{self.agent_id} could not score the request; see the log"
            )
        if single:
            return json_response(predictions[0])
        return json_response({"predictions": predictions, "rejected": rejections})

    def routes(self) -> list[BaseRoute]:
        return AgentRoutes(self).routes()
