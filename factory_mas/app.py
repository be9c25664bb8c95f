"""The Starlette application: routes, and a lifespan that runs every component.

Components are entered into one AsyncExitStack in dependency order (store, hub, inference
pool, agents, then the producers), so shutdown is the exact reverse: producers stop first,
agents drain their queues and checkpoint, then the pool and the store close. A component
that fails to start unwinds the ones already started.
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

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from . import __version__
from .agents import build_agents
from .agents.base import AgentContext, BaseAgent
from .api import EXCEPTION_HANDLERS, configure_json_limits, json_response
from .auth import AuthMiddleware, ensure_first_key
from .auth.routes import AuthRoutes
from .backlog.service import BacklogAgent
from .bridges.mqtt import MqttBridge
from .bridges.scada.service import ScadaBridge
from .configure import Configurator
from .errors import FactoryError
from .history import HistoryWriter
from .hub import Hub
from .inference import Inference
from .ingest import Intake
from .limits import RateLimitMiddleware, SecurityHeadersMiddleware
from .logs import RequestIdMiddleware
from .metrics import Metrics
from .notify import Notifier
from .orchestrator.routes import OrchestratorRoutes
from .orchestrator.service import Orchestrator
from .planner import Planner
from .replay import CameraReplay, Replay
from .settings import Settings
from .store import Store
from .tasks import cancel
from .web_routes import routes as web_routes

log = logging.getLogger(__name__)
JOURNAL_PRUNE_S = 30.0


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
    started_at: float = field(default_factory=time.time)
    ready: bool = False
    _tasks: set[asyncio.Task] = field(default_factory=set)

    async def health(self) -> tuple[bool, dict[str, Any]]:
        store_ok = await self.store.ping()
        agents = {a.agent_id: a.health()["status"] for a in self.agents}
        ok = (
            store_ok
            and self.ready
            and self.orchestrator.running
            # A configured broker that is away, or a SCADA server that could not bind its
            # port, degrades us; we still serve (HTTP 200).
            and (self.mqtt.connected or not self.mqtt.enabled)
            and not self.scada.problems
            and all(a.health()["healthy"] for a in self.agents)
        )
        body = {
            "status": "ok" if ok else "degraded",
            "version": __version__,
            "ready": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
            "components": {
                "store": store_ok,
                "agents": agents,
                "orchestrator": "running" if self.orchestrator.running else "stopped",
                "mqtt_connected": self.mqtt.connected if self.mqtt.enabled else None,
                "scada": self.scada.problems
                or ("off" if not self.settings.scada.enabled else "ok"),
                "replay": self.replay.stats()["running"] if self.settings.replay.enabled else "off",
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
        """Drop journal rows that every running agent's saved checkpoint covers."""
        cursors = [a.durable_cursor for a in self.agents if a.status == "running"]
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
            "uptime_s": round(time.time() - self.started_at, 1),
            "store": {"url": self.store.safe_url, "schema_version": self.store.version},
            "ingest": self.intake.stats(),
            "replay": {
                **(self.replay.stats() if self.settings.replay.enabled else {"running": False}),
                "cameras": self.cameras.stats(),
            },
            "agents": {a.agent_id: a.stats() for a in self.agents},
            "orchestrator": self.orchestrator.stats(),
            "history": self.history.stats(),
            "mqtt": self.mqtt.stats(),
            "scada": self.scada.status(),
            "config": self.configurator.stats(),
            "planner": self.planner.stats(),
            "notify": self.notifier.stats(),
            "backlog": self.backlog.status(),
            "hub": self.hub.stats(),
        }


def build_components(settings: Settings, *, scada_in_background: bool = False) -> Components:
    hub = Hub(queue_size=settings.hub.queue_size)
    store = Store.from_settings(settings)
    inference = Inference(settings.inference.threads)
    ctx = AgentContext(
        hub=hub,
        store=store,
        inference=inference,
        models_dir=settings.models_dir,
        max_batch=settings.inference.max_batch,
        max_wait_s=settings.inference.max_wait_ms / 1000,
        max_body_bytes=settings.server.max_body_bytes,
    )
    intake = Intake(hub, settings.server.max_body_bytes, store)

    async def to_hub(rows: list[dict[str, Any]], indices: list[int] | None) -> None:
        await intake.accept(rows, replay.source, indices=indices)

    replay = Replay(settings.replay, to_hub)

    async def frame_to_hub(topic: str, jpeg: bytes) -> None:
        await hub.publish(topic, jpeg, origin="replay")

    cameras = CameraReplay(settings.replay, frame_to_hub)
    agents = build_agents(settings, ctx)
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
        MqttBridge(settings.mqtt, hub, store, intake, settings.server.port),
        Configurator(agents, hub, store),
        BacklogAgent(settings.backlog, hub, store),
    )
    components.scada = ScadaBridge(components, background=scada_in_background)
    return components


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
            await stack.enter_async_context(c.notifier)
            await stack.enter_async_context(c.planner)
            # Before the agents: it must be listening when they send their first alerts,
            # and still listening while they drain on shutdown.
            await stack.enter_async_context(c.orchestrator)
            await stack.enter_async_context(c.inference)
            # Before the agents, so it stops after them and writes their last predictions.
            await stack.enter_async_context(c.history)
            # Before the MQTT bridge, so no config request from the broker finds nobody
            # listening, and before the agents, so run-time settings saved from SCADA, MQTT
            # or REST are in force for their first records (journal catch-up included).
            await stack.enter_async_context(c.configurator)
            # Before the agents, so its tally of the shift misses none of their predictions.
            await stack.enter_async_context(c.backlog)
            # Also before the agents: telemetry it takes early is journaled and scored when
            # they start, and their last alerts on the way out still reach its outbox.
            await stack.enter_async_context(c.mqtt)
            for agent in c.agents:
                await stack.enter_async_context(agent)
            await stack.enter_async_context(every(JOURNAL_PRUNE_S, c.prune_journal))
            # After the agents (its values are theirs), before the producers.
            await stack.enter_async_context(c.scada)
            if settings.replay.enabled:
                await stack.enter_async_context(c.replay)
                if settings.replay.cameras:
                    await stack.enter_async_context(c.cameras)
            # SIGHUP reloads every model, the way daemons reread their files. Signals can
            # only be handled on the main thread; a test harness may run us elsewhere.
            if threading.current_thread() is threading.main_thread():
                loop = asyncio.get_running_loop()
                loop.add_signal_handler(signal.SIGHUP, lambda: c.spawn(c.reload_models()))
                stack.callback(loop.remove_signal_handler, signal.SIGHUP)
            _settle()
            if scada_in_background and settings.scada.enabled:
                c.spawn(c.settle_after_scada())
            c.ready = True
            log.info("factory_mas %s ready", __version__)
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

    orchestrator_routes = OrchestratorRoutes(c.orchestrator)

    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/status", status),
        Route("/system-state", orchestrator_routes.system_state),
        *c.intake.routes(),
        *c.configurator.routes(),
        *AuthRoutes(c.store).routes(),
        *c.scada.routes(),
        Mount("/api/orchestrator", routes=orchestrator_routes.routes()),
        Mount("/api/planner", routes=c.planner.routes()),
        Mount("/api/notify", routes=c.notifier.routes()),
        Mount("/api/backlog", routes=c.backlog.routes()),
        *(Mount(f"/api/{a.slug}", routes=a.routes()) for a in c.agents),
        *Metrics(c).routes(),
        # Last: the dashboard at / and its files under /static.
        *web_routes(),
    ]
    configure_json_limits(settings.limits.json_max_depth, settings.limits.json_max_items)
    # Outermost first: security headers on every answer (429s included), then the rate
    # limit (a brute-forced key gets 429 before auth sees it), then CORS, then auth.
    middleware = [
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
