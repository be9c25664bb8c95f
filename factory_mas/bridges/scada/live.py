"""The live values behind the points, and the writes that come back from control systems.

`LiveValues` keeps the latest prediction per agent and machine (or camera) from the hub's
predictions/# (a drop-oldest subscription: a slow SCADA side never holds up scoring) and
computes every point's value on demand from that and the plant's view (ports.PlantView).

`Writes` is the one way in for all three protocols: it checks a value against its point
(writable, the caller's role, type, range), applies it through the plant's control
(ports.PlantControl: the Configurator for settings, the agent's life cycle for enabled,
the orchestrator for alarm acknowledge), and records every attempt, accepted or not, in
the config audit trail with the peer's address.

A write needs the role the HTTP API asks for the same change (`role_for_point`), so no
protocol lets anyone do more than they could over HTTP: OPC UA users log in with an API
key; Modbus and DNP3 carry no user, so their role is the address's (`client_role`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec

from ...agents.points import Setting, Subject
from ...agents.registry import AGENTS, AgentEntry, Registry
from ...auth.keys import Role, role_allows
from ...auth.roles import Need, role_for
from ...http.limits import ClientAllowList
from ...hub import Hub, Overflow, Subscription
from ...levels import RANK
from ...messages import Prediction
from ...settings import Settings
from ...store import Store, audit_change
from ...tasks import cancel
from ...topics import PREDICTIONS_FILTER, config_result
from .points import LEVEL_CODES, Point, machine_readings
from .ports import PlantControl, PlantView, Refused, Value

log = logging.getLogger(__name__)


class LiveValues:
    def __init__(
        self,
        settings: Settings,
        plant: PlantView,
        hub: Hub,
        points: list[Point],
        registry: Registry = AGENTS,
    ) -> None:
        self.settings = settings
        self.plant = plant
        self.hub = hub
        self.points = {p.name: p for p in points}
        self.registry = registry
        self.machine_readings = machine_readings(registry)
        # agent_id -> subject (machine id or camera id) -> latest prediction
        self.latest: dict[str, dict[Subject, Prediction]] = {e.agent_id: {} for e in registry}
        self.last_acked = 0
        self._sub: Subscription | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LiveValues:
        self._sub = self.hub.subscribe(
            PREDICTIONS_FILTER, name="scada", maxsize=1024, overflow=Overflow.DROP_OLDEST
        )
        self._task = asyncio.create_task(self._follow(), name="scada-live")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sub is not None:
            self._sub.close()
        await cancel(self._task)

    async def _follow(self) -> None:
        assert self._sub is not None
        # Ends when the subscription is closed and what it holds is taken.
        async for message in self._sub:
            items = message.payload if isinstance(message.payload, list) else [message.payload]
            for p in items:
                if isinstance(p, Prediction) and p.agent_id in self.latest:
                    subject = p.machine_id if p.machine_id is not None else p.camera_id or ""
                    self.latest[p.agent_id][subject] = p

    # -- values ------------------------------------------------------------------------

    def values(self) -> dict[str, Value]:
        """Every point's current value (type as in the table)."""
        # Each latest result read as its agent's Struct once per call, not once per point.
        typed = {
            e.agent_id: {
                subject: r
                for subject, p in self.latest[e.agent_id].items()
                if (r := e.result_type.of(p)) is not None
            }
            for e in self.registry
        }
        out: dict[str, Value] = {}
        out.update(self._system())
        for entry in self.registry:
            out.update(self._agent(entry, typed[entry.agent_id]))
        for machine_id in self.settings.scada.machines:
            out.update(self._machine(machine_id, typed))
        return {name: out.get(name, _zero(p)) for name, p in self.points.items()}

    def _system(self) -> dict[str, Value]:
        plant = self.plant
        # The counts system-state, /metrics and the dashboard show: the per-level points
        # count active alarms, so they add up to ActiveAlarms.
        counts = plant.alarm_counts()
        by_level = {level: counts["by_level"].get(level, 0) for level in LEVEL_CODES}
        values: dict[str, Value] = {
            "system.running": plant.ready,
            "system.agents_healthy": all(a.health()["healthy"] for a in plant.agents),
            "system.alarms_active": counts["active"],
            "system.alarms_unacknowledged": counts["unacknowledged"],
            "system.flood": plant.alarm_flood,
            "system.mqtt_connected": plant.broker_connected,
            "system.acknowledge_alarm": self.last_acked,
        }
        for level, count in by_level.items():
            values[f"system.alarms_{level.lower()}"] = count
        return values

    def _agent(self, entry: AgentEntry, typed: dict[Subject, Any]) -> dict[str, Value]:
        g = entry.agent_id
        agent = next((a for a in self.plant.agents if a.agent_id == g), None)
        if agent is None:
            return {}
        values: dict[str, Value] = {
            f"{g}.enabled": agent.status == "running",
            f"{g}.healthy": bool(agent.health()["healthy"]),
            f"{g}.level": max((LEVEL_CODES[p.level] for p in self.latest[g].values()), default=0),
        }
        for d in entry.points.agent:
            if isinstance(d, Setting):
                values[f"{g}.{d.key}"] = getattr(agent.settings, d.key)
            else:
                values[f"{g}.{d.key}"] = d.value(typed)
        return values

    def _machine(self, machine_id: int, typed: dict[str, dict[Subject, Any]]) -> dict[str, Value]:
        m = f"machine_{machine_id}"
        levels = [p.level for by in self.latest.values() if (p := by.get(machine_id)) is not None]
        values: dict[str, Value] = {
            f"{m}.level": LEVEL_CODES[max(levels, key=RANK.__getitem__)] if levels else 0
        }
        for entry, d in self.machine_readings:
            result = typed[entry.agent_id].get(machine_id)
            if result is not None:
                values[f"{m}.{d.key}"] = d.value(result)
        return values


def _zero(point: Point) -> Value:
    return {"Boolean": False, "Int32": 0, "Float": 0.0}[point.type]


# -- writes ----------------------------------------------------------------------------


# The HTTP route that makes the same change as a write to each kind of point; a point's
# role is that route's (auth/roles.py), so the two can never disagree. Stopping an agent
# (POST /api/<slug>/stop) needs the same role as starting it.
_SAME_OVER_HTTP = {
    "setting": "/api/config/{agent_id}",
    "enabled": "/api/{slug}/start",
    "command:ack_alarm": "/api/orchestrator/alarms/{alarm_id}/ack",
}


def role_for_point(point: Point) -> Need:
    """The least role that may write `point`: the role of its HTTP route."""
    kind, _, rest = point.target.partition(":")
    template = _SAME_OVER_HTTP.get(point.target) or _SAME_OVER_HTTP.get(kind)
    if template is None:  # like a POST roles.py does not know: closed until decided
        return "admin"
    agent_id = rest.partition(":")[0]
    path = template.format(agent_id=agent_id, slug=agent_id.removesuffix("_agent"), alarm_id=1)
    return role_for("POST", path)


def peer_text(address: Any) -> str:
    """A socket peer (host, port, ...) as "host:port" ("[v6]:port"), for the audit trail."""
    if not address:
        return "?"
    if isinstance(address, str):
        return address
    host, port = str(address[0]), address[1] if len(address) > 1 else None
    if ":" in host:
        host = f"[{host}]"
    return host if port is None else f"{host}:{port}"


@dataclass(frozen=True)
class WriteResult:
    ok: bool
    # not_found, read_only, forbidden (the caller's role is too low), wrong_type,
    # out_of_range, rejected (the target refused it), unavailable (the store); None when ok.
    code: str | None = None
    error: str = ""
    value: Value | None = None  # what is in force after the write
    audited: bool = False  # the Configurator has recorded it already


class Writes:
    DISABLED = "SCADA writes are disabled (scada.writes_enabled)"

    def __init__(
        self, settings: Settings, plant: PlantControl, hub: Hub, store: Store, live: LiveValues
    ) -> None:
        self.settings = settings.scada
        self.plant = plant
        self.hub = hub
        self.store = store
        self.live = live
        self.points = live.points
        s = self.settings
        self.write_clients = ClientAllowList(s.write_clients, "scada write clients")

    def client_role(self, host: str | None) -> Role:
        """A Modbus or DNP3 client's role: scada.write_clients_role for the addresses in
        scada.write_clients, viewer (reads only) for everyone else."""
        if self.write_clients.covers(host):
            return self.settings.write_clients_role
        return "viewer"

    def may_write(self, point: Point, role: Role) -> bool:
        """Whether a caller of `role` may write `point` now (writes on, writable, role)."""
        return (
            self.settings.writes_enabled
            and point.writable
            and role_allows(role, role_for_point(point))
        )

    async def write(
        self,
        name: str,
        raw: Any,
        origin: str,
        *,
        peer: str,
        role: Role,
        by: str = "",
        typed_as: str | None = None,
    ) -> WriteResult:
        """Check and apply one write from a control system at `peer` acting with `role`;
        every attempt is audited, with origin "<origin> <peer>". With scada.writes_enabled
        off every write is refused as read_only. `typed_as` is the type the protocol says
        the value has (OPC UA's variant type, as a point type where it is one): any other
        than the point's is wrong_type, where Modbus and DNP3 values are taken as numbers."""
        where = f"{origin} {peer}" if peer else origin
        by = by or where
        point = self.points.get(name)
        if not self.settings.writes_enabled:
            result = WriteResult(False, "read_only", self.DISABLED)
        elif point is None:
            result = WriteResult(False, "not_found", f"no point {name!r}")
        elif not point.writable:
            result = WriteResult(False, "read_only", f"{point.name} is read-only")
        elif not role_allows(role, need := role_for_point(point)):
            result = WriteResult(
                False, "forbidden", f"{point.name} needs role {need}; {by} is {role}"
            )
        elif typed_as is not None and typed_as != point.type:
            result = WriteResult(
                False, "wrong_type", f"{point.name} takes a {point.type}, got {typed_as} {raw!r}"
            )
        else:
            result = await self._apply(point, raw, where, by)
        if not result.audited:
            await self._audit(name, point, raw, where, by, role, result)
        if not result.ok:
            log.warning("scada: %s refused %s = %r: %s", where, name, raw, result.error)
        return result

    async def _apply(self, point: Point, raw: Any, origin: str, by: str) -> WriteResult:
        value = _coerce(point, raw)
        if value is None:
            return WriteResult(
                False, "wrong_type", f"{point.name} takes a {point.type}, got {raw!r}"
            )
        if (point.lo is not None and value < point.lo) or (
            point.hi is not None and value > point.hi
        ):
            return WriteResult(
                False, "out_of_range", f"{point.name} = {value!r} is outside {point.lo}..{point.hi}"
            )  # fmt: skip
        kind, _, rest = point.target.partition(":")
        if kind == "setting":
            agent_id, _, key = rest.partition(":")
            answer = await self.plant.change_setting(agent_id, key, value, by=by, origin=origin)
            await self.hub.publish(config_result(agent_id), answer, origin="scada")
            if not answer.accepted:
                code = "unavailable" if answer.code == "store_unavailable" else "rejected"
                return WriteResult(False, code, answer.error or "refused", audited=True)
            return WriteResult(True, value=value, audited=True)
        if kind == "enabled":
            try:
                await self.plant.set_running(rest, bool(value))
            except Refused as exc:
                return WriteResult(False, "rejected", str(exc))
            return WriteResult(True, value=bool(value))
        if kind == "command" and rest == "ack_alarm":
            try:
                await self.plant.ack_alarm(int(value), by=by, note=f"from {origin}")
            except Refused as exc:
                return WriteResult(False, "rejected", str(exc))
            self.live.last_acked = int(value)
            return WriteResult(True, value=int(value))
        return WriteResult(False, "rejected", f"{point.name}: nothing to apply it to")

    async def _audit(
        self,
        name: str,
        point: Point | None,
        raw: Any,
        origin: str,
        by: str,
        role: Role,
        r: WriteResult,
    ) -> None:
        data = {"request": {"point": name, "value": _jsonable(raw), "role": role},
                "result": {"ok": r.ok, "code": r.code, "error": r.error}}  # fmt: skip
        target = point.target.split(":")[1] if point and ":" in point.target else "scada"

        try:
            await self.store.write(
                partial(
                    audit_change,
                    at=time.time(),
                    target=target,
                    origin=origin,
                    by=by,
                    accepted=r.ok,
                    data=msgspec.json.encode(data),
                )
            )
        except Exception as exc:  # auditing must not turn a write into a crash
            log.error("scada: write to %s not audited: %s", name, exc)


def _coerce(point: Point, raw: Any) -> Value | None:
    """The written value as the point's type, or None when it cannot be one."""
    if isinstance(raw, bool):
        return raw if point.type == "Boolean" else None
    if point.type == "Boolean":
        return bool(raw) if raw in (0, 1) else None
    if not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    if point.type == "Int32":
        return int(raw) if float(raw).is_integer() else None
    return float(raw)


def _jsonable(raw: Any) -> Any:
    return raw if isinstance(raw, bool | int | float | str | type(None)) else repr(raw)
