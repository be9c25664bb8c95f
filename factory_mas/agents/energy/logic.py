"""Energy rules: pure functions of one judged reading and the settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...levels import RANK, Level
from ...settings import EnergySettings
from ..conditioning import level_with_deadband

# Output per kWh and deviations are computed against at least this draw: a machine
# reading 0 kW is off, not infinitely efficient.
MIN_POWER_KW = 0.1
INSPECT_LOADS = "inspect drives and loads for friction, jams or an electrical fault"


@dataclass(frozen=True)
class Judged:
    """One reading with what the models and the machine's memory say about it."""

    machine_id: int
    mode: str
    consumption_kw: float
    forecast_kw: float
    # The machine's usual draw in this mode (the forecast when the mode is new to it).
    baseline_kw: float
    # Its usual draw when Active; NaN while it has never been seen Active.
    active_baseline_kw: float
    is_anomaly: bool
    units_per_kwh: float
    efficiency_score: float


def units_per_kwh(production_speed: float, defect_rate_pct: float, power_kw: float) -> float:
    """Good units made per kWh: units/h net of defects over kW."""
    return production_speed * (1.0 - defect_rate_pct / 100.0) / max(power_kw, MIN_POWER_KW)


def efficiency_score(units: float, t: EnergySettings) -> float:
    """0..100: output per kWh as a share of the plant's reference, capped at the reference."""
    return round(min(100.0, 100.0 * units / t.efficiency_reference_units_per_kwh), 1)


def idle_waste(j: Judged, t: EnergySettings) -> bool:
    """An Idle machine drawing (nearly) its own Active level: something was left running.

    NaN compares false, so a machine never seen Active is not judged.
    """
    return j.mode == "Idle" and j.consumption_kw >= t.idle_waste_ratio * j.active_baseline_kw


def is_anomaly(score: float, previous: Level | None, t: EnergySettings) -> bool:
    """A (smoothed) anomaly score over the threshold, with hysteresis: a machine already
    flagged stays flagged until its score is `deadband` under the threshold."""
    was: Level | None = (
        "WARNING" if previous is not None and RANK[previous] >= RANK["WARNING"] else None
    )
    cuts: list[tuple[float, Level]] = [(t.anomaly_score_threshold, "WARNING")]
    return level_with_deadband(score, cuts, was, t.deadband) == "WARNING"


def level_for(j: Judged, t: EnergySettings) -> Level:
    if j.is_anomaly:
        if j.consumption_kw >= t.critical_forecast_ratio * j.forecast_kw:
            return "CRITICAL"
        return "WARNING"
    if idle_waste(j, t):
        return "CAUTION"
    return "NORMAL"


def excess_pct(consumption_kw: float, reference_kw: float) -> float:
    """How far consumption is above (positive) or below (negative) a reference, in %."""
    return 100.0 * (consumption_kw - reference_kw) / max(reference_kw, MIN_POWER_KW)


def _deviation(j: Judged, t: EnergySettings) -> str | None:
    """What an anomalous draw deviates from, in words.

    Only anomalies get one: on a 2 kW idle load the sensor noise alone crosses 25% now and
    then. Against the forecast first; against the usual level when the forecast has caught
    up with a long episode (its window is by then full of the anomalous readings).
    """
    if not j.is_anomaly:
        return None
    vs_forecast = excess_pct(j.consumption_kw, j.forecast_kw)
    vs_usual = excess_pct(j.consumption_kw, j.baseline_kw)
    if vs_forecast >= t.above_forecast_pct:
        return (
            f"Consumption {vs_forecast:.0f}% above forecast ({j.consumption_kw:.1f} kW against "
            f"{j.forecast_kw:.1f} kW): {INSPECT_LOADS}"
        )
    if vs_usual >= t.above_forecast_pct:
        return (
            f"Consumption {vs_usual:.0f}% above this machine's usual {j.baseline_kw:.1f} kW "
            f"when {j.mode}: {INSPECT_LOADS}"
        )
    if vs_forecast <= -t.above_forecast_pct:
        return (
            f"Consumption {-vs_forecast:.0f}% below forecast ({j.consumption_kw:.1f} kW against "
            f"{j.forecast_kw:.1f} kW): check the power supply and whether the machine stopped"
        )
    return None


def recommendations(j: Judged, t: EnergySettings) -> list[str]:
    out = []
    if idle_waste(j, t):
        relation = "close to" if j.consumption_kw <= j.active_baseline_kw else "above"
        out.append(
            f"Machine {j.machine_id} is Idle but draws {j.consumption_kw:.1f} kW, {relation} "
            f"its Active level of {j.active_baseline_kw:.1f} kW: check for equipment left running"
        )
    deviation = _deviation(j, t)
    if deviation is not None:
        out.append(deviation)
    # Only a machine at work is expected to produce; Idle and Maintenance score low anyway.
    if j.mode == "Active" and j.efficiency_score < t.efficiency_low_score:
        out.append(
            f"Low efficiency: {j.units_per_kwh:.0f} units/kWh, {j.efficiency_score:.0f}% of the "
            f"{t.efficiency_reference_units_per_kwh:.0f} units/kWh reference: check the defect "
            "rate and whether the machine runs below its rated speed"
        )
    return out


def alert_type(is_anomaly: bool, level: Level) -> str:
    if is_anomaly:
        return "POWER_ANOMALY"
    # Without an anomaly only idle waste raises the level; anything else alerts only when
    # an operator sets alert_min_level to NORMAL.
    return "IDLE_WASTE" if level == "CAUTION" else "POWER_NORMAL"


def alert_details(machine_id: int | None, result: Mapping[str, Any]) -> str:
    r = result
    text = (
        f"Machine {machine_id} draws {r['consumption_kw']:.1f} kW against a forecast of "
        f"{r['forecast_kw']:.1f} kW and a usual {r['baseline_kw']:.1f} kW for its mode "
        f"(anomaly score {r['anomaly_score']:.2f})."
    )
    return " ".join([text, *(f"{rec}." for rec in r["recommendations"])])
