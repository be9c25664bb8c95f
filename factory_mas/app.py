"""The Starlette application: routes, and a lifespan that runs every component.

Components are entered into one AsyncExitStack in dependency order (store, hub, inference
pool, agents, then the producers), so shutdown is the exact reverse: producers stop first,
agents drain their queues and checkpoint, then the pool and the store close. A component
that fails to start unwinds the ones already started.

Roles (`serve --role`, settings `instance.role`) split the same components between
processes that share a broker and a database (see README, "Scale-out"): `all` runs every
one; `ingest` the telemetry side (intake, agents, history, configurator); `control` the
operator side (orchestrator, planner, texts, shift summaries, SCADA, dashboard). Every
component object is built in every role, so /metrics and the SCADA table keep one shape;
a role enters, routes and reports only the ones it runs (`ROLE_RUNS`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from . import __version__
from .agents import build_agents
from .agents.base import HISTORY_LIMIT_MAX, AgentContext, BaseAgent
from .agents.cyber.agent import CyberAgent
from .agents.energy.agent import EnergyAgent
from .agents.pm.agent import PmAgent
from .agents.ppe.agent import PpeAgent
from .agents.safety.agent import SafetyAgent
from .auth import AuthMiddleware, ensure_first_key
from .auth.routes import AuthRoutes
from .backlog.service import BacklogAgent
from .bridges.mqtt import MqttBridge
from .bridges.scada.service import ScadaBridge
from .configure import Configurator
from .errors import FactoryError, SettingsError
from .history import HistoryWriter, StoredHistory
from .http.api import EXCEPTION_HANDLERS, ApiError, configure_json_limits, json_response
from .http.dashboard import ingest_routes
from .http.dashboard import routes as web_routes
from .http.limits import ProxyHeadersMiddleware, RateLimitMiddleware, SecurityHeadersMiddleware
from .http.metrics import Metrics
from .hub import Hub
from .ingest.intake import Intake
from .ingest.machines import Machines
from .ingest.replay import CameraReplay, Replay
from .logs import RequestIdMiddleware
from .ml.inference import Inference
from .notify import Notifier
from .orchestrator.routes import OrchestratorRoutes
from .orchestrator.service import Orchestrator
from .planner import Planner
from .settings import MqttSettings, Role, Settings
from .store import Store
from .tasks import cancel
from .topics import ALERTS_FILTER, PREDICTIONS_FILTER

log = logging.getLogger(__name__)
JOURNAL_PRUNE_S = 30.0

# What each role runs, by Components field (plus "dashboard" and "replay").
_INGEST_SIDE = frozenset({"inference", "intake", "agents", "history", "configurator"})
_CONTROL_SIDE = frozenset({"notifier", "planner", "orchestrator", "backlog", "scada", "dashboard"})
_SHARED = frozenset({"store", "hub", "mqtt"})
ROLE_RUNS: dict[Role, frozenset[str]] = {
    "all": _SHARED | _INGEST_SIDE | _CONTROL_SIDE | {"replay"},
    "ingest": _SHARED | _INGEST_SIDE,
    "control": _SHARED | _CONTROL_SIDE,
}
# The shared subscription group of ingest instances that name none: instances of one
# deployment then split the telemetry without being told to.
DEFAULT_SHARED_GROUP = "factory_mas"
# The agents whose stored history a control instance serves; their ids and paths.
AGENT_TYPES: tuple[type[BaseAgent], ...] = (PmAgent, EnergyAgent, CyberAgent, SafetyAgent, PpeAgent)


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


def _elsewhere(path: str, detail: str) -> Route:
    """A route that belongs to the other role: 404 saying where it is served."""

    async def answer(_request: Request) -> Response:
        raise ApiError(404, "not_on_this_instance", detail)

    return Route(path, answer, methods=["GET", "POST"])


def _not_run(role: str) -> dict[str, Any]:
    return {"running": False, "not_run_by_role": role}


@asynccontextmanager
async def every(interval_s: float, job: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """Run `job` every `interval_s` while the block runs; a failure is logged, not fatal."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except FactoryError as exc:
                log.error("%s failed: %s", getattr(job, "__name__", "job"), exc)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        await cancel(task)


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
    mqtt: MqttBridge
    configurator: Configurator
    backlog: BacklogAgent
    # Built once the rest exists: its values come from all of them.
    scada: ScadaBridge = field(init=False)
    role: Role = "all"
    instance_id: str = ""
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def runs(self, component: str) -> bool:
        """Whether this process's role runs the component (a ROLE_RUNS name)."""
        return component in ROLE_RUNS[self.role]

    async def health(self) -> tuple[bool, dict[str, Any]]:
        # A full disk still answers the ping: writes are asked too, for telemetry that
        # cannot be journaled is refused, and nothing the process learns is kept.
        write_problem = self.store.write_problem
        store_ok = await self.store.ping() and write_problem is None
        agents = {a.agent_id: a.health()["status"] for a in self.agents}
        orchestrating = self.runs("orchestrator")
        ok = (
            store_ok
            and self.ready
            and (self.orchestrator.running or not orchestrating)
            # A configured broker that is away, or a SCADA server that could not bind its
            # port, degrades us; we still serve (HTTP 200).
            and (self.mqtt.connected or not self.mqtt.enabled)
            and not self.scada.problems
            and all(a.health()["healthy"] for a in self.agents)
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
                "agents": agents,
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
        the journal covers."""
        cursors = [
            a.durable_cursor for a in self.agents if a.status == "running" and a.reads_journal
        ]
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
        sections: dict[str, tuple[str, Callable[[], Any]]] = {
            "ingest": ("intake", self.intake.stats),
            "replay": ("replay", self._replay_status),
            "orchestrator": ("orchestrator", self.orchestrator.stats),
            "history": ("history", self.history.stats),
            "mqtt": ("mqtt", self.mqtt.stats),
            "scada": ("scada", self.scada.status),
            "config": ("configurator", self.configurator.stats),
            "planner": ("planner", self.planner.stats),
            "notify": ("notifier", self.notifier.stats),
            "backlog": ("backlog", self.backlog.status),
            "hub": ("hub", self.hub.stats),
        }
        return {
            "version": __version__,
            "role": self.role,
            "instance_id": self.instance_id,
            "uptime_s": round(time.time() - self.started_at, 1),
            "store": {"url": self.store.safe_url, "schema_version": self.store.version},
            # Every section in every role, so readers find the same shape everywhere.
            **{
                key: show() if self.runs(component) else _not_run(self.role)
                for key, (component, show) in sections.items()
            },
            # Keyed by agent: none on a control instance.
            "agents": {a.agent_id: a.stats() for a in self.agents},
        }

    def _replay_status(self) -> dict[str, Any]:
        return {
            **(self.replay.stats() if self.settings.replay.enabled else {"running": False}),
            "cameras": self.cameras.stats(),
        }


def build_components(settings: Settings, *, scada_in_background: bool = False) -> Components:
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
    agents = build_agents(settings, ctx) if role != "control" else []
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
    components = Components(
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
        MqttBridge(
            role_mqtt_settings(settings),
            hub,
            store,
            intake,
            settings.server.port,
            instance_id=settings.instance_id,
            # Acknowledged to the broker once their alarms are committed, not before.
            alert_sink=orchestrator.submit_until_stored if role == "control" else None,
        ),
        Configurator(agents, hub, store),
        BacklogAgent(settings.backlog, hub, store),
        role=role,
        instance_id=settings.instance_id,
    )
    components.scada = ScadaBridge(components, background=scada_in_background)
    return components


def _role_routes(c: Components) -> list[BaseRoute]:
    """The routes of the components this role runs; the other role's paths answer 404
    saying where they are served."""
    routes: list[BaseRoute] = []
    if c.runs("intake"):
        routes += c.intake.routes()
    else:
        routes.append(
            _elsewhere(
                "/api/ingest",
                "telemetry goes to the ingest instances: publish it on the MQTT broker "
                "(sensors/factory/data/<machine_id>) or POST it to an ingest instance",
            )
        )
    if c.runs("configurator"):
        routes += c.configurator.routes()
    else:
        # The audit trail is in the store: readable anywhere. Changes are applied by the
        # instances that run the agents.
        routes += [r for r in c.configurator.routes() if r.path == "/api/config/changes"]
        detail = (
            "settings are applied by the ingest instances, which run the agents: publish "
            "the request on config/<agent_id> at the MQTT broker, which every one of them "
            "takes"
        )
        routes += [_elsewhere("/api/config", detail), _elsewhere("/api/config/{rest:path}", detail)]
    if c.runs("orchestrator"):
        orchestrator_routes = OrchestratorRoutes(c.orchestrator)
        routes += [
            Route("/system-state", orchestrator_routes.system_state),
            *c.scada.routes(),
            Mount("/api/orchestrator", routes=orchestrator_routes.routes()),
            Mount("/api/planner", routes=c.planner.routes()),
            Mount("/api/notify", routes=c.notifier.routes()),
            Mount("/api/backlog", routes=c.backlog.routes()),
        ]
    else:
        detail = (
            "alarms, plans, texts, shift summaries and SCADA are served by the control "
            f"instance; this is ingest instance {c.instance_id}"
        )
        routes.append(_elsewhere("/system-state", detail))
        for prefix in ("orchestrator", "planner", "notify", "backlog", "scada"):
            routes.append(_elsewhere(f"/api/{prefix}/{{rest:path}}", detail))
    if c.runs("agents"):
        routes += [Mount(f"/api/{a.slug}", routes=a.routes()) for a in c.agents]
    else:
        # The dashboard's machine pages read the agents' history: the ingest instances
        # store it, so it is served from the store here.
        routes += [
            Mount(
                f"/api/{t.slug}",
                routes=StoredHistory(c.store, t.agent_id, t.slug, HISTORY_LIMIT_MAX).routes(),
            )
            for t in AGENT_TYPES
        ]
    return routes


def _settle() -> None:
    # Models and settings live as long as the process: park them where the garbage
    # collector no longer walks them on every full collection.
    gc.collect()
    gc.freeze()


def build_app(settings: Settings, *, scada_in_background: bool = False) -> Starlette:
    """The application. `scada_in_background`: the SCADA servers start once the app is
    ready instead of before (seconds sooner; /health reports them starting meanwhile)."""
    c = build_components(settings, scada_in_background=scada_in_background)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(c.store)
            # No key at all: make the first admin key and show it once (see README).
            await ensure_first_key(c.store, settings)
            stack.callback(c.hub.close)
            if c.runs("orchestrator"):
                await stack.enter_async_context(c.notifier)
                await stack.enter_async_context(c.planner)
                # Before the agents: it must be listening when they send their first
                # alerts, and still listening while they drain on shutdown. On a control
                # instance, before the bridge that hands it the alerts from the broker.
                await stack.enter_async_context(c.orchestrator)
            if c.runs("agents"):
                await stack.enter_async_context(c.inference)
                # Before the agents, so it stops after them and writes their last
                # predictions.
                await stack.enter_async_context(c.history)
                # Before the MQTT bridge, so no config request from the broker finds nobody
                # listening, and before the agents, so run-time settings saved from SCADA,
                # MQTT or REST are in force for their first records (journal catch-up too).
                await stack.enter_async_context(c.configurator)
            if c.runs("backlog"):
                # Before the agents (and the bridge), so its tally of the shift misses
                # none of their predictions.
                await stack.enter_async_context(c.backlog)
            # The machines the checkpoints keep state for count against limits.max_machines
            # before any record comes in: the broker may hand over a backlog at once.
            for agent in c.agents:
                c.intake.machines.note(await agent.saved_machines())
            # Also before the agents: telemetry it takes early is journaled and scored when
            # they start, and their last alerts on the way out still reach its outbox.
            await stack.enter_async_context(c.mqtt)
            for agent in c.agents:
                await stack.enter_async_context(agent)
            if c.agents:
                await stack.enter_async_context(every(JOURNAL_PRUNE_S, c.prune_journal))
            scada = c.runs("scada") and settings.scada.enabled
            if c.runs("scada"):
                # After the agents (its values are theirs), before the producers.
                await stack.enter_async_context(c.scada)
            if c.runs("replay") and settings.replay.enabled:
                await stack.enter_async_context(c.replay)
                if settings.replay.cameras:
                    await stack.enter_async_context(c.cameras)
            # SIGHUP reloads every model, the way daemons reread their files. Signals can
            # only be handled on the main thread; a test harness may run us elsewhere.
            if c.agents and threading.current_thread() is threading.main_thread():
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGHUP, lambda: c.spawn(c.reload_models()))
                stack.callback(loop.remove_signal_handler, signal.SIGHUP)
            _settle()
            if scada_in_background and scada:
                c.spawn(c.settle_after_scada())
            c.ready = True
            if c.role == "all":
                log.info("factory_mas %s ready", __version__)
            else:
                log.info("factory_mas %s ready: %s instance %s", __version__, c.role, c.instance_id)
            try:
                yield
            finally:
                c.ready = False
                log.info("factory_mas stopping")

    async def health(_request: Request) -> Response:
        ok, body = await c.health()
        return json_response(body, 200 if ok else 503)

    async def status(_request: Request) -> Response:
        return json_response(c.status())

    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/status", status),
        *AuthRoutes(c.store).routes(),
        *_role_routes(c),
        *Metrics(c).routes(),
        # Last: the dashboard at / and its files under /static.
        *(web_routes() if c.runs("dashboard") else ingest_routes(c.instance_id)),
    ]
    configure_json_limits(settings.limits.json_max_depth, settings.limits.json_max_items)
    # Outermost first: security headers on every answer (429s included), then the rate
    # limit (a brute-forced key gets 429 before auth sees it), then CORS, then auth.
    middleware = [
        # First the real client's address: rate limits and every log line use it.
        Middleware(ProxyHeadersMiddleware, trusted=settings.server.forwarded_allow_ips),
        # Outside everything: every log line about a request carries its id, refusals too.
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware),
        Middleware(RateLimitMiddleware, settings=settings.limits),
    ]
    if settings.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.server.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            )
        )
    # After CORS, so it is inside it: preflights are answered and 401/403 carry CORS
    # headers. It passes everything through when auth is off.
    middleware.append(Middleware(AuthMiddleware, store=c.store, settings=settings))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
    )
    app.state.components = c
    return app
