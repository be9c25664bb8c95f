"""`python -m factory_mas bench`: how fast this machine runs the whole backend, measured in
one run, with every target a ratio or a floor set beside its baseline from the same run
(shared machines are noisy: a figure from another day proves nothing).

The default run covers the whole path (docs/performance.md explains each figure):
- pipeline: the scoring ceiling, end to end through the hub, latency at a fixed load;
- http: ingest batches, /system-state under load against a bare Starlette route,
  WebSocket fan-out;
- process: start-up to /health ready, and memory while a million records go through;
- alarms: the demo plant for simulated days, its alarms against the simulator's labels.

Sections for one part at a time: --inference (each agent alone, batch sizes, LiteRT
against Keras), --mqtt (broker to prediction against raw MQTT), --scada (the cost of the
SCADA servers).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from ..settings import Settings
from .machine import machine_facts


@dataclass(frozen=True)
class Section:
    name: str
    help: str
    # The module in this package and its two functions: run(settings, quick) -> figures
    # and report(figures) -> text. Imported when the section runs: each pulls in its own
    # clients (uvicorn, httpx, aiomqtt, pymodbus).
    module: str
    runner: str
    reporter: str
    default: bool

    def _function(self, name: str) -> Callable[..., Any]:
        return getattr(import_module(f"{__package__}.{self.module}"), name)

    def run(self, settings: Settings, quick: bool) -> dict[str, Any]:
        return self._function(self.runner)(settings, quick)

    def report(self, results: dict[str, Any]) -> str:
        return self._function(self.reporter)(results)


# In running order: start-up first, before the other sections have loaded the machine.
SECTIONS: tuple[Section, ...] = (
    Section(
        "process",
        "start-up to /health ready; RSS while a million records go through",
        "process",
        "run_process_bench",
        "process_report",
        True,
    ),
    Section(
        "pipeline",
        "scoring ceiling, end to end through the hub, latency at 1,000 records/s",
        "pipeline",
        "run_pipeline_bench",
        "pipeline_report",
        True,
    ),
    Section(
        "http",
        "POST /api/ingest, /system-state against bare Starlette, WebSocket fan-out",
        "http",
        "run_http_bench",
        "http_report",
        True,
    ),
    Section(
        "alarms",
        "the demo plant for simulated days: alarm precision, recall, pm lead, rates",
        "alarms",
        "run_alarms_bench",
        "alarms_report",
        True,
    ),
    Section(
        "inference",
        "each agent alone and batched, all together; LiteRT against Keras",
        "inference",
        "run_inference_bench",
        "report",
        False,
    ),
    Section(
        "mqtt",
        "broker to prediction against raw MQTT (needs mosquitto)",
        "mqtt",
        "run_mqtt_bench",
        "mqtt_report",
        False,
    ),
    Section(
        "scada",
        "telemetry throughput with the SCADA servers on against off",
        "scada",
        "run_scada_bench",
        "scada_report",
        False,
    ),
)


def chosen(names: set[str]) -> list[Section]:
    """The sections asked for, or the default ones when none is named."""
    return [s for s in SECTIONS if s.name in names or (not names and s.default)]


def all_targets(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every section's targets, as (section.name, {value, target, at_least, met})."""
    return [
        (f"{section}.{name}", t)
        for section, figures in results.items()
        if isinstance(figures, dict)
        for name, t in (figures.get("targets") or {}).items()
    ]


def summary(results: dict[str, Any]) -> str:
    rows = all_targets(results)
    if not rows:
        return ""
    width = max(len(name) for name, _ in rows) + 2
    lines = ["targets", f"  {'':<{width}}{'measured':>14}{'target':>14}"]
    for name, t in rows:
        sign = ">=" if t["at_least"] else "<="
        lines.append(
            f"  {name:<{width}}{_number(t['value']):>14}{sign + ' ' + _number(t['target']):>14}"
            f"  {'met' if t['met'] else 'MISSED'}"
        )
    return "\n".join(lines)


def _number(value: float) -> str:
    if value == float("inf"):
        return "none"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value % 1 else f"{value:.0f}"


def run(settings: Settings, sections: list[Section], quick: bool) -> dict[str, Any]:
    """Run and print each section as it finishes; returns every figure, with the machine."""
    results: dict[str, Any] = {"machine": machine_facts(), "quick": quick}
    for section in sections:
        results[section.name] = section.run(settings, quick)
        print(section.report(results[section.name]), end="\n\n", flush=True)
    print(summary(results))
    return results


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n", encoding="utf-8")


__all__ = ["SECTIONS", "Section", "all_targets", "chosen", "run", "summary", "write_json"]
