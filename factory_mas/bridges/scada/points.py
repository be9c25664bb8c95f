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
from typing import Literal

from msgspec import Struct

from ...agents.pm.model import RUL_CAP_HOURS
from ...levels import LEVELS
from ...settings import Settings

PointType = Literal["Boolean", "Int32", "Float"]
Range = tuple[float, float]  # low, high
LEVEL_CODES = {level: code for code, level in enumerate(LEVELS)}
THREAT_CODES = {"LOW": 0, "MEDIUM": 1, "HIGH": 2, "CRITICAL": 3}
NAMESPACE = "http://6g-mas-factory.com"

# OPC UA folders under Objects/MultiAgentSystem, one per agent, as the plant knows them.
GROUPS = {
    "system": "SystemStatus",
    "pm_agent": "PredictiveMaintenance",
    "energy_agent": "EnergyOptimization",
    "cyber_agent": "CyberSecurity",
    "safety_agent": "WorkplaceSafety",
    "ppe_agent": "PPECompliance",
    "machines": "Machines",
}
_LEVEL_NOTE = "0 NORMAL, 1 CAUTION, 2 WARNING, 3 CRITICAL, 4 EMERGENCY"
# Normal ranges: percentages are whole; the RUL model answers up to its cap; a machine of
# the dataset draws up to 10 kW.
PERCENT: Range = (0.0, 100.0)
RUL_RANGE: Range = (0.0, RUL_CAP_HOURS)
MACHINE_KW_MAX = 10.0


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


def _p(name: str, group: str, leaf: str, description: str, type_: PointType, **kw) -> Point:
    return Point(name=name, group=GROUPS[group], browse_name=leaf, description=description,
                 type=type_, **kw)  # fmt: skip


def _setting(agent_id: str, key: str, settings: Settings, description: str, unit: str = "",
             scale: float = 1.0, normal_range: Range | None = None) -> Point:  # fmt: skip
    from msgspec import inspect as mi

    section = getattr(settings.agents, agent_id.removesuffix("_agent"))
    info = mi.type_info(type(section))
    t = next(f.type for f in info.fields if f.name == key)
    lo = getattr(t, "ge", None) if getattr(t, "ge", None) is not None else getattr(t, "gt", None)
    hi = getattr(t, "le", None) if getattr(t, "le", None) is not None else getattr(t, "lt", None)
    kind: PointType = "Int32" if isinstance(t, mi.IntType) else "Float"
    leaf = "".join(part.capitalize() for part in key.split("_"))
    return _p(f"{agent_id}.{key}", agent_id, leaf, description, kind, unit=unit, scale=scale,
              writable=True, lo=lo, hi=hi, target=f"setting:{agent_id}:{key}",
              normal_range=normal_range)  # fmt: skip


def _agent_points(agent_id: str, settings: Settings) -> list[Point]:
    g = agent_id
    common = [
        _p(f"{g}.enabled", g, "Enabled", "the agent runs (write false to stop it, true to "
           "start it)", "Boolean", writable=True, lo=0, hi=1, target=f"enabled:{g}"),
        _p(f"{g}.healthy", g, "Healthy", "running (or disabled on purpose) without error",
           "Boolean"),
        _p(f"{g}.level", g, "Level", f"worst level over its machines: {_LEVEL_NOTE}", "Int32",
           lo=0, hi=4),
    ]  # fmt: skip
    # Built lazily: each list only makes sense for its own agent's settings.
    specific = {
        "pm_agent": lambda: [
            _p(f"{g}.worst_machine", g, "WorstMachine", "machine with the highest failure "
               "probability (0 = none yet)", "Int32"),
            _p(f"{g}.worst_failure_probability", g, "WorstFailureProbability", "its "
               "probability of failing within 24 h", "Float", unit="%", scale=10,
               normal_range=PERCENT),
            _p(f"{g}.worst_rul_hours", g, "WorstRulHours", "shortest remaining useful life "
               "over all machines", "Float", unit="h", scale=10, normal_range=RUL_RANGE),
            _setting(g, "failure_probability_emergency", settings, "EMERGENCY from this "
                     "failure probability", scale=1000),
            _setting(g, "rul_critical_hours", settings, "CRITICAL below this RUL", "h", 10,
                     RUL_RANGE),
            _setting(g, "rul_warning_hours", settings, "WARNING below this RUL", "h", 10,
                     RUL_RANGE),
        ],
        "energy_agent": lambda: [
            _p(f"{g}.total_kw", g, "TotalPower", "sum of every machine's latest draw", "Float",
               unit="kW", scale=10,
               normal_range=(0.0, MACHINE_KW_MAX * settings.replay.machines)),
            _p(f"{g}.anomaly", g, "Anomaly", "some machine's latest reading is a power "
               "anomaly", "Boolean"),
            _p(f"{g}.anomalous_machines", g, "AnomalousMachines", "machines whose latest "
               "reading is a power anomaly", "Int32"),
            _setting(g, "anomaly_score_threshold", settings, "anomaly from this score",
                     scale=1000),
        ],
        "cyber_agent": lambda: [
            _p(f"{g}.threat_level", g, "ThreatLevel", "worst threat: 0 LOW, 1 MEDIUM, 2 HIGH, "
               "3 CRITICAL", "Int32", lo=0, hi=3),
            _p(f"{g}.anomalous_machines", g, "AnomalousMachines", "machines whose latest "
               "network reading is anomalous", "Int32"),
            _setting(g, "high_after_anomalies", settings, "consecutive anomalies for threat "
                     "HIGH"),
        ],
        "safety_agent": lambda: [
            _p(f"{g}.max_hazard_score", g, "MaxHazardScore", "highest hazard score over all "
               "machines", "Float", unit="%", scale=10, normal_range=PERCENT),
            _p(f"{g}.evacuation_required", g, "EvacuationRequired", "some machine calls for "
               "evacuation", "Boolean"),
            _setting(g, "hazard_score_warning", settings, "WARNING from this hazard score",
                     scale=1000),
            _setting(g, "hazard_score_critical", settings, "CRITICAL from this hazard score",
                     scale=1000),
        ],
        "ppe_agent": lambda: [
            _p(f"{g}.compliant", g, "Compliant", "every camera's workers wear their PPE",
               "Boolean"),
            _p(f"{g}.cameras_noncompliant", g, "CamerasNonCompliant", "cameras that see a "
               "worker without an item", "Int32"),
            _setting(g, "threshold", settings, "an item is seen from this probability",
                     scale=1000),
        ],
    }  # fmt: skip
    return common + specific[agent_id]()


def _system_points() -> list[Point]:
    g = "system"
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


def _machine_points(machine_id: int) -> list[Point]:
    m, g = f"machine_{machine_id}", "machines"
    prefix = f"Machine{machine_id}"
    return [
        _p(f"{m}.level", g, f"{prefix}_Level", f"worst level of machine {machine_id} over "
           f"the agents: {_LEVEL_NOTE}", "Int32", lo=0, hi=4),
        _p(f"{m}.failure_probability", g, f"{prefix}_FailureProbability", "probability of "
           "failing within 24 h", "Float", unit="%", scale=10, normal_range=PERCENT),
        _p(f"{m}.rul_hours", g, f"{prefix}_RulHours", "remaining useful life", "Float",
           unit="h", scale=10, normal_range=RUL_RANGE),
        _p(f"{m}.power_kw", g, f"{prefix}_Power", "latest power draw", "Float", unit="kW",
           scale=100, normal_range=(0.0, MACHINE_KW_MAX)),
        _p(f"{m}.hazard_score", g, f"{prefix}_HazardScore", "safety hazard score", "Float",
           unit="%", scale=10, normal_range=PERCENT),
        _p(f"{m}.threat_level", g, f"{prefix}_ThreatLevel", "network threat: 0 LOW .. 3 "
           "CRITICAL", "Int32", lo=0, hi=3),
    ]  # fmt: skip


AGENTS = ("pm_agent", "energy_agent", "cyber_agent", "safety_agent", "ppe_agent")


def build_points(settings: Settings) -> list[Point]:
    """The whole table, with protocol addresses assigned in table order."""
    drafts = _system_points()
    for agent_id in AGENTS:
        drafts += _agent_points(agent_id, settings)
    for machine_id in settings.scada.machines:
        drafts += _machine_points(machine_id)
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
