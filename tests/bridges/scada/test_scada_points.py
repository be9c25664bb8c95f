"""The SCADA point table, its live values and the write path all three protocols share."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys

import msgspec
import pytest

from factory_mas.agents.registry import AGENTS
from factory_mas.bridges.scada.points import MACHINES_FOLDER, SYSTEM_FOLDER, build_points
from factory_mas.settings import Settings
from tests.support.app import running_app, with_scada
from tests.support.paths import REPO
from tests.support.records import record


def scada_only(settings: Settings) -> Settings:
    """SCADA on with no protocol servers: the table, values and writes alone."""
    return with_scada(settings, writes_enabled=True)


def test_the_table_is_complete_unique_and_stable(settings):
    points = build_points(settings)
    names = [p.name for p in points]
    assert len(names) == len(set(names))
    for entry in AGENTS:
        for leaf in ("enabled", "healthy", "level"):
            assert f"{entry.agent_id}.{leaf}" in names
    for machine_id in settings.scada.machines:
        assert f"machine_{machine_id}.rul_hours" in names
    folders = {SYSTEM_FOLDER, MACHINES_FOLDER, *(e.points.folder for e in AGENTS)}
    assert {p.group for p in points} == folders
    # Addresses: two registers a point, per table; DNP3 indexes dense per kind.
    for table in ("input", "holding"):
        addresses = [p.modbus_address for p in points if p.modbus_table == table]
        assert addresses == list(range(0, 2 * len(addresses), 2))
    analog = [p.dnp3_input for p in points if p.type != "Boolean"]
    binary = [p.dnp3_input for p in points if p.type == "Boolean"]
    assert analog == list(range(len(analog))) and binary == list(range(len(binary)))
    writable = [p for p in points if p.writable]
    assert all(p.target and p.dnp3_output is not None for p in writable)
    assert {p.target.split(":")[0] for p in writable} == {"setting", "enabled", "command"}
    # More machines only add points at the end: what an HMI knows does not move.
    more = msgspec.structs.replace(
        settings, scada=msgspec.structs.replace(settings.scada, machines=[1, 2, 3, 4, 5, 6])
    )
    assert build_points(more)[: len(points)] == points


def test_setting_points_carry_the_settings_own_ranges(settings):
    points = {p.name: p for p in build_points(settings)}
    threshold = points["energy_agent.anomaly_score_threshold"]
    assert (threshold.lo, threshold.hi, threshold.type) == (0, 1, "Float")
    runs = points["cyber_agent.high_after_anomalies"]
    assert (runs.lo, runs.type) == (1, "Int32")


def test_every_float_point_has_a_normal_range(settings):
    """OPC UA's AnalogItemType (every Double point) must carry an EURange."""
    points = {p.name: p for p in build_points(settings)}
    for point in points.values():
        if point.type == "Float":
            assert point.eu_range is not None, point.name
            assert point.eu_range[0] < point.eu_range[1], point.name
    assert points["machine_1.rul_hours"].eu_range == (0.0, 400.0)  # the RUL model's cap
    assert points["machine_1.failure_probability"].eu_range == (0.0, 100.0)
    # A setting's display range does not widen or narrow what may be written.
    critical = points["pm_agent.rul_critical_hours"]
    assert critical.eu_range == (0.0, 400.0) and (critical.lo, critical.hi) == (0, None)
    assert points["pm_agent.failure_probability_emergency"].eu_range == (0, 1)
    assert points["pm_agent.level"].eu_range == (0, 4)
    assert points["system.running"].eu_range is None


@pytest.mark.integration
def test_points_command_prints_a_table_and_csv():
    table = subprocess.run(
        [sys.executable, "-m", "factory_mas", "points"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "pm_agent.rul_critical_hours" in table and "holding" in table
    assert "Objects/MultiAgentSystem/PredictiveMaintenance/RulCriticalHours" in table
    as_csv = subprocess.run(
        [sys.executable, "-m", "factory_mas", "points", "--csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert len(rows) == len(build_points(Settings()))
    by_name = {r["name"]: r for r in rows}
    assert by_name["system.acknowledge_alarm"]["dnp3_output"] == "AO 0"
    assert by_name["pm_agent.enabled"]["dnp3_output"] == "CROB 0"


async def wait_for_value(client, name: str, predicate, tries: int = 100):
    for _ in range(tries):
        points = (await client.get("/api/scada/points")).json()["points"]
        value = next(p["value"] for p in points if p["name"] == name)
        if predicate(value):
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} stayed at {value!r}")


async def test_live_values_follow_the_plant_within_a_second(settings):
    async with running_app(scada_only(settings)) as (_, client):
        listed = (await client.get("/api/scada/points")).json()
        assert listed["count"] == len(build_points(settings))
        assert await wait_for_value(client, "system.running", bool) is True
        await client.post(
            "/api/orchestrator/alert",
            json={"level": "CRITICAL", "type": "FIRE_RISK", "source": "plc", "details": "x",
                  "machine_id": 2},
        )  # fmt: skip
        assert await wait_for_value(client, "system.alarms_critical", lambda v: v == 1) == 1
        hot = record(3, temperature_c=88.0, vibration_hz=4.8, power_consumption_kw=9.5)
        assert (await client.post("/api/ingest", json=hot)).status_code == 202
        got = await wait_for_value(client, "machine_3.rul_hours", lambda v: v)
        history = (await client.get("/api/pm/history?machine_id=3")).json()["predictions"]
        assert got == pytest.approx(history[0]["result"]["rul_hours"])
        power = await wait_for_value(client, "machine_3.power_kw", lambda v: v)
        assert power == pytest.approx(9.5)
        assert await wait_for_value(client, "energy_agent.total_kw", lambda v: v) == power


# A write from a control system with every right: the role checks are in
# tests/bridges/scada/test_scada_security.py.
AS_ADMIN = {"origin": "scada:test", "peer": "192.0.2.7:50123", "role": "admin", "by": "op1"}


async def test_writes_are_checked_applied_and_audited(settings):
    async with running_app(scada_only(settings)) as (components, client):
        writes = components.scada.writes
        ok = await writes.write("pm_agent.rul_critical_hours", 36, **AS_ADMIN)
        assert ok.ok, ok
        assert components.agents[0].settings.rul_critical_hours == 36
        refusals = {
            "pm_agent.rul_critical_hours": ("not a number", "wrong_type"),
            "energy_agent.anomaly_score_threshold": (1.5, "out_of_range"),
            "system.alarms_active": (3, "read_only"),
            "no.such.point": (1, "not_found"),
            # Valid on its own, but not below rul_critical_hours: the settings' own rule.
            "pm_agent.rul_warning_hours": (30, "rejected"),
        }
        for name, (value, code) in refusals.items():
            result = await writes.write(name, value, **AS_ADMIN)
            assert (result.ok, result.code) == (False, code), (name, result)
            assert result.error
        off = await writes.write("pm_agent.enabled", False, **AS_ADMIN)
        assert off.ok and components.agents[0].status == "stopped"
        on = await writes.write("pm_agent.enabled", 1, **AS_ADMIN)
        assert on.ok and components.agents[0].status == "running"

        alarm = (
            await client.post(
                "/api/orchestrator/alert",
                json={"level": "WARNING", "type": "X", "source": "plc", "details": "d"},
            )
        ).json()["alarms"][0]
        acked = await writes.write("system.acknowledge_alarm", alarm["id"], **AS_ADMIN)
        assert acked.ok
        state = (await client.get(f"/api/orchestrator/alarms/{alarm['id']}")).json()["alarm"]
        assert state["state"] == "ACTIVE_ACK" and state["acked_by"] == "op1"
        again = await writes.write("system.acknowledge_alarm", alarm["id"], **AS_ADMIN)
        assert again.code == "rejected" and "already acknowledged" in again.error

        changes = (await client.get("/api/config/changes?limit=100")).json()["changes"]
    from_scada = [c for c in changes if c["origin"] == "scada:test 192.0.2.7:50123"]
    # Every attempt is in the trail, accepted or not: a setting, the refusals, stop and
    # start, and two acknowledgements.
    assert len(from_scada) == 1 + len(refusals) + 2 + 2
    assert {c["by"] for c in from_scada} == {"op1"}
    assert sum(c["accepted"] for c in from_scada) == 4
