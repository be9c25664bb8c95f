"""The components of one process, built once, and the table that says how each one runs.

Every component is one row of `Components.parts`, in start order: the lifespan enters
the rows' components in that order into one AsyncExitStack (`Components.run`), so
shutdown is the exact reverse: producers stop first, agents drain their queues and
checkpoint, then the pool and the store close. A component that fails to start unwinds
the ones already started. The same rows give the app its routes and /status its sections.

Roles (`serve --role`, settings `instance.role`) split the same components between
processes that share a broker and a database (see docs/configuration.md, "Scale-out"):
`all` runs every one; `ingest` the telemetry side (intake, agents, history, configurator);
`control` the operator side (orchestrator, planner, texts, shift summaries, SCADA,
dashboard). Every component object is built in every role, so /metrics and the SCADA
table keep one shape; a role enters, routes and reports only the rows it runs
(`ROLE_RUNS`); in their place the other role's paths answer 404 saying where they are
served.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from . import __version__
from .agents import AGENTS, Registry, build_agents
from .agents.base import AgentContext, BaseAgent
from .agents.routes import HISTORY_LIMIT_MAX
from .auth import ensure_first_key
from .backlog.service import BacklogAgent
from .bridges.mqtt import MqttBridge
from .bridges.scada.ports import Refused, Value
from .bridges.scada.service import ScadaBridge
from .configure import Configurator
from .configure.requests import ConfigResult
from .errors import FactoryError, SettingsError
from .history import HistoryWriter, StoredHistory, TelemetryApi, TelemetryHistorian
from .http.api import ApiError
from .http.dashboard import ingest_routes
from .http.dashboard import routes as web_routes
from .hub import Hub
from .ingest.intake import Intake
from .ingest.machines import Machines
from .ingest.replay import CameraReplay, Replay
from .labels.routes import LabelRoutes
from .ml.inference import Inference
from .notify import Notifier
from .orchestrator.logic import AlarmConflict
from .orchestrator.routes import OrchestratorRoutes
from .orchestrator.service import AlarmNotFound, Orchestrator
from .planner import Planner
from .settings import MqttSettings, Role, Settings
from .store import Store
from .tasks import cancel
from .topics import ALERTS_FILTER, PREDICTIONS_FILTER

log = logging.getLogger(__name__)
JOURNAL_PRUNE_S = 30.0

# What each role runs, by the name of its row in Components.parts.
_INGEST_SIDE = frozenset({"inference", "intake", "agents", "history", "telemetry", "configurator"})
# Labels are what operators log, beside their alarms.
_CONTROL_SIDE = frozenset(
    {"notifier", "planner", "orchestrator", "backlog", "scada", "dashboard", "labels"}
)
_SHARED = frozenset({"store", "hub", "mqtt"})
ROLE_RUNS: dict[Role, frozenset[str]] = {
    "all": _SHARED | _INGEST_SIDE | _CONTROL_SIDE | {"replay"},
    "ingest": _SHARED | _INGEST_SIDE,
    "control": _SHARED | _CONTROL_SIDE,
}
# The shared subscription group of ingest instances that name none: instances of one
# deployment then split the telemetry without being told to.
DEFAULT_SHARED_GROUP = "factory_mas"


def check_role(settings: Settings) -> None:
    """Refuse a role that cannot work as configured (SettingsError, one line)."""
    role = settings.instance.role
    if role != "all" and not settings.mqtt.broker:
        through = (
            "telemetry reaches ingest instances through its shared subscription"
            if role == "ingest"
            else "alerts and predictions reach the control instance through it"
        )
        raise SettingsError(
            f"the {role} role needs an MQTT broker: set MQTT_BROKER (mqtt.broker); {through}"
        )


def role_mqtt_settings(settings: Settings) -> MqttSettings:
    """The bridge's settings for this role: ingest instances share the telemetry; the
    control instance takes what the ingest instances send instead of telemetry."""
    mqtt = settings.mqtt
    role = settings.instance.role
    if role == "ingest":
        return msgspec.structs.replace(mqtt, shared_group=mqtt.shared_group or DEFAULT_SHARED_GROUP)
    if role == "control":
        return msgspec.structs.replace(mqtt, subscribe=[ALERTS_FILTER, PREDICTIONS_FILTER])
    return mqtt


# -- the table ---------------------------------------------------------------------------


# What the lifespan enters: started on entry, stopped on exit.
Component = AbstractAsyncContextManager[object]


def _no_routes() -> Sequence[BaseRoute]:
    return ()


@dataclass(frozen=True)
class Part:
    """One row of the table: a component as the app runs it."""

    name: str  # what ROLE_RUNS calls it
    enter: Sequence[Component] = ()  # entered in this order
    routes: Callable[[], Sequence[BaseRoute]] = _no_routes
    # Served instead where the role does not run it.
    elsewhere: Callable[[], Sequence[BaseRoute]] = _no_routes
    section: str = ""  # its /status section, showing `stats`
    stats: Callable[[], dict[str, Any]] = dict


class Step:
    """A start-up or shutdown step that belongs to no component: `start` is awaited at its
    place in the table, `stop` called at the same place on the way out."""

    def __init__(
        self,
        start: Callable[[], Awaitable[object]] | None = None,
        stop: Callable[[], object] | None = None,
    ) -> None:
        self.start = start
        self.stop = stop

    async def __aenter__(self) -> Step:
        if self.start is not None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.stop is not None:
            self.stop()


class Every:
    """Runs `job` every `interval_s` while entered; a failure is logged, not fatal."""

    def __init__(self, interval_s: float, job: Callable[[], Awaitable[object]]) -> None:
        self.interval_s = interval_s
        self.job = job
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Every:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.job()
            except FactoryError as exc:
                log.error("%s failed: %s", getattr(self.job, "__name__", "job"), exc)


def _elsewhere(path: str, detail: str) -> Route:
    """A route that belongs to the other role: 404 saying where it is served."""

    async def answer(_request: Request) -> Response:
        raise ApiError(404, "not_on_this_instance", detail)

    return Route(path, answer, methods=["GET", "POST"])


def _not_run(role: str) -> dict[str, Any]:
    return {"running": False, "not_run_by_role": role}


# -- the plant SCADA sees ----------------------------------------------------------------


class Plant:
    """The SCADA bridge's ports (PlantView and PlantControl) over the real components."""

    def __init__(
        self,
        agents: list[BaseAgent],
        orchestrator: Orchestrator,
        mqtt: MqttBridge,
        configurator: Configurator,
    ) -> None:
        self.agents = agents
        self.orchestrator = orchestrator
        self.mqtt = mqtt
        self.configurator = configurator
        # Set by the lifespan once every component has started, cleared on the way out.
        self.ready = False

    @property
    def broker_connected(self) -> bool:
        return self.mqtt.connected

    @property
    def alarm_flood(self) -> bool:
        return self.orchestrator.flood.active

    def alarm_counts(self) -> dict[str, Any]:
        return self.orchestrator.counts()

    async def change_setting(
        self, agent_id: str, key: str, value: Value, *, by: str, origin: str
    ) -> ConfigResult:
        return await self.configurator.submit(agent_id, {"set": {key: value}, "by": by}, origin)

    async def set_running(self, agent_id: str, running: bool) -> None:
        agent = next((a for a in self.agents if a.agent_id == agent_id), None)
        if agent is None:  # a control instance: the agents run on the ingest instances
            raise Refused(f"{agent_id} does not run on this instance")
        try:
            await agent.set_running(running)
        except FactoryError as exc:
            raise Refused(str(exc)) from exc

    async def ack_alarm(self, alarm_id: int, *, by: str, note: str) -> None:
        try:
            await self.orchestrator.ack(alarm_id, by, note=note)
        except (AlarmNotFound, AlarmConflict) as exc:
            raise Refused(str(exc)) from exc


# -- the components ----------------------------------------------------------------------


@dataclass
class Components:
    settings: Settings
    hub: Hub
    store: Store
    inference: Inference
    intake: Intake
    agents: list[BaseAgent]
    replay: Replay
    cameras: CameraReplay
    planner: Planner
    notifier: Notifier
    orchestrator: Orchestrator
    history: HistoryWriter
    # The telemetry historian: where ingest happens, so each record is stored once, by
    # the instance that journaled it.
    telemetry: TelemetryHistorian
    mqtt: MqttBridge
    configurator: Configurator
    backlog: BacklogAgent
    plant: Plant
    scada: ScadaBridge
    role: Role = "all"
    instance_id: str = ""
    started_at: float = field(default_factory=time.time)
    # The agents this application knows (agents/registry.py), running here or not.
    registry: Registry = AGENTS
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        """Every component has started."""
        return self.plant.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.plant.ready = value

    @cached_property
    def parts(self) -> tuple[Part, ...]:
        """The table, in start order."""
        control_side = (
            "alarms, plans, texts, shift summaries and SCADA are served by the control "
            f"instance; this is ingest instance {self.instance_id}"
        )

        def served_by_control(*paths: str) -> Callable[[], list[BaseRoute]]:
            return lambda: [_elsewhere(path, control_side) for path in paths]

        def mounted(
            prefix: str, routes: Callable[[], Sequence[BaseRoute]]
        ) -> Callable[[], list[BaseRoute]]:
            return lambda: [Mount(prefix, routes=routes())]

        replay = self.settings.replay
        telemetry_api = TelemetryApi(self.store)
        return (
            Part(
                "store",
                # No key at all: make the first admin key and show it once (see README).
                (self.store, Step(lambda: ensure_first_key(self.store, self.settings))),
            ),
            Part("hub", (Step(stop=self.hub.close),), section="hub", stats=self.hub.stats),
            Part(
                "labels",
                routes=LabelRoutes(self.store, self.settings.server.max_body_bytes).routes,
                elsewhere=served_by_control("/api/labels"),
            ),
            Part(
                "notifier",
                (self.notifier,),
                mounted("/api/notify", self.notifier.routes),
                served_by_control("/api/notify/{rest:path}"),
                section="notify",
                stats=self.notifier.stats,
            ),
            Part(
                "planner",
                (self.planner,),
                mounted("/api/planner", self.planner.routes),
                served_by_control("/api/planner/{rest:path}"),
                section="planner",
                stats=self.planner.stats,
            ),
            Part(
                "orchestrator",
                # Before the agents: it must be listening when they send their first
                # alerts, and still listening while they drain on shutdown. On a control
                # instance, before the bridge that hands it the alerts from the broker.
                (self.orchestrator,),
                self._orchestrator_routes,
                served_by_control("/system-state", "/api/orchestrator/{rest:path}"),
                section="orchestrator",
                stats=self.orchestrator.stats,
            ),
            Part("inference", (self.inference,)),
            # Before the agents, so it stops after them and writes their last predictions.
            Part("history", (self.history,), section="history", stats=self.history.stats),
            # Before the producers (intake, the bridge, the replay), so it hears their first
            # records. The stored telemetry is read from the shared store in any role.
            Part(
                "telemetry",
                (self.telemetry,),
                telemetry_api.routes,
                telemetry_api.routes,
                section="telemetry",
                stats=self.telemetry.stats,
            ),
            Part(
                "configurator",
                # Before the MQTT bridge, so no config request from the broker finds nobody
                # listening, and before the agents, so run-time settings saved from SCADA,
                # MQTT or REST are in force for their first records (journal catch-up too).
                (self.configurator,),
                self.configurator.routes,
                self._config_elsewhere,
                section="config",
                stats=self.configurator.stats,
            ),
            Part(
                "backlog",
                # Before the agents (and the bridge), so its tally of the shift misses
                # none of their predictions.
                (self.backlog,),
                mounted("/api/backlog", self.backlog.routes),
                served_by_control("/api/backlog/{rest:path}"),
                section="backlog",
                stats=self.backlog.status,
            ),
            Part(
                "intake",
                # The machines the checkpoints keep state for count against
                # limits.max_machines before any record comes in: the broker may hand over
                # a backlog at once.
                (Step(self._note_saved_machines),),
                self.intake.routes,
                lambda: [
                    _elsewhere(
                        "/api/ingest",
                        "telemetry goes to the ingest instances: publish it on the MQTT "
                        "broker (sensors/factory/data/<machine_id>) or POST it to an ingest "
                        "instance",
                    )
                ],
                section="ingest",
                stats=self.intake.stats,
            ),
            # Also before the agents: telemetry it takes early is journaled and scored when
            # they start, and their last alerts on the way out still reach its outbox.
            Part("mqtt", (self.mqtt,), section="mqtt", stats=self.mqtt.stats),
            Part(
                "agents",
                (
                    *self.agents,
                    *(
                        [Every(JOURNAL_PRUNE_S, self.prune_journal)]
                        if self.agents or self.telemetry.enabled
                        else []
                    ),
                ),
                lambda: [Mount(f"/api/{a.slug}", routes=a.routes()) for a in self.agents],
                self._stored_history_routes,
            ),
            Part(
                "scada",
                # After the agents (its values are theirs), before the producers.
                (self.scada,),
                self.scada.routes,
                served_by_control("/api/scada/{rest:path}"),
                section="scada",
                stats=self.scada.status,
            ),
            Part(
                "replay",
                (self.replay, *([self.cameras] if replay.cameras else []))
                if replay.enabled
                else (),
                section="replay",
                stats=self._replay_status,
            ),
            # Last: the dashboard at / and its files under /static.
            Part("dashboard", routes=web_routes, elsewhere=lambda: ingest_routes(self.instance_id)),
        )

    def runs(self, component: str) -> bool:
        """Whether this process's role runs the component (a ROLE_RUNS name)."""
        return component in ROLE_RUNS[self.role]

    def routes(self) -> list[BaseRoute]:
        """The routes of the rows this role runs, and where it runs none the other role's
        paths, answering 404 with where they are served."""
        return [
            route
            for part in self.parts
            for route in (part.routes() if self.runs(part.name) else part.elsewhere())
        ]

    def _orchestrator_routes(self) -> list[BaseRoute]:
        orchestrator_routes = OrchestratorRoutes(self.orchestrator)
        return [
            Route("/system-state", orchestrator_routes.system_state),
            Mount("/api/orchestrator", routes=orchestrator_routes.routes()),
        ]

    def _config_elsewhere(self) -> list[BaseRoute]:
        # The audit trail is in the store: readable anywhere. Changes are applied by the
        # instances that run the agents.
        changes = [r for r in self.configurator.routes() if r.path == "/api/config/changes"]
        detail = (
            "settings are applied by the ingest instances, which run the agents: publish "
            "the request on config/<agent_id> at the MQTT broker, which every one of them "
            "takes"
        )
        return [
            *changes,
            _elsewhere("/api/config", detail),
            _elsewhere("/api/config/{rest:path}", detail),
        ]

    def _stored_history_routes(self) -> list[BaseRoute]:
        # The dashboard's machine pages read the agents' history: the ingest instances
        # store it, so it is served from the store here.
        return [
            Mount(
                f"/api/{t.slug}",
                routes=StoredHistory(self.store, t.agent_id, t.slug, HISTORY_LIMIT_MAX).routes(),
            )
            for t in self.registry
        ]

    async def _note_saved_machines(self) -> None:
        for agent in self.agents:
            self.intake.machines.note(await agent.saved_machines())

    @asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Every row this role runs, started in table order and stopped in reverse."""
        async with AsyncExitStack() as stack:
            for part in self.parts:
                if self.runs(part.name):
                    for component in part.enter:
                        await stack.enter_async_context(component)
            # SIGHUP reloads every model, the way daemons reread their files. Signals can
            # only be handled on the main thread; a test harness may run us elsewhere.
            if self.agents and threading.current_thread() is threading.main_thread():
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGHUP, lambda: self.spawn(self.reload_models()))
                stack.callback(loop.remove_signal_handler, signal.SIGHUP)
            _settle()
            if self.scada.background and self.runs("scada") and self.settings.scada.enabled:
                self.spawn(self.settle_after_scada())
            self.ready = True
            try:
                yield
            finally:
                self.ready = False

    async def health(self) -> tuple[bool, dict[str, Any]]:
        # A full disk still answers the ping: writes are asked too, for telemetry that
        # cannot be journaled is refused, and nothing the process learns is kept.
        write_problem = self.store.write_problem
        store_ok = await self.store.ping() and write_problem is None
        agent_health = {a.agent_id: a.health() for a in self.agents}
        orchestrating = self.runs("orchestrator")
        ok = (
            store_ok
            and self.ready
            and (self.orchestrator.running or not orchestrating)
            # A configured broker that is away, or a SCADA server that could not bind its
            # port, degrades us; we still serve (HTTP 200).
            and (self.mqtt.connected or not self.mqtt.enabled)
            and not self.scada.problems
            and all(h["healthy"] for h in agent_health.values())
        )
        if not orchestrating:
            orchestrator = "off"
        else:
            orchestrator = "running" if self.orchestrator.running else "stopped"
        scada_off = not (self.settings.scada.enabled and self.runs("scada"))
        replaying = self.settings.replay.enabled and self.runs("replay")
        body = {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "role": self.role,
            "instance_id": self.instance_id,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "components": {
                "store": store_ok,
                "store_error": write_problem,
                "agents": {agent_id: h["status"] for agent_id, h in agent_health.items()},
                "orchestrator": orchestrator,
                "mqtt_connected": self.mqtt.connected if self.mqtt.enabled else None,
                "scada": self.scada.problems or ("off" if scada_off else "ok"),
                "replay": self.replay.stats()["running"] if replaying else "off",
            },
        }
        return store_ok and self.ready, body

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        # Keep a reference: the loop holds tasks weakly, and a collected task never ends.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle_after_scada(self) -> None:
        # OPC UA's address space is some 400,000 objects, built after the rest was parked.
        await self.scada.started.wait()
        if self.ready:  # not on the way out
            _settle()

    async def prune_journal(self) -> int:
        """Drop journal rows that the saved checkpoint of every running agent that reads
        the journal, and the telemetry historian's stored cursor, cover."""
        cursors = [
            a.durable_cursor for a in self.agents if a.status == "running" and a.reads_journal
        ]
        if self.telemetry.running:
            cursors.append(self.telemetry.durable_cursor)
        if not cursors or min(cursors) == 0:
            return 0
        return await self.store.inbox_prune(min(cursors))

    async def reload_models(self) -> None:
        for agent in self.agents:
            try:
                await agent.reload()
            except FactoryError as exc:
                log.error("%s: reload refused, the old model stays: %s", agent.agent_id, exc)

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "role": self.role,
            "instance_id": self.instance_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "store": {"url": self.store.safe_url, "schema_version": self.store.version},
            # Every section in every role, so readers find the same shape everywhere.
            **{
                part.section: part.stats() if self.runs(part.name) else _not_run(self.role)
                for part in self.parts
                if part.section
            },
            # Keyed by agent: none on a control instance.
            "agents": {a.agent_id: a.stats() for a in self.agents},
        }

    def _replay_status(self) -> dict[str, Any]:
        return {
            **(self.replay.stats() if self.settings.replay.enabled else {"running": False}),
            "cameras": self.cameras.stats(),
        }


def _settle() -> None:
    # Models and settings live as long as the process: park them where the garbage
    # collector no longer walks them on every full collection.
    gc.collect()
    gc.freeze()


def build_components(
    settings: Settings, *, scada_in_background: bool = False, registry: Registry = AGENTS
) -> Components:
    check_role(settings)
    role = settings.instance.role
    if role != "all":
        if not settings.data.database_url:
            log.warning(
                "%s role on SQLite (%s): instances share state only through one database; "
                "set DATABASE_URL to a PostgreSQL database shared by every instance",
                role,
                settings.data_dir / "factory.db",
            )
        if settings.replay.enabled:
            log.info(
                "replay.enabled is ignored by the %s role: publish telemetry to the broker "
                "(python -m factory_mas replay --mqtt --per-machine-topics)",
                role,
            )
    hub = Hub(queue_size=settings.hub.queue_size)
    store = Store.from_settings(settings)
    inference = Inference(settings.inference.threads)
    machines = Machines(settings.limits.max_machines)
    ctx = AgentContext(
        hub=hub,
        store=store,
        inference=inference,
        models_dir=settings.models_dir,
        max_batch=settings.inference.max_batch,
        max_wait_s=settings.inference.max_wait_ms / 1000,
        max_body_bytes=settings.server.max_body_bytes,
        machines=machines,
    )
    intake = Intake(hub, settings.server.max_body_bytes, store, machines)

    async def to_hub(rows: list[dict[str, Any]], indices: list[int] | None) -> None:
        await intake.accept(rows, replay.source, indices=indices)

    replay = Replay(settings.replay, to_hub)

    async def frame_to_hub(topic: str, jpeg: bytes) -> None:
        await hub.publish(topic, jpeg, origin="replay")

    cameras = CameraReplay(settings.replay, frame_to_hub)
    # A control instance runs no agents: the ingest instances do, and send what they find.
    agents = build_agents(settings, ctx, registry) if role != "control" else []
    planner = Planner(settings.planner, settings.server.max_body_bytes)
    notifier = Notifier(settings.notify, store)
    orchestrator = Orchestrator(
        settings, hub, store, planner, notifier, settings.server.max_body_bytes
    )
    h = settings.history
    history = HistoryWriter(
        hub,
        store,
        h.retention_days,
        h.flush_interval_s,
        queue_size=h.queue_size,
        sample_s=h.sample_s,
    )
    telemetry = TelemetryHistorian(
        hub,
        store,
        h.telemetry_retention_days,
        h.telemetry_max_rows,
        enabled=h.telemetry_enabled,
        flush_interval_s=h.flush_interval_s,
    )
    mqtt = MqttBridge(
        role_mqtt_settings(settings),
        hub,
        store,
        intake,
        settings.server.port,
        instance_id=settings.instance_id,
        # Acknowledged to the broker once their alarms are committed, not before.
        alert_sink=orchestrator.submit_until_stored if role == "control" else None,
    )
    configurator = Configurator(agents, hub, store)
    plant = Plant(agents, orchestrator, mqtt, configurator)
    return Components(
        settings,
        hub,
        store,
        inference,
        intake,
        agents,
        replay,
        cameras,
        planner,
        notifier,
        orchestrator,
        history,
        telemetry,
        mqtt,
        configurator,
        BacklogAgent(settings.backlog, hub, store),
        plant,
        ScadaBridge(
            settings, plant, plant, hub, store, background=scada_in_background, registry=registry
        ),
        role=role,
        instance_id=settings.instance_id,
        registry=registry,
    )
