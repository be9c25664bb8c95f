"""Network threat rules: pure functions of the model's outputs and the settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ...levels import Level
from ...settings import CyberSettings

ThreatLevel = Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
THREAT_LEVELS: tuple[ThreatLevel, ...] = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
# Both rising far at once is what a flood of traffic does to a link; a failing cable or
# a noisy switch port tends to show in one of them, or in the error rate alone.
DDOS_SIGNATURE = frozenset({"network_latency_ms", "packet_loss_pct"})

_NAMES: dict[str, tuple[str, str]] = {
    "network_latency_ms": ("latency", " ms"),
    "packet_loss_pct": ("packet loss", "%"),
    "error_rate_pct": ("error rate", "%"),
}
_ADVICE = {
    "DDOS_RISK": (
        "Latency and packet loss surged together, the pattern of a traffic flood (DDoS). "
        "Check the machine's network segment and firewall logs; isolate the machine from "
        "the plant network if it goes on."
    ),
    "NETWORK_DEGRADATION": (
        "The link is degraded but not in the pattern of a flood. Check cabling, the switch "
        "port and recent configuration changes."
    ),
}


# The model's anomaly score is calibrated so that its decision threshold maps to 0.5.
ANOMALY_SCORE_THRESHOLD = 0.5


def is_anomaly(score: float, flagged: bool, t: CyberSettings) -> bool:
    """A (smoothed) score at the threshold, or still within `deadband` under it for a
    machine already in an anomalous run: one calmer record inside an attack does not end it."""
    return score >= ANOMALY_SCORE_THRESHOLD - (t.deadband if flagged else 0.0)


def next_run(previous: int, is_anomaly: bool) -> int:
    """Consecutive anomalous records of a machine, after one more record."""
    return previous + 1 if is_anomaly else 0


def threat_level(consecutive: int, t: CyberSettings) -> ThreatLevel:
    if consecutive >= t.critical_after_anomalies:
        return "CRITICAL"
    if consecutive >= t.high_after_anomalies:
        return "HIGH"
    if consecutive >= t.medium_after_anomalies:
        return "MEDIUM"
    return "LOW"


def level_for(threat: ThreatLevel, t: CyberSettings) -> Level:
    return {
        "LOW": t.level_low,
        "MEDIUM": t.level_medium,
        "HIGH": t.level_high,
        "CRITICAL": t.level_critical,
    }[threat]


def indicators(
    names: Sequence[str], values: Sequence[float], zscores: Sequence[float], min_zscore: float
) -> list[dict[str, Any]]:
    """The features far from normal traffic, farthest first."""
    far = [
        (name, value, z)
        for name, value, z in zip(names, values, zscores, strict=True)
        if abs(z) >= min_zscore
    ]
    far.sort(key=lambda item: -abs(item[2]))
    return [{"feature": n, "value": round(v, 3), "zscore": round(z, 2)} for n, v, z in far]


def alert_type(found: Sequence[Mapping[str, Any]]) -> str:
    rising = {i["feature"] for i in found if i["zscore"] > 0}
    return "DDOS_RISK" if rising >= DDOS_SIGNATURE else "NETWORK_DEGRADATION"


def describe(indicator: Mapping[str, Any]) -> str:
    """One indicator in words, e.g. 'latency 180.0 ms (45.2 robust SD above normal)'."""
    feature = indicator["feature"]
    base = feature.removesuffix("_delta")
    label, unit = _NAMES.get(base, (base, ""))
    value, z = indicator["value"], indicator["zscore"]
    side = "above" if z > 0 else "below"
    spread = f"{abs(z):.1f} robust SD {side} normal"
    if feature != base:
        return f"{label} changed by {value:+.1f}{unit} since the previous record ({spread})"
    return f"{label} {value:.1f}{unit} ({spread})"


def alert_details(machine_id: int | None, result: Mapping[str, Any]) -> str:
    kind = alert_type(result["indicators"])
    # The three farthest say what happened; the full list is in the prediction.
    named = result["indicators"][:3]
    found = "; ".join(describe(i) for i in named) or "no single reading stands out"
    found = found[0].upper() + found[1:]
    return (
        f"Machine {machine_id}: abnormal network traffic on "
        f"{result['consecutive_anomalies']} consecutive record(s), threat "
        f"{result['threat_level']}, anomaly score {result['anomaly_score']:.2f}. "
        f"{found}. {_ADVICE[kind]}"
    )
