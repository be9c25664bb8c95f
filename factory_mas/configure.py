"""Run-time setting changes: config/<agent_id> in, validated, audited, answered.

A request is a JSON object, from the MQTT bridge (raw bytes), a SCADA bridge or REST (a
dict):

    {"set": {"rul_critical_hours": 36}, "by": "j.doe", "id": "req-17"}
    {"reset": true}          # back to settings.toml and the environment

The agent's settings Struct is the validator: the current settings, updated with "set",
are converted to the agent's settings type, so types, bounds and the cross-checks of
__post_init__ apply exactly as at start-up. Settings an agent reads only when it is built
or started (BaseAgent.restart_only) are refused with a pointer to settings.toml.

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
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
import sqlalchemy as sa
from msgspec import Meta, Struct
from msgspec import inspect as mi
from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .agents.base import BaseAgent
from .api import ApiError, error_response, json_response, query_int, query_time, read_body
from .errors import StoreError
from .hub import Hub, Subscription, SubscriptionClosed
from .settings import AgentSettings, describe
from .store import Store, checkpoints, config_changes, put_checkpoint

log = logging.getLogger(__name__)

TOPIC_FILTER = "config/+"  # one level: our answers on config/<id>/result do not come back
REQUEST_MAX_BYTES = 65_536  # a settings change is a few hundred bytes
CHANGES_LIMIT_MAX = 10_000
# What the audit keeps of a payload that is not a JSON object.
_RAW_KEPT_CHARS = 2_000
_CHECKPOINT_FORMAT = 1
RESTART_ORIGIN = "restart"

Text = Annotated[str, Meta(min_length=1, max_length=200)]


def result_topic(agent_id: str) -> str:
    return f"config/{agent_id}/result"


def checkpoint_name(agent_id: str) -> str:
    return f"config:{agent_id}"


class ConfigRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    set: dict[str, Any] = msgspec.field(default_factory=dict)
    reset: bool = False
    by: Text | None = None
    id: Annotated[str, Meta(max_length=200)] | int | None = None


class ConfigResult(Struct, kw_only=True):
    """The answer to one request, published on config/<agent_id>/result."""

    target: str
    accepted: bool
    at: datetime
    id: str | int | None = None
    origin: str = ""
    by: str = ""
    # Setting -> [old, new], for what actually changed.
    changed: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    # Why it was refused: a short code for programs, a sentence for people, and the
    # setting to blame when there is one.
    code: str | None = None
    error: str | None = None
    field: str | None = None
    # The agent's settings in force after the request, and which of them differ from
    # settings.toml / the environment. None for an unknown target.
    settings: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None


class SavedOverrides(Struct, kw_only=True):
    format: int = _CHECKPOINT_FORMAT
    overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    at: float = 0.0
    by: str = ""
    origin: str = ""


class Refused(Exception):
    """A request that cannot be applied; becomes a rejected result."""

    def __init__(self, code: str, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.code, self.error, self.field = code, error, field


# -- validation (pure) -------------------------------------------------------------------


def field_types(settings_type: type[AgentSettings]) -> dict[str, mi.Type]:
    info = mi.type_info(settings_type)
    assert isinstance(info, mi.StructType)
    return {f.name: f.type for f in info.fields}


def merge(
    base: AgentSettings,
    overrides: dict[str, Any],
    restart_only: Iterable[str],
    current: AgentSettings | None = None,
    requested: Iterable[str] = (),
    who: str = "",
) -> AgentSettings:
    """`base` (the file/env settings) with `overrides` on top, validated as a whole.

    Raises Refused naming the setting(s) at fault. `current` is what runs now: a
    restart-only setting may be repeated at its current value, not changed. `requested`
    are the keys the request set (blamed first), `who` the agent, for messages.
    """
    settings_type = type(base)
    types = field_types(settings_type)
    unknown = sorted(k for k in overrides if k not in types)
    if unknown:
        raise Refused(
            "unknown_setting",
            f"{who or settings_type.__name__} has no setting {', '.join(unknown)}; "
            f"known: {', '.join(types)}",
            unknown[0],
        )
    merged = msgspec.to_builtins(base) | overrides
    try:
        new = msgspec.convert(merged, settings_type)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, overrides, types, [*requested, *overrides]) from None
    current = current or base
    fixed = sorted(k for k in restart_only if k in types and getattr(new, k) != getattr(current, k))
    if fixed:
        raise Refused(
            "restart_required",
            f"{', '.join(fixed)} {'needs' if len(fixed) == 1 else 'need'} a restart: set "
            f"{'it' if len(fixed) == 1 else 'them'} in settings.toml (or the environment) "
            "and restart factory_mas",
            fixed[0],
        )
    return new


def _invalid(
    exc: msgspec.ValidationError,
    overrides: dict[str, Any],
    types: dict[str, mi.Type],
    suspects: list[str],
) -> Refused:
    text = str(exc)
    reason, sep, where = text.partition(" - at `$.")
    if sep:
        key = where.rstrip("`").split(".")[0].split("[")[0]
        if key in types:
            return Refused(
                "invalid_value",
                f"{key} = {overrides.get(key)!r}: {reason}; allowed: {describe(types[key])}",
                key,
            )
    # A rule between settings (__post_init__): its message names them all; blame the
    # first one this request set.
    named = [k for k in suspects if re.search(rf"\b{k}\b", text)]
    return Refused("invalid_value", text, named[0] if named else None)


def differences(a: AgentSettings, b: AgentSettings) -> dict[str, list[Any]]:
    old, new = msgspec.to_builtins(a), msgspec.to_builtins(b)
    return {k: [old[k], new[k]] for k in old if old[k] != new[k]}


def overrides_of(base: AgentSettings, settings: AgentSettings) -> dict[str, Any]:
    """The settings that differ from the file/env ones, as JSON builtins."""
    return {k: new for k, (_, new) in differences(base, settings).items()}


# -- the service -------------------------------------------------------------------------


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
        self._sub = self.hub.subscribe(TOPIC_FILTER, name="configurator")
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
        while True:
            try:
                message = await self._sub.get()
            except SubscriptionClosed:
                return
            target = message.topic.split("/", 1)[1]
            try:
                result = await self.submit(target, message.payload, message.origin or "hub")
                await self.hub.publish(result_topic(target), result, origin="configurator")
            except Exception:
                # Whatever a sender managed to put in, the next request is answered.
                self.counters["errors"] += 1
                log.exception("config: request on %s not handled", message.topic)

    async def submit(self, target: str, payload: Any, origin: str) -> ConfigResult:
        """Validate, apply, persist and audit one request; returns the answer (the caller
        publishes it). `payload` is JSON bytes/str or the decoded object."""
        async with self._lock:
            received = _decode(payload)
            by = received.by or origin
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
                request = _parse(received)
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
                await self.store.write(self._record, result, received, agent is not None)
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

    def _record(
        self, conn: Connection, result: ConfigResult, received: Received, known_target: bool
    ) -> None:
        """The audit row and, for an accepted change, the saved overrides: one
        transaction, so what is in force after a restart is always audited."""
        at = result.at.timestamp()
        if result.accepted and result.changed and known_target:
            saved = SavedOverrides(
                overrides=result.overrides or {}, at=at, by=result.by, origin=result.origin
            )
            put_checkpoint(conn, checkpoint_name(result.target), msgspec.json.encode(saved))
        conn.execute(
            config_changes.insert().values(
                at=at,
                target=result.target[:100],
                origin=result.origin[:200],
                by=result.by[:200],
                accepted=result.accepted,
                data=_audit_data(received, result),
            )
        )

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
        text = raw.decode("utf-8", "replace")[:_RAW_KEPT_CHARS]
        log.error(
            "config: %s: saved run-time settings %s are not applied: %s. The settings from "
            "settings.toml and the environment are in force; set them again if still wanted",
            agent_id,
            text,
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

        name = checkpoint_name(agent_id)

        def forget(conn: Connection) -> None:
            conn.execute(checkpoints.delete().where(checkpoints.c.name == name))
            conn.execute(
                config_changes.insert().values(
                    at=result.at.timestamp(),
                    target=agent_id,
                    origin=RESTART_ORIGIN,
                    by="factory_mas",
                    accepted=False,
                    data=_audit_data(Received(raw=text), result),
                )
            )

        try:
            await self.store.write(forget)
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
                "changed_at": _iso(self.changed_at.get(agent_id)),
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
        rows = await self.store.read(_changes, target, since, limit)
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
        result = await self.submit(agent_id, body, "http")
        if agent_id in self.agents:
            await self.hub.publish(result_topic(agent_id), result, origin="configurator")
        if result.accepted:
            return json_response(result)
        status = _STATUS.get(result.code or "", 422)
        return error_response(
            status, result.code or "rejected", result.error or "", field=result.field, result=result
        )


_STATUS = {
    "invalid_json": 400,
    "unknown_target": 404,
    "restart_required": 409,
    "store_unavailable": 503,
}


@dataclass(frozen=True)
class Received:
    """A request as received: the decoded JSON, or the text when it was not JSON."""

    request: Any = None
    raw: str | None = None
    refused: Refused | None = None

    @property
    def id(self) -> str | int | None:
        """The sender's id when one can be read, so even a refusal is answered under it."""
        found = self.request.get("id") if isinstance(self.request, dict) else None
        if isinstance(found, bool) or not isinstance(found, int | str):
            return None
        return found[:200] if isinstance(found, str) else found

    @property
    def by(self) -> str | None:
        found = self.request.get("by") if isinstance(self.request, dict) else None
        return found[:200] if isinstance(found, str) and found else None


def _decode(payload: Any) -> Received:
    if isinstance(payload, Struct):
        return Received(request=msgspec.to_builtins(payload))
    if not isinstance(payload, bytes | bytearray | memoryview | str):
        return Received(request=payload)
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    text = data[:_RAW_KEPT_CHARS].decode("utf-8", "replace")
    if len(data) > REQUEST_MAX_BYTES:
        refused = Refused(
            "too_large", f"the request has {len(data)} bytes, at most {REQUEST_MAX_BYTES}"
        )
        return Received(raw=text, refused=refused)
    if not data.strip():
        return Received(raw=text, refused=Refused("invalid_json", 'empty; send {"set": {...}}'))
    try:
        return Received(request=msgspec.json.decode(data))
    except msgspec.DecodeError as exc:
        return Received(raw=text, refused=Refused("invalid_json", f"not valid JSON: {exc}"))


def _parse(received: Received) -> ConfigRequest:
    if received.refused is not None:
        raise received.refused
    raw = received.request
    if not isinstance(raw, dict):
        raise Refused(
            "not_an_object",
            f'the request must be a JSON object like {{"set": {{...}}}}, got {type(raw).__name__}',
        )
    stray = [k for k in raw if k not in ConfigRequest.__struct_fields__]
    if stray:
        raise Refused(
            "invalid_request",
            f"unknown request key {', '.join(map(repr, stray))}: a request holds "
            '"set" (the settings to change), "reset", "by" and "id"; e.g. '
            f'{{"set": {{"{stray[0]}": ...}}}}',
            stray[0],
        )
    try:
        return msgspec.convert(raw, ConfigRequest)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$.")
        key = where.rstrip("`").split(".")[0].split("[")[0] or None
        raise Refused("invalid_request", f"{key}: {reason}" if key else reason, key) from None


def _audit_data(received: Received, result: ConfigResult) -> bytes:
    data: dict[str, Any] = {"request": received.request, "result": result}
    if received.raw is not None:
        data["raw"] = received.raw
    try:
        return msgspec.json.encode(data)
    except (TypeError, msgspec.EncodeError):
        # A bridge handed over something JSON cannot hold: keep its text instead.
        data["request"] = repr(received.request)[:_RAW_KEPT_CHARS]
        return msgspec.json.encode(data)


def _changes(conn: Connection, target: str | None, since: float | None, limit: int) -> list:
    query = sa.select(config_changes).order_by(config_changes.c.id.desc()).limit(limit)
    if target is not None:
        query = query.where(config_changes.c.target == target)
    if since is not None:
        query = query.where(config_changes.c.at >= since)
    out = []
    for row in conn.execute(query):
        data = msgspec.json.decode(row.data)
        out.append(
            {
                "id": row.id,
                "at": _iso(row.at),
                "target": row.target,
                "origin": row.origin,
                "by": row.by,
                "accepted": row.accepted,
                "request": data.get("request"),
                # What was received when it was not JSON (cut short).
                **({"raw": data["raw"]} if "raw" in data else {}),
                "result": data.get("result"),
            }
        )
    return out


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()
