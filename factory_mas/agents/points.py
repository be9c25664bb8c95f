"""What an agent shows a control system: descriptions of its SCADA points, declared in the
agent's own package (`<agent>/points.py`) next to the result they read.

A description says what a value means (its name, type, unit, range) and how to compute it
from the agent's typed results; it knows no protocol. bridges/scada/points.py lays every
description out into the one address table (OPC UA node, Modbus registers, DNP3 indices),
in registry order, so adding an agent is a table here, not a branch in the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from ..settings import Settings

PointType = Literal["Boolean", "Int32", "Float"]
Range = tuple[float, float]  # low, high
Value = bool | int | float
# The subject of a prediction: a machine id, or a camera id for PPE.
Subject = int | str
R = TypeVar("R")
PERCENT: Range = (0.0, 100.0)  # whole percentages


@dataclass(frozen=True, kw_only=True)
class Reading(Generic[R]):
    """A live value of the agent as a whole, computed from its latest result per subject
    (empty until it has scored something, and on an instance that runs no agents)."""

    key: str  # the point is "<agent_id>.<key>"
    browse_name: str  # the OPC UA node's name in the agent's folder
    description: str
    type: PointType
    value: Callable[[Mapping[Subject, R]], Value]
    unit: str = ""
    # Modbus 16-bit register value = round(value * scale).
    scale: float = 1.0
    lo: float | None = None
    hi: float | None = None
    # OPC UA's EURange where it is not lo..hi; a function for a range the settings decide.
    normal_range: Range | Callable[[Settings], Range] | None = None


@dataclass(frozen=True, kw_only=True)
class Setting:
    """A run-time setting of the agent, readable and writable as a point. Its type and
    valid range are the settings field's own (its msgspec constraints)."""

    key: str  # the settings field, and the point "<agent_id>.<key>"
    description: str
    unit: str = ""
    scale: float = 1.0
    normal_range: Range | None = None


@dataclass(frozen=True, kw_only=True)
class MachineReading(Generic[R]):
    """A value of one machine, from the agent's latest result about that machine."""

    # The place in every machine's block: the blocks were laid out before agents declared
    # their own points, and an HMI's addresses must not move, so the order is fixed here
    # rather than taken from the registry. A new agent takes the next free slot.
    slot: int
    key: str  # the point is "machine_<id>.<key>"
    browse_suffix: str  # the OPC UA node is "Machine<id>_<browse_suffix>"
    description: str
    type: PointType
    value: Callable[[R], Value]
    unit: str = ""
    scale: float = 1.0
    lo: float | None = None
    hi: float | None = None
    normal_range: Range | None = None


@dataclass(frozen=True, kw_only=True)
class ScadaPoints(Generic[R]):
    """Every point of one agent, besides the enabled/healthy/level all agents have."""

    folder: str  # the agent's OPC UA folder under Objects/MultiAgentSystem
    agent: tuple[Reading[R] | Setting, ...] = ()
    machine: tuple[MachineReading[R], ...] = ()
