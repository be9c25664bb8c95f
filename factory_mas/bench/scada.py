"""`bench --scada`: what the SCADA servers cost telemetry processing.

The same records go through the real app (hub, the four telemetry agents, history,
orchestrator) twice per round: once with the OPC UA, Modbus and DNP3 servers off, once on,
with a Modbus client reading every register ten times a second as an HMI would. Rounds
alternate off/on so drift on a shared machine hits both sides; the figure is the ratio.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from ..settings import Settings
from ..topics import TELEMETRY
from .inference import telemetry_records
from .machine import free_port, machine_facts
from .pipeline import bench_app, scored, wait_for

SLOWDOWN_TARGET = 0.10  # with the servers on, at most 10 % slower
_CHUNK = 500


async def _poll_modbus(port: int, registers: int, stop: asyncio.Event) -> int:
    """Read every input register in blocks, as an HMI polling at 10 Hz; returns reads."""
    from pymodbus.client import AsyncModbusTcpClient

    reads = 0
    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        while not stop.is_set():
            for start in range(0, registers, 100):
                count = min(100, registers - start)
                await client.read_input_registers(start, count=count, device_id=1)
                reads += 1
            await asyncio.sleep(0.1)
    finally:
        client.close()
    return reads


async def _run(settings: Settings, records: list[Any], scada_on: bool) -> dict[str, Any]:
    modbus_port = free_port()
    scada = msgspec.structs.replace(
        settings.scada,
        enabled=scada_on,
        host="127.0.0.1",
        opcua_port=free_port(),
        modbus_port=modbus_port,
        dnp3_port=free_port(),
    )
    async with bench_app(settings, scada=scada) as c:
        problems = c.scada.problems if scada_on else []
        stop = asyncio.Event()
        poller = None
        if scada_on and scada.modbus_enabled and not problems:
            inputs = sum(1 for p in c.scada.points if not p.writable) * 2
            poller = asyncio.create_task(_poll_modbus(modbus_port, inputs, stop))
        target = scored(c) + len(records)
        began = time.perf_counter()
        for start in range(0, len(records), _CHUNK):
            await c.hub.publish(TELEMETRY, records[start : start + _CHUNK], "bench")
        await wait_for(lambda: scored(c) >= target, "the agents to score every record")
        elapsed = time.perf_counter() - began
        stop.set()
        reads = await poller if poller is not None else 0
        return {
            "per_s": len(records) / elapsed,
            "servers": sorted(srv.name for srv in c.scada.servers) if scada_on else [],
            "problems": problems,
            "modbus_reads": reads,
        }


def run_scada_bench(settings: Settings, quick: bool) -> dict[str, Any]:
    records = telemetry_records(5_000 if quick else 20_000)
    rounds = 2 if quick else 3
    off, on = [], []
    for _ in range(rounds):
        off.append(asyncio.run(_run(settings, records, scada_on=False)))
        on.append(asyncio.run(_run(settings, records, scada_on=True)))
    off_best = max(r["per_s"] for r in off)
    on_best = max(r["per_s"] for r in on)
    slowdown = 1 - on_best / off_best
    return {
        "machine": machine_facts(),
        "quick": quick,
        "records": len(records),
        "rounds": rounds,
        "off_per_s": [r["per_s"] for r in off],
        "on_per_s": [r["per_s"] for r in on],
        "servers": on[-1]["servers"],
        "problems": on[-1]["problems"],
        "modbus_reads": sum(r["modbus_reads"] for r in on),
        "slowdown": slowdown,
        "target": {"slowdown_max": SLOWDOWN_TARGET, "met": slowdown <= SLOWDOWN_TARGET},
    }


def scada_report(results: dict[str, Any]) -> str:
    per = ", ".join
    lines = [
        f"scada bench: {results['machine']['cores']} cores, Python "
        f"{results['machine']['python']}{' (quick)' if results['quick'] else ''}",
        f"{results['records']:,} records through the hub and the four telemetry agents, "
        f"{results['rounds']} rounds of SCADA off then on "
        f"(on: {per(results['servers']) or 'no server'}, a Modbus client polling at 10 Hz).",
        f"  off  {per(f'{v:,.0f}' for v in results['off_per_s'])} records/s",
        f"  on   {per(f'{v:,.0f}' for v in results['on_per_s'])} records/s",
    ]
    if results["problems"]:
        lines.append(f"  server problems: {'; '.join(results['problems'])}")
    verdict = "met" if results["target"]["met"] else "MISSED"
    lines.append(
        f"target: best on within {SLOWDOWN_TARGET:.0%} of best off: "
        f"{results['slowdown']:+.1%} slower, {verdict}"
    )
    return "\n".join(lines)
