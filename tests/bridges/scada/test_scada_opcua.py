"""The OPC UA server against a real asyncua Client, inside the whole running app, and
against python-opcua (FreeOpcUa's older synchronous stack, in a thread) where an
independent client settles what the server says about itself."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from opcua import ua as sync_ua

from factory_mas import __version__
from factory_mas.bridges.scada.identity import build_date
from factory_mas.bridges.scada.opcua import CERT_FILE, KEY_FILE, ensure_certificate
from factory_mas.bridges.scada.points import NAMESPACE, build_points
from factory_mas.settings import Settings
from tests.support.app import add_key, running_app, with_scada
from tests.support.net import free_port
from tests.support.opcua import opcua_session, opcua_write
from tests.support.records import record
from tests.support.waiting import until

# Real OPC UA clients talk to the server over TCP.
pytestmark = pytest.mark.integration

GROUPS = {"SystemStatus", "PredictiveMaintenance", "EnergyOptimization", "CyberSecurity",
          "WorkplaceSafety", "PPECompliance", "Machines"}  # fmt: skip


def opcua_settings(settings: Settings, **scada: object) -> Settings:
    """SCADA on with only OPC UA, on a free loopback port."""
    return with_scada(settings, opcua_enabled=True, opcua_port=free_port(), **scada)


def url(settings: Settings) -> str:
    return f"opc.tcp://127.0.0.1:{settings.scada.opcua_port}/factory_mas/"


def logged_in(settings: Settings, key: str, **kw: object) -> Client:
    """A client that logs in with an API key as its password (the user name is free)."""
    client = Client(url(settings), **kw)
    client.set_user("scada-test")
    client.set_password(key)
    return client


async def node(client: Client, *path: str):
    idx = await client.get_namespace_index(NAMESPACE)
    names = ["MultiAgentSystem", *path]
    return await client.nodes.objects.get_child([f"{idx}:{n}" for n in names])


async def test_namespace_layout_types_units_and_timestamps(settings: Settings) -> None:
    s = opcua_settings(settings, writes_enabled=True)
    async with running_app(s) as (c, _http), Client(url(s)) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        root = await node(client)
        folders = {(await f.read_browse_name()).Name for f in await root.get_children()}
        assert folders == GROUPS
        # Every point of the table is where its opcua_path says, typed as the table says.
        for point in c.scada.points:
            n = await node(client, point.group, point.browse_name)
            assert n.nodeid == ua.NodeId(point.name, idx)
            want = {"Boolean": ua.VariantType.Boolean, "Int32": ua.VariantType.Int32,
                    "Float": ua.VariantType.Double}[point.type]  # fmt: skip
            assert await n.read_data_type_as_variant_type() == want, point.name
            access = await n.get_access_level()
            assert (ua.AccessLevel.CurrentWrite in access) == point.writable, point.name

        rul = await node(client, "PredictiveMaintenance", "RulCriticalHours")
        eu = await (await rul.get_child("0:EngineeringUnits")).read_value()
        assert isinstance(eu, ua.EUInformation)
        assert eu.DisplayName.Text == "h"
        assert eu.UnitId == (ord("H") << 16) | (ord("U") << 8) | ord("R")
        description = await rul.read_description()
        assert "CRITICAL" in description.Text

        level = await node(client, "PredictiveMaintenance", "Level")
        eu_range = await (await level.get_child("0:EURange")).read_value()
        assert (eu_range.Low, eu_range.High) == (0.0, 4.0)

        # Values arrive with the time they were computed as the source timestamp.
        running = await node(client, "SystemStatus", "Running")

        async def running_true():
            dv = await running.read_data_value()
            return dv if dv.Value.Value is True else None

        dv = await until(running_true, "Running = true")
        assert dv.Value.VariantType == ua.VariantType.Boolean
        assert dv.SourceTimestamp is not None
        assert abs(dv.SourceTimestamp.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(
            seconds=30
        )
        critical = await rul.read_data_value()
        assert critical.Value.VariantType == ua.VariantType.Double
        assert critical.Value.Value == s.agents.pm.rul_critical_hours
        alarms = await (await node(client, "SystemStatus", "ActiveAlarms")).read_data_value()
        assert alarms.Value.VariantType == ua.VariantType.Int32
        assert alarms.Value.Value == 0

        status = c.scada.status()["servers"]["opcua"]
        assert status["listening"] and status["error"] is None
        assert status["security"] == "None"


class Changes:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def datachange_notification(self, node, value, data) -> None:
        self.queue.put_nowait((node, value, data.monitored_item.Value))


async def test_subscription_delivers_changes(settings: Settings) -> None:
    s = opcua_settings(settings)
    async with running_app(s) as (_c, http), Client(url(s)) as client:
        alarms = await node(client, "SystemStatus", "ActiveAlarms")
        worst = await node(client, "PredictiveMaintenance", "WorstFailureProbability")
        handler = Changes()
        sub = await client.create_subscription(50, handler)
        await sub.subscribe_data_change([alarms, worst])
        initial = {}
        while len(initial) < 2:  # the current values come first
            n, value, _dv = await asyncio.wait_for(handler.queue.get(), 10)
            initial[n.nodeid] = value
        assert initial[alarms.nodeid] == 0

        alert = {"level": "CRITICAL", "type": "TEST", "source": "opcua_test", "details": "x"}
        r = await http.post("/api/orchestrator/alert", json=alert)
        assert r.status_code < 300, r.text
        degraded = record(1, temperature_c=80, vibration_hz=3.5, maintenance_score=0.7)
        r = await http.post("/api/pm/predict", json=degraded)
        assert r.status_code == 200, r.text
        probability = r.json()["result"]["failure_probability"]

        seen = {}
        while alarms.nodeid not in seen or worst.nodeid not in seen:
            n, value, dv = await asyncio.wait_for(handler.queue.get(), 10)
            seen[n.nodeid] = (value, dv)
        assert seen[alarms.nodeid][0] >= 1
        assert seen[worst.nodeid][0] == pytest.approx(100 * probability)
        assert seen[worst.nodeid][1].SourceTimestamp is not None
        await sub.delete()


async def test_threshold_write_is_used_by_the_agent(settings: Settings) -> None:
    s = opcua_settings(settings, writes_enabled=True)
    admin = await add_key(s, "scada-admin", "admin")
    degraded = record(1, temperature_c=80, vibration_hz=3.5, maintenance_score=0.7)
    # pm judges a machine against its own normal and trends its RUL over records: a
    # machine it knows (its normal warmed up on healthy records), then long worn.
    worn = [record(1)] * 30 + [degraded] * 400
    async with running_app(s) as (c, http), logged_in(s, admin) as client:
        before = (await http.post("/api/pm/predict", json=worn)).json()["predictions"][-1]
        rul = before["result"]["rul_hours"]
        assert rul + 4 < s.agents.pm.rul_caution_hours, "the record must sit below CAUTION"
        assert before["level"] != "CRITICAL"
        warning_h = float(int(rul) + 3)
        critical_h = float(int(rul) + 2)

        warning = await node(client, "PredictiveMaintenance", "RulWarningHours")
        critical = await node(client, "PredictiveMaintenance", "RulCriticalHours")
        await warning.write_value(ua.Variant(warning_h, ua.VariantType.Double))
        await critical.write_value(ua.Variant(critical_h, ua.VariantType.Double))
        assert await critical.read_value() == critical_h  # in force at once

        status = (await http.get("/api/pm/status")).json()
        assert status["settings"]["rul_critical_hours"] == critical_h
        assert status["settings"]["rul_warning_hours"] == warning_h
        after = (await http.post("/api/pm/predict", json=degraded)).json()
        assert after["result"]["rul_hours"] == rul
        assert after["level"] == "CRITICAL"

        changes = (await http.get("/api/config/changes")).json()["changes"]
        mine = [ch for ch in changes if ch["origin"].startswith("scada:opcua ") and ch["accepted"]]
        assert len(mine) == 2 and {ch["by"] for ch in mine} == {"scada-admin"}
        assert c.scada.status()["servers"]["opcua"]["writes"] == {"accepted": 2, "refused": 0}


async def test_bad_writes_are_refused_and_audited(settings: Settings) -> None:
    s = opcua_settings(settings, writes_enabled=True)
    admin = await add_key(s, "scada-admin", "admin")
    async with running_app(s) as (c, http), logged_in(s, admin) as client:
        critical = await node(client, "PredictiveMaintenance", "RulCriticalHours")
        alarms = await node(client, "SystemStatus", "ActiveAlarms")
        cases = [
            (critical, ua.Variant(-5.0, ua.VariantType.Double), ua.uaerrors.BadOutOfRange),
            (critical, ua.Variant("abc", ua.VariantType.String), ua.uaerrors.BadTypeMismatch),
            (critical, ua.Variant(True, ua.VariantType.Boolean), ua.uaerrors.BadTypeMismatch),
            # In range, but an Int32 is no Double.
            (critical, ua.Variant(30, ua.VariantType.Int32), ua.uaerrors.BadTypeMismatch),
            # In range for the point, but not below rul_warning_hours: the settings refuse.
            (critical, ua.Variant(100.0, ua.VariantType.Double), ua.uaerrors.BadInvalidArgument),
            (alarms, ua.Variant(5, ua.VariantType.Int32), ua.uaerrors.BadNotWritable),
        ]
        for n, variant, error in cases:
            with pytest.raises(error):
                await n.write_value(variant)
        assert await critical.read_value() == s.agents.pm.rul_critical_hours
        assert await alarms.read_value() == 0

        changes = (await http.get("/api/config/changes")).json()["changes"]
        refused = [
            ch for ch in changes if ch["origin"].startswith("scada:opcua ") and not ch["accepted"]
        ]
        assert len(refused) == len(cases)
        codes = sorted(ch["result"]["code"] for ch in refused if ch["result"].get("code"))
        assert {"out_of_range", "wrong_type", "read_only"} <= set(codes)
        assert any(ch["request"] == {"point": "system.alarms_active", "value": 5, "role": "admin"}
                   for ch in refused)  # fmt: skip
        status = (await http.get("/api/pm/status")).json()
        assert status["settings"]["rul_critical_hours"] == s.agents.pm.rul_critical_hours
        assert c.scada.status()["servers"]["opcua"]["writes"] == {"accepted": 0, "refused": 6}


async def test_port_in_use_keeps_the_app_running(settings: Settings) -> None:
    s = opcua_settings(settings)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", s.scada.opcua_port))
        taken.listen()
        async with running_app(s) as (c, http):
            health = (await http.get("/health")).json()
            assert health["status"] == "degraded"
            problems = health["components"]["scada"]
            assert len(problems) == 1 and problems[0].startswith("opcua: ")
            assert str(s.scada.opcua_port) in problems[0]
            status = c.scada.status()["servers"]["opcua"]
            assert status["listening"] is False and status["error"]
            # Everything else still works.
            r = await http.post("/api/pm/predict", json=record(1))
            assert r.status_code == 200, r.text


async def test_basic256sha256_sign_and_encrypt(settings: Settings, tmp_path: Path) -> None:
    s = opcua_settings(settings, opcua_security="Basic256Sha256", writes_enabled=True)
    admin = await add_key(s, "scada-admin", "admin")
    cert_file = Path(s.data_dir) / "scada" / CERT_FILE
    async with running_app(s) as (c, _http):
        status = c.scada.status()["servers"]["opcua"]
        assert status["listening"], status
        assert cert_file.is_file() and (Path(s.data_dir) / "scada" / KEY_FILE).is_file()
        first = cert_file.read_bytes()

        # Only the encrypted endpoint is offered.
        probe = Client(url(s))
        endpoints = await probe.connect_and_get_server_endpoints()
        assert {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints} == {
            (SecurityPolicyBasic256Sha256.URI, ua.MessageSecurityMode.SignAndEncrypt)
        }
        # A plain client finds no endpoint to open a session on.
        with pytest.raises(ua.UaError, match="No matching endpoints"):
            async with Client(url(s), timeout=5) as plain:
                await plain.nodes.objects.get_children()

        # A client with its own certificate connects, reads and writes.
        client_cert, client_key = await ensure_certificate(tmp_path / "client")
        client = logged_in(s, admin)
        client.application_uri = "urn:6g-mas-factory.com:factory_mas"
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(client_cert),
            str(client_key),
            server_certificate=str(cert_file),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        async with client:
            running = await node(client, "SystemStatus", "Running")
            assert await running.read_value() is True
            critical = await node(client, "PredictiveMaintenance", "RulCriticalHours")
            await critical.write_value(ua.Variant(30.0, ua.VariantType.Double))
            assert await critical.read_value() == 30.0

    # The certificate is reused on the next start.
    async with running_app(s) as (c, _http):
        assert c.scada.status()["servers"]["opcua"]["listening"]
        assert cert_file.read_bytes() == first


# -- what an independent client sees ---------------------------------------------------


async def test_build_info_names_factory_mas(settings: Settings) -> None:
    s = opcua_settings(settings)
    fields = ("ProductUri", "ManufacturerName", "ProductName", "SoftwareVersion", "BuildNumber",
              "BuildDate")  # fmt: skip

    def read(client: Any, _idx: int) -> tuple[Any, dict[str, Any], Any]:
        info = client.get_node(sync_ua.ObjectIds.Server_ServerStatus_BuildInfo).get_value()
        each = {
            f: client.get_node(
                getattr(sync_ua.ObjectIds, f"Server_ServerStatus_BuildInfo_{f}")
            ).get_value()
            for f in fields
        }
        status = client.get_node(sync_ua.ObjectIds.Server_ServerStatus).get_value()
        return info, each, status.BuildInfo

    async with running_app(s):
        info, each, in_status = await asyncio.to_thread(opcua_session, s, None, read)
    want = {
        "ProductUri": NAMESPACE,
        "ManufacturerName": "factory_mas project",
        "ProductName": "factory_mas smart-factory monitoring backend",
        "SoftwareVersion": __version__,
        "BuildNumber": __version__,
        "BuildDate": build_date().replace(tzinfo=None),  # UTC, as OPC UA DateTimes are
    }
    # The structure, its six variables and ServerStatus's copy all agree.
    for got in (info, in_status):
        assert {f: getattr(got, f) for f in fields} == want
    assert each == want


async def test_double_points_are_analog_items_with_range_and_units(settings: Settings) -> None:
    s = opcua_settings(settings)
    table = build_points(s)

    def read(client: Any, idx: int) -> dict[str, tuple[int, dict[str, Any]]]:
        out = {}
        for point in table:
            n = client.get_node(sync_ua.NodeId(point.name, idx))
            props = {p.get_browse_name().to_string(): p.get_value() for p in n.get_properties()}
            out[point.name] = (n.get_type_definition().Identifier, props)
        return out

    async with running_app(s):
        seen = await asyncio.to_thread(opcua_session, s, None, read)
    unit_ids = {"%": "P1", "h": "HUR", "kW": "KWT"}
    eu_range, units = "0:EURange", "0:EngineeringUnits"
    for point in table:
        type_definition, props = seen[point.name]
        if point.type != "Float":
            assert type_definition == sync_ua.ObjectIds.BaseDataVariableType, point.name
            continue
        assert type_definition == sync_ua.ObjectIds.AnalogItemType, point.name
        # AnalogItemType's EURange is mandatory: every Double point has one.
        assert point.eu_range is not None
        assert (props[eu_range].Low, props[eu_range].High) == point.eu_range, point.name
        if not point.unit:
            assert units not in props, point.name
            continue
        eu = props[units]
        assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
        assert eu.UnitId == int.from_bytes(unit_ids[point.unit].encode(), "big"), point.name
        assert eu.DisplayName.Text == point.unit
    by_name = {p.name: seen[p.name][1] for p in table}
    assert (by_name["machine_1.power_kw"][eu_range].High, by_name["pm_agent.worst_rul_hours"][
        eu_range].High) == (10.0, 400.0)  # fmt: skip


async def test_writes_of_another_type_or_to_no_node_are_refused(settings: Settings) -> None:
    s = opcua_settings(settings, writes_enabled=True)
    admin = await add_key(s, "scada-admin", "admin")
    double, int32, int64 = (sync_ua.VariantType.Double, sync_ua.VariantType.Int32,
                            sync_ua.VariantType.Int64)  # fmt: skip

    def write_to(node: str | int) -> str:
        """Write a Double to `node`: a string id in our namespace, a number in OPC UA's."""

        def work(client: Any, idx: int) -> str:
            node_id = sync_ua.NodeId(node, idx if isinstance(node, str) else 0)
            try:
                client.get_node(node_id).set_value(sync_ua.DataValue(sync_ua.Variant(1.0, double)))
            except sync_ua.UaStatusCodeError as exc:
                return sync_ua.StatusCode(exc.code).name
            return "Good"

        return opcua_session(s, admin, work)

    critical, ack = "pm_agent.rul_critical_hours", "system.acknowledge_alarm"
    async with running_app(s) as (_c, http):
        writes = [(critical, 30, int32), (critical, 30, int64), (ack, 1.0, double),
                  (critical, 30.0, double)]  # fmt: skip
        got = {w: await asyncio.to_thread(opcua_write, s, admin, *w) for w in writes}
        unknown = [await asyncio.to_thread(write_to, n) for n in ("pm_agent.nothing", 987654)]
        changes = (await http.get("/api/config/changes")).json()["changes"]
    assert got == {
        (critical, 30, int32): "BadTypeMismatch",
        (critical, 30, int64): "BadTypeMismatch",
        (ack, 1.0, double): "BadTypeMismatch",
        (critical, 30.0, double): "Good",
    }
    assert unknown == ["BadNodeIdUnknown", "BadNodeIdUnknown"]
    refused = [ch for ch in changes if ch["origin"].startswith("scada:opcua ")
               and not ch["accepted"]]  # fmt: skip
    assert len(refused) == 3
    assert {ch["result"]["code"] for ch in refused} == {"wrong_type"}
    assert any("got Int32 30" in ch["result"]["error"] for ch in refused)
