"""The OPC UA server (asyncua): every point of the table as a variable a client can read,
subscribe to and (where writable) write.

Layout: namespace http://6g-mas-factory.com, Objects/MultiAgentSystem/<group>/<browse name>,
one folder per point group (SystemStatus, PredictiveMaintenance, ..., Machines). A point's
NodeId is its table name (`ns=<idx>;s=pm_agent.rul_critical_hours`), its data type Boolean,
Int32 or Double, and it carries the standard EngineeringUnits (UNECE code) and EURange
properties where the table has a unit and a range. Values get the time they were computed
as SourceTimestamp.

Client writes do not go to asyncua's address space: the server's AttributeService is
replaced by one that sends a write to a point's Value through `Writes.write` (the checks and
the audit trail every other way in uses) and answers Good only when it was accepted. Read-
only points advertise AccessLevel CurrentRead, but a write to one still reaches
`Writes.write`, so the refusal (BadNotWritable) is audited like any other. Writes to
anything else (folders, properties, the standard nodes) keep asyncua's own access rules.

Security "None" offers only the plain endpoint; "Basic256Sha256" offers only
Basic256Sha256/SignAndEncrypt with a self-signed certificate and key generated under
<data dir>/scada on first start and reused after (renewed when expired or when the host
name changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService

from ...tasks import cancel
from .points import NAMESPACE, Point

if TYPE_CHECKING:
    from .live import Value
    from .service import ScadaBridge

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:6g-mas-factory.com:factory_mas"
ROOT_FOLDER = "MultiAgentSystem"
VARIANT = {"Boolean": ua.VariantType.Boolean, "Int32": ua.VariantType.Int32,
           "Float": ua.VariantType.Double}  # fmt: skip
PYTHON = {"Boolean": bool, "Int32": int, "Float": float}
# UNECE Recommendation 20 codes, as OPC UA Part 8 wants them in EUInformation.
UNITS = {"%": ("P1", "percent"), "h": ("HUR", "hour"), "kW": ("KWT", "kilowatt")}
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
REFUSED = {
    "not_found": ua.StatusCodes.BadNodeIdUnknown,
    "read_only": ua.StatusCodes.BadNotWritable,
    "wrong_type": ua.StatusCodes.BadTypeMismatch,
    "out_of_range": ua.StatusCodes.BadOutOfRange,
    "rejected": ua.StatusCodes.BadInvalidArgument,
    "unavailable": ua.StatusCodes.BadResourceUnavailable,
}
_ADMIN = User(role=UserRole.Admin)  # asyncua's default for its own internal writes
CERT_FILE, KEY_FILE = "opcua-cert.der", "opcua-key.pem"


def eu_information(unit: str) -> ua.EUInformation:
    code, description = UNITS.get(unit, ("", unit))
    unit_id = -1  # "no code" (Part 8)
    if code:
        unit_id = 0
        for ch in code:
            unit_id = (unit_id << 8) | ord(ch)
    return ua.EUInformation(
        NamespaceUri=UNECE_URI,
        UnitId=unit_id,
        DisplayName=ua.LocalizedText(unit),
        Description=ua.LocalizedText(description),
    )


async def ensure_certificate(directory: Path) -> tuple[Path, Path]:
    """The server's certificate (DER) and key (PEM): made on first use, reused after."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / CERT_FILE, directory / KEY_FILE
    await setup_self_signed_certificate(
        key,
        cert,
        APPLICATION_URI,
        socket.gethostname(),
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        {"commonName": "factory_mas OPC UA server", "organizationName": "6G MAS Factory"},
    )
    with contextlib.suppress(OSError):
        os.chmod(key, 0o600)
    return cert, key


class _PointWrites(AttributeService):
    """asyncua's AttributeService with client writes to a point's Value routed to us."""

    def __init__(self, aspace: Any, owner: OpcUaServer) -> None:
        super().__init__(aspace)
        self.owner = owner

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            point = self.owner.by_node.get(item.NodeId)
            if point is None or item.AttributeId != ua.AttributeIds.Value:
                single = ua.WriteParameters(NodesToWrite=[item])
                results += await super().write(single, user=user)
            else:
                results.append(await self.owner.client_write(point, item, user))
        return results


class OpcUaServer:
    name = "opcua"

    def __init__(self, bridge: ScadaBridge) -> None:
        self.bridge = bridge
        self.settings = bridge.settings
        self.data_dir = Path(bridge.c.settings.data_dir)
        s = self.settings
        self.endpoint = f"opc.tcp://{s.host}:{s.opcua_port}/factory_mas/"
        self.server: Server | None = None
        self.listening = False
        self.error: str | None = None
        self.namespace_index: int | None = None
        self.nodes: dict[str, ua.NodeId] = {}  # point name -> node id
        self.by_node: dict[ua.NodeId, Point] = {}
        self.certificate: Path | None = None
        self.writes = {"accepted": 0, "refused": 0}
        self._pending: dict[str, tuple[Value, datetime]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> OpcUaServer:
        try:
            server = await self._build()
        except Exception as exc:  # a broken certificate dir etc. must not stop the process
            log.exception("opcua: setting up the server failed")
            self.error = f"setup failed: {exc}"
            return self
        try:
            await server.start()
        except OSError as exc:  # port in use, no permission, unknown host
            self.error = f"cannot listen on {self.settings.host}:{self.settings.opcua_port}: {exc}"
            log.error("opcua: %s; OPC UA is off, everything else keeps running", self.error)
            return self
        self.server, self.listening = server, True
        self._task = asyncio.create_task(self._apply_updates(), name="opcua-updates")
        log.info("opcua: listening on %s (security %s)", self.endpoint, self.security)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self._task)
        self._task = None
        if self.server is not None and self.listening:
            try:
                await self.server.stop()
            except Exception:
                log.exception("opcua: stopping the server failed")
        self.listening = False
        self.server = None

    @property
    def security(self) -> str:
        return self.settings.opcua_security

    async def _build(self) -> Server:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("factory_mas OPC UA server")
        await server.set_application_uri(APPLICATION_URI)
        server.product_uri = NAMESPACE
        server.manufacturer_name = "6G MAS Factory"
        if self.security == "Basic256Sha256":
            cert, key = await ensure_certificate(self.data_dir / "scada")
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            self.certificate = cert
        else:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        self.namespace_index = idx
        root = await server.nodes.objects.add_folder(
            ua.NodeId(ROOT_FOLDER, idx), ua.QualifiedName(ROOT_FOLDER, idx)
        )
        folders: dict[str, Any] = {}
        for point in self.bridge.points:
            folder = folders.get(point.group)
            if folder is None:
                folder = await root.add_folder(
                    ua.NodeId(f"{ROOT_FOLDER}/{point.group}", idx),
                    ua.QualifiedName(point.group, idx),
                )
                folders[point.group] = folder
            await self._add_variable(folder, point, idx)
        # Client writes from now on go through the point table's checks and audit.
        iserver = server.iserver
        iserver.attribute_service = _PointWrites(iserver.aspace, self)
        return server

    async def _add_variable(self, folder: Any, point: Point, idx: int) -> None:
        vt = VARIANT[point.type]
        node_id = ua.NodeId(point.name, idx)
        var = await folder.add_variable(node_id, ua.QualifiedName(point.browse_name, idx),
                                        PYTHON[point.type](0), vt)  # fmt: skip
        await var.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText(point.description))),
        )
        if point.unit:
            await var.add_property(
                ua.NodeId(f"{point.name}.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                eu_information(point.unit),
                datatype=ua.ObjectIds.EUInformation,
            )
        if point.lo is not None and point.hi is not None and point.type != "Boolean":
            await var.add_property(
                ua.NodeId(f"{point.name}.EURange", idx),
                ua.QualifiedName("EURange", 0),
                ua.Range(Low=float(point.lo), High=float(point.hi)),
                datatype=ua.ObjectIds.Range,
            )
        if point.writable:
            await var.set_writable()
        self.nodes[point.name] = node_id
        self.by_node[node_id] = point

    # -- values out ----------------------------------------------------------------------

    def update(self, values: dict[str, Value], changed: set[str], at: datetime) -> None:
        if not self.listening:
            return
        for name in changed:
            if name in self.nodes and name in values:
                self._pending[name] = (values[name], at)
        if self._pending:
            self._wake.set()

    async def _apply_updates(self) -> None:
        """Writes the latest pending values; one task, so a burst never piles up writes."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            for name, (value, at) in batch.items():
                try:
                    await self._set(name, value, at)
                except Exception:
                    log.exception("opcua: updating %s failed", name)

    async def _set(self, name: str, value: Value, at: datetime) -> None:
        assert self.server is not None
        point = self.by_node[self.nodes[name]]
        dv = ua.DataValue(
            ua.Variant(PYTHON[point.type](value), VARIANT[point.type]),
            SourceTimestamp=at,
            ServerTimestamp=datetime.now(UTC),
        )
        await self.server.iserver.aspace.write_attribute_value(
            self.nodes[name], ua.AttributeIds.Value, dv
        )

    # -- writes in -----------------------------------------------------------------------

    async def client_write(self, point: Point, item: ua.WriteValue, user: User) -> ua.StatusCode:
        if item.IndexRange:
            return ua.StatusCode(ua.StatusCodes.BadIndexRangeInvalid)
        dv = item.Value
        bad = dv is None or (dv.StatusCode is not None and not dv.StatusCode.is_good())
        raw = None if bad or dv.Value is None else dv.Value.Value
        try:
            result = await self.bridge.writes.write(
                point.name, raw, origin="scada:opcua", by=user.name or ""
            )
        except Exception:
            log.exception("opcua: writing %s failed", point.name)
            self.writes["refused"] += 1
            return ua.StatusCode(ua.StatusCodes.BadInternalError)
        if not result.ok:
            self.writes["refused"] += 1
            code = REFUSED.get(result.code or "", ua.StatusCodes.BadInvalidArgument)
            return ua.StatusCode(code)
        self.writes["accepted"] += 1
        if result.value is not None:
            # Read back at once what is in force; the next refresh confirms it.
            self._pending.pop(point.name, None)
            await self._set(point.name, result.value, datetime.now(UTC))
        return ua.StatusCode(ua.StatusCodes.Good)

    # -- views -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "listening": self.listening,
            "port": self.settings.opcua_port,
            "endpoint": self.endpoint,
            "namespace": NAMESPACE,
            "security": self.security,
            "certificate": str(self.certificate) if self.certificate else None,
            "error": self.error,
            "writes": dict(self.writes),
        }
