"""The Configurator: answers config/<agent_id> requests from the hub and REST.

An accepted change is swapped in between two batches (BaseAgent.apply_settings), saved as
the checkpoint "config:<agent_id>" in the same transaction as its audit row, and applied
again at the next start, so a restart does not silently undo what an operator set from
SCADA. Every request, accepted or not, leaves a row in config_changes and an answer on
config/<agent_id>/result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..agents.base import BaseAgent
from ..auth.keys import actor
from ..errors import StoreError
from ..http.api import ApiError, error_response, json_response, query_int, query_time, read_body
from ..hub import Hub, Subscription
from ..settings import AgentSettings
from ..store import Store
from ..times import iso
from ..topics import CONFIG_REQUESTS_FILTER, config_result
from . import records
from .requests import (
    RAW_KEPT_CHARS,
    REQUEST_MAX_BYTES,
    ConfigResult,
    Refused,
    SavedOverrides,
    checkpoint_name,
    decode,
    differences,
    merge,
    overrides_of,
    parse,
)

log = logging.getLogger(__name__)

CHANGES_LIMIT_MAX = 10_000
RESTART_ORIGIN = "restart"


class Configurator:
    """`async with Configurator(agents, hub, store):` answers config/<agent_id> requests.

    Enter it after the store is open and before the agents start: saved overrides are then
    in force for the agents' first records, journal catch-up included.
    """

    def __init__(self, agents: Iterable[BaseAgent], hub: Hub, store: Store) -> None:
        self.agents = {a.agent_id: a for a in agents}
        self.hub = hub
        self.store = store
        # The settings from settings.toml and the environment: what "reset" returns to.
        self.base: dict[str, AgentSettings] = {}
        self.changed_at: dict[str, float] = {}
        self.changed_by: dict[str, str] = {}
        self.counters: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self._sub: Subscription | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Configurator:
        self.base = {agent_id: a.settings for agent_id, a in self.agents.items()}
        for agent in self.agents.values():
            await self._restore(agent)
        self._sub = self.hub.subscribe(CONFIG_REQUESTS_FILTER, name="configurator")
        self._task = asyncio.create_task(self._consume(), name="configurator")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            # Closing lets it answer what is already queued, then it ends.
            try:
                await asyncio.wait_for(self._task, 2.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        self._sub = self._task = None

    def overrides(self, agent_id: str) -> dict[str, Any]:
        agent = self.agents[agent_id]
        return overrides_of(self.base.get(agent_id, agent.settings), agent.settings)

    # -- requests --------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self._sub is not None
        # Ends when the subscription is closed and what it holds is taken.
        async for message in self._sub:
            target = message.topic.split("/", 1)[1]
            try:
                result = await self.submit(target, message.payload, message.origin or "hub")
                await self.hub.publish(config_result(target), result, origin="configurator")
            except Exception:
                # Whatever a sender managed to put in, the next request is answered.
                self.counters["errors"] += 1
                log.exception("config: request on %s not handled", message.topic)

    async def submit(
        self, target: str, payload: Any, origin: str, actor: str | None = None
    ) -> ConfigResult:
        """Validate, apply, persist and audit one request; returns the answer (the caller
        publishes it). `payload` is JSON bytes/str or the decoded object."""
        async with self._lock:
            received = decode(payload)
            # An API key's name, when there is one, wins over what the body claims.
            by = actor or received.by or origin
            result = ConfigResult(
                target=target,
                accepted=False,
                at=datetime.now(UTC),
                id=received.id,
                origin=origin,
                by=by,
            )
            agent = self.agents.get(target)
            new: AgentSettings | None = None
            try:
                if agent is None:
                    raise Refused(
                        "unknown_target",
                        f"no agent {target!r}; settings can be changed for "
                        + ", ".join(self.agents),
                    )
                request = parse(received)
                base = self.base.get(target, agent.settings)
                overrides = {} if request.reset else self.overrides(target)
                new = merge(
                    base,
                    overrides | request.set,
                    agent.restart_only,
                    agent.settings,
                    requested=request.set,
                    who=target,
                )
            except Refused as exc:
                result.code, result.error, result.field = exc.code, exc.error, exc.field
            else:
                result.accepted = True
                result.changed = differences(agent.settings, new)
            if agent is not None:
                shown = new if result.accepted and new is not None else agent.settings
                result.settings = msgspec.to_builtins(shown)
                result.overrides = overrides_of(self.base.get(target, shown), shown)
            try:
                await self.store.write(records.record, result, received, agent is not None)
            except StoreError as exc:
                log.error("config: %s from %s not recorded: %s", target, origin, exc)
                if result.accepted:
                    assert agent is not None
                    result.accepted, result.changed = False, {}
                    result.code, result.error = "store_unavailable", f"{exc}; nothing changed"
                    result.settings = msgspec.to_builtins(agent.settings)
                    result.overrides = self.overrides(target)
            if result.accepted and result.changed:
                assert agent is not None and new is not None
                await agent.apply_settings(new)
                self.changed_at[target], self.changed_by[target] = time.time(), by
                log.info(
                    "config: %s changed by %s (%s): %s",
                    target,
                    by,
                    origin,
                    ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in result.changed.items()),
                )
            self.counters["accepted" if result.accepted else "rejected"] += 1
            return result

    # -- start-up --------------------------------------------------------------------

    async def _restore(self, agent: BaseAgent) -> None:
        name = checkpoint_name(agent.agent_id)
        try:
            raw = await self.store.load_checkpoint(name)
        except StoreError as exc:
            log.error("config: %s: saved overrides not read, file settings stay: %s", name, exc)
            return
        if raw is None:
            return
        try:
            saved = msgspec.json.decode(raw, type=SavedOverrides)
            if not saved.overrides:
                return
            new = merge(agent.settings, saved.overrides, agent.restart_only, who=agent.agent_id)
        except (msgspec.DecodeError, Refused) as exc:
            reason = exc.error if isinstance(exc, Refused) else f"unreadable: {exc}"
            await self._drop_saved(agent.agent_id, raw, reason)
            return
        changed = differences(agent.settings, new)
        if not changed:
            return  # settings.toml has since been given the same values
        await agent.apply_settings(new)
        self.changed_at[agent.agent_id], self.changed_by[agent.agent_id] = saved.at, saved.by
        log.info(
            "config: %s: run-time settings set by %s are in force again: %s",
            agent.agent_id,
            saved.by or "?",
            ", ".join(f"{k} = {n!r}" for k, (_, n) in changed.items()),
        )

    async def _drop_saved(self, agent_id: str, raw: bytes, reason: str) -> None:
        """Saved overrides that no longer fit the settings file are skipped, said so, and
        forgotten; the audit row keeps what they were."""
        log.error(
            "config: %s: saved run-time settings %s are not applied: %s. The settings from "
            "settings.toml and the environment are in force; set them again if still wanted",
            agent_id,
            raw.decode("utf-8", "replace")[:RAW_KEPT_CHARS],
            reason,
        )
        result = ConfigResult(
            target=agent_id,
            accepted=False,
            at=datetime.now(UTC),
            origin=RESTART_ORIGIN,
            by="factory_mas",
            code="saved_overrides_invalid",
            error=f"saved run-time settings not applied at start: {reason}",
            settings=msgspec.to_builtins(self.agents[agent_id].settings),
            overrides={},
        )
        try:
            await self.store.write(records.forget, result, raw)
        except StoreError as exc:
            log.error("config: %s: %s", agent_id, exc)

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        out = {}
        for agent_id, agent in self.agents.items():
            out[agent_id] = {
                "status": agent.status,
                "settings": msgspec.to_builtins(agent.settings),
                "overrides": self.overrides(agent_id),
                "changed_at": iso(self.changed_at.get(agent_id)),
                "changed_by": self.changed_by.get(agent_id),
                "restart_only": sorted(k for k in agent.restart_only if hasattr(agent.settings, k)),
            }
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "overrides": {a: self.overrides(a) for a in self.agents},
        }

    # -- REST ------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """Full paths, to be listed beside the other routes of the app."""
        return [
            Route("/api/config", self.list_route),
            Route("/api/config/changes", self.changes_route),
            Route("/api/config/{agent_id}", self.agent_route, methods=["GET", "POST"]),
        ]

    async def list_route(self, _request: Request) -> Response:
        return json_response({"agents": self.snapshot()})

    async def changes_route(self, request: Request) -> Response:
        """The audit trail, newest first."""
        limit = query_int(request, "limit", 100, 1, CHANGES_LIMIT_MAX) or 100
        target = request.query_params.get("target") or None
        since = query_time(request, "since")
        rows = await self.store.read(records.changes, target, since, limit)
        return json_response({"count": len(rows), "changes": rows})

    async def agent_route(self, request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        if request.method == "GET":
            if agent_id not in self.agents:
                raise ApiError(
                    404, "unknown_target", f"no agent {agent_id!r}; known: {', '.join(self.agents)}"
                )
            return json_response({"agent_id": agent_id, **self.snapshot()[agent_id]})
        body = await read_body(request, REQUEST_MAX_BYTES)
        result = await self.submit(agent_id, body, "http", actor(request.scope))
        if agent_id in self.agents:
            await self.hub.publish(config_result(agent_id), result, origin="configurator")
        if result.accepted:
            return json_response(result)
        status = _STATUS.get(result.code or "", 422)
        return error_response(
            status, result.code or "rejected", result.error or "", field=result.field, result=result
        )


_STATUS = {
    "invalid_json": 400,
    "too_deep": 400,
    "too_large": 413,
    "unknown_target": 404,
    "restart_required": 409,
    "store_unavailable": 503,
}
