"""The one point table that OPC UA, Modbus TCP and DNP3 are all laid out by.

A point is a named live value (or a setting, or a command) with its type, unit and valid
range, and its address in each protocol. Addresses are assigned here, deterministically,
so an integrator configures an HMI once from `python -m factory_mas points` and the same
table holds after an upgrade that only adds points at the end of a block.

Modbus: every point takes two registers (a float32 needs both; a scaled 16-bit value uses
the first), so addresses do not move when `modbus_float32` is switched. Read-only points are
input registers, writable ones holding registers. DNP3: every point is an analog or binary
input; writable ones also have an analog output or a binary output (CROB) index.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from msgspec import Struct

from ...agents.points import MachineReading, PointType, Range, Reading, Setting
from ...agents.registry import AGENTS, AgentEntry, Registry
from ...levels import LEVELS
from ...settings import Settings

LEVEL_CODES = {level: code for code, level in enumerate(LEVELS)}
NAMESPACE = "http://6g-mas-factory.com"

# OPC UA folders under Objects/MultiAgentSystem besides each agent's own (its points.py).
SYSTEM_FOLDER = "SystemStatus"
MACHINES_FOLDER = "Machines"
_LEVEL_NOTE = "0 NORMAL, 1 CAUTION, 2 WARNING, 3 CRITICAL, 4 EMERGENCY"


class Point(Struct, frozen=True, kw_only=True):
    name: str  # dotted, unique: "pm_agent.worst_failure_probability"
    group: str  # the OPC UA folder
    browse_name: str  # the OPC UA node's name in its folder
    description: str
    type: PointType
    unit: str = ""
    # Modbus 16-bit register value = round(value * scale).
    scale: float = 1.0
    writable: bool = False
    lo: float | None = None  # the valid range, for writes (and documentation)
    hi: float | None = None
    # The range of normal operation where it is not lo..hi (a measurement has no write
    # range, some settings no top): OPC UA's EURange, which HMIs scale bar graphs to and
    # percent deadbands are taken of, so every Float point has one.
    normal_range: Range | None = None
    # What a write changes: "setting:<agent_id>:<key>", "enabled:<agent_id>" or
    # "command:ack_alarm". Empty for read-only points.
    target: str = ""
    modbus_address: int = 0
    dnp3_input: int = 0  # analog input index (numbers) or binary input index (Boolean)
    dnp3_output: int | None = None  # analog output or CROB index, for writable points

    @property
    def opcua_path(self) -> str:
        return f"Objects/MultiAgentSystem/{self.group}/{self.browse_name}"

    @property
    def modbus_table(self) -> str:
        return "holding" if self.writable else "input"

    @property
    def eu_range(self) -> Range | None:
        if self.normal_range is not None:
            return self.normal_range
        if self.lo is not None and self.hi is not None and self.type != "Boolean":
            return (self.lo, self.hi)
        return None


def _p(name: str, folder: str, leaf: str, description: str, type_: PointType, **kw) -> Point:
    return Point(name=name, group=folder, browse_name=leaf, description=description,
                 type=type_, **kw)  # fmt: skip


def _setting(entry: AgentEntry, d: Setting, settings: Settings) -> Point:
    from msgspec import inspect as mi

    g = entry.agent_id
    info = mi.type_info(type(entry.settings_of(settings)))
    assert isinstance(info, mi.StructType)  # every settings section is a Struct
    t = next(f.type for f in info.fields if f.name == d.key)
    lo = getattr(t, "ge", None) if getattr(t, "ge", None) is not None else getattr(t, "gt", None)
    hi = getattr(t, "le", None) if getattr(t, "le", None) is not None else getattr(t, "lt", None)
    kind: PointType = "Int32" if isinstance(t, mi.IntType) else "Float"
    leaf = "".join(part.capitalize() for part in d.key.split("_"))
    return _p(f"{g}.{d.key}", entry.points.folder, leaf, d.description, kind, unit=d.unit,
              scale=d.scale, writable=True, lo=lo, hi=hi, target=f"setting:{g}:{d.key}",
              normal_range=d.normal_range)  # fmt: skip


def _reading(entry: AgentEntry, d: Reading, settings: Settings) -> Point:
    normal: Range | None = d.normal_range(settings) if callable(d.normal_range) else d.normal_range
    return _p(f"{entry.agent_id}.{d.key}", entry.points.folder, d.browse_name, d.description,
              d.type, unit=d.unit, scale=d.scale, lo=d.lo, hi=d.hi,
              normal_range=normal)  # fmt: skip


def _agent_points(entry: AgentEntry, settings: Settings) -> list[Point]:
    g, folder = entry.agent_id, entry.points.folder
    common = [
        _p(f"{g}.enabled", folder, "Enabled", "the agent runs (write false to stop it, true to "
           "start it)", "Boolean", writable=True, lo=0, hi=1, target=f"enabled:{g}"),
        _p(f"{g}.healthy", folder, "Healthy", "running (or disabled on purpose) without error",
           "Boolean"),
        _p(f"{g}.level", folder, "Level", f"worst level over its machines: {_LEVEL_NOTE}",
           "Int32", lo=0, hi=4),
    ]  # fmt: skip
    return common + [
        _setting(entry, d, settings) if isinstance(d, Setting) else _reading(entry, d, settings)
        for d in entry.points.agent
    ]


def _system_points() -> list[Point]:
    g = SYSTEM_FOLDER
    points = [
        _p("system.running", g, "Running", "factory_mas is up and ready", "Boolean"),
        _p("system.agents_healthy", g, "AgentsHealthy", "every enabled agent runs", "Boolean"),
        _p("system.alarms_active", g, "ActiveAlarms", "alarms whose condition is present",
           "Int32"),
        _p("system.alarms_unacknowledged", g, "UnacknowledgedAlarms", "alarms nobody has "
           "acknowledged yet", "Int32"),
    ]  # fmt: skip
    for level in LEVELS[1:]:
        points.append(
            _p(f"system.alarms_{level.lower()}", g, f"Alarms{level.capitalize()}",
               f"active alarms at level {level} (they add up to ActiveAlarms)", "Int32")
        )  # fmt: skip
    points += [
        _p("system.flood", g, "AlarmFlood", "an alarm flood is on (low-priority alarms are "
           "grouped)", "Boolean"),
        _p("system.mqtt_connected", g, "MqttConnected", "the MQTT broker is connected (false "
           "when none is configured)", "Boolean"),
        _p("system.acknowledge_alarm", g, "AcknowledgeAlarm", "write an alarm id to "
           "acknowledge it; reads back the last one acknowledged here", "Int32",
           writable=True, lo=1, hi=2**31 - 1, target="command:ack_alarm"),
    ]  # fmt: skip
    return points


def machine_readings(registry: Registry) -> list[tuple[AgentEntry, MachineReading]]:
    """Every agent's per-machine readings, in the order of each machine's block."""
    found = [(entry, d) for entry in registry for d in entry.points.machine]
    return sorted(found, key=lambda pair: pair[1].slot)


def _machine_points(
    machine_id: int, readings: list[tuple[AgentEntry, MachineReading]]
) -> list[Point]:
    m, g = f"machine_{machine_id}", MACHINES_FOLDER
    prefix = f"Machine{machine_id}"
    level = _p(f"{m}.level", g, f"{prefix}_Level", f"worst level of machine {machine_id} over "
               f"the agents: {_LEVEL_NOTE}", "Int32", lo=0, hi=4)  # fmt: skip
    return [level] + [
        _p(f"{m}.{d.key}", g, f"{prefix}_{d.browse_suffix}", d.description, d.type, unit=d.unit,
           scale=d.scale, lo=d.lo, hi=d.hi, normal_range=d.normal_range)
        for _, d in readings
    ]  # fmt: skip


def build_points(settings: Settings, registry: Registry = AGENTS) -> list[Point]:
    """The whole table, with protocol addresses assigned in table order."""
    drafts = _system_points()
    for entry in registry:
        drafts += _agent_points(entry, settings)
    readings = machine_readings(registry)
    for machine_id in settings.scada.machines:
        drafts += _machine_points(machine_id, readings)
    points: list[Point] = []
    next_register = {"input": 0, "holding": 0}
    next_input = {"analog": 0, "binary": 0}
    next_output = {"analog": 0, "binary": 0}
    for d in drafts:
        table = "holding" if d.writable else "input"
        kind = "binary" if d.type == "Boolean" else "analog"
        address, next_register[table] = next_register[table], next_register[table] + 2
        dnp3_input, next_input[kind] = next_input[kind], next_input[kind] + 1
        output = None
        if d.writable:
            output, next_output[kind] = next_output[kind], next_output[kind] + 1
        points.append(
            Point(
                **{
                    **{f: getattr(d, f) for f in d.__struct_fields__},
                    "modbus_address": address,
                    "dnp3_input": dnp3_input,
                    "dnp3_output": output,
                }
            )
        )
    return points


COLUMNS = (
    "name", "group", "opcua_path", "type", "unit", "scale", "writable", "lo", "hi",
    "modbus_table", "modbus_address", "dnp3_input", "dnp3_output", "description",
)  # fmt: skip


def rows(points: Iterable[Point]) -> list[dict[str, object]]:
    out = []
    for p in points:
        kind = "BI" if p.type == "Boolean" else "AI"
        out_kind = "CROB" if p.type == "Boolean" else "AO"
        row = {c: getattr(p, c) for c in COLUMNS}
        row["dnp3_input"] = f"{kind} {p.dnp3_input}"
        row["dnp3_output"] = "" if p.dnp3_output is None else f"{out_kind} {p.dnp3_output}"
        row["lo"] = "" if p.lo is None else p.lo
        row["hi"] = "" if p.hi is None else p.hi
        out.append(row)
    return out


def as_csv(points: Iterable[Point]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows(points))
    return buffer.getvalue()


def as_table(points: Iterable[Point]) -> str:
    shown = ("name", "type", "unit", "scale", "writable", "modbus_table", "modbus_address",
             "dnp3_input", "dnp3_output", "opcua_path")  # fmt: skip
    table = [[str(r[c]) for c in shown] for r in rows(points)]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join(lines)
