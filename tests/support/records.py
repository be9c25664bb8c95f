"""Telemetry records as the tests post them."""

from __future__ import annotations


def record(machine_id: int = 1, **overrides: object) -> dict:
    """A valid telemetry record in snake_case, as a gateway would post it."""
    base = {
        "timestamp": "2025-01-01T00:00:00Z",
        "machine_id": machine_id,
        "operation_mode": "Active",
        "temperature_c": 65.0,
        "vibration_hz": 1.5,
        "power_consumption_kw": 6.0,
        "network_latency_ms": 12.0,
        "packet_loss_pct": 0.5,
        "defect_rate_pct": 2.0,
        "production_speed": 300.0,
        "maintenance_score": 0.3,
        "error_rate_pct": 2.0,
    }
    base.update(overrides)
    return base
