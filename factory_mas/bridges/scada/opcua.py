"""The OPC UA server (asyncua): every point of the table as a variable a client can read,
subscribe to and (where writable) write.

Layout: namespace http://6g-mas-factory.com, Objects/MultiAgentSystem/<group>/<browse name>,
one folder per point group (SystemStatus, PredictiveMaintenance, ..., Machines). A point's
NodeId is its table name (`ns=<idx>;s=pm_agent.rul_critical_hours`), its data type Boolean,
Int32 or Double. Double points are AnalogItemType variables (Part 8) with their EURange and,
where the table has a unit, EngineeringUnits (UNECE code); Int32 points with a range carry
EURange too. Values get the time they were computed as SourceTimestamp.
Server_ServerStatus_BuildInfo names factory_mas (vendor, product, version) as `identity`
says, not the library.

Users are API keys: a client logs in with a user name of its choice (only logged; the
key's own name is what the audit trail records, as over HTTP) and an API key as password,
and acts with the key's role. Anonymous sessions are viewers: they read and subscribe and
never write. A wrong or revoked key is refused at login (BadUserAccessDenied). asyncua
checks logins synchronously, so the active keys' hashes are kept in memory and re-read
every auth CACHE_S (the time a revoked key may still work over HTTP too), and soon after a
login with a key not yet known. User certificate tokens are not offered: they carry no
role.

Client writes do not go to asyncua's address space: the server's AttributeService is
replaced by one that sends a write to a point's Value through `Writes.write` (the checks,
roles and audit trail every other way in uses, with the session's peer address) and
answers Good only when it was accepted. A value whose variant type is not the point's data
type is refused (BadTypeMismatch): an Int32 is not silently made a Double. A write to a
node that does not exist gets BadNodeIdUnknown. A point advertises CurrentWrite in
AccessLevel only when it is writable and scada.writes_enabled is on, and in UserAccessLevel
only when the session's role may also write it; a write to any other point still reaches
`Writes.write`, so the refusal (BadNotWritable, BadUserAccessDenied) is audited like any
other. Writes to anything else (folders, properties, the standard nodes) keep asyncua's
own access rules, under which no client session is asyncua's Admin.

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
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.address_space import AttributeService
from asyncua.server.internal_session import InternalSession
from asyncua.server.user_managers import UserManager

from ...auth import keys
from ...auth.keys import Principal, Role
from ...auth.middleware import CACHE_S
from ...errors import StoreError
from ...tasks import cancel
from . import identity
from .live import peer_text
from .points import NAMESPACE, Point

if TYPE_CHECKING:
    from ...store import Store
    from .live import Value
    from .service import ScadaBridge

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:6g-mas-factory.com:factory_mas"
ROOT_FOLDER = "MultiAgentSystem"
VARIANT = {"Boolean": ua.VariantType.Boolean, "Int32": ua.VariantType.Int32,
           "Float": ua.VariantType.Double}  # fmt: skip
PYTHON = {"Boolean": bool, "Int32": int, "Float": float}
# A written variant type as the table names types, for the type check in `Writes`.
TYPED_AS = {vt: name for name, vt in VARIANT.items()}
# UNECE Recommendation 20 codes, as OPC UA Part 8 wants them in EUInformation.
UNITS = {"%": ("P1", "percent"), "h": ("HUR", "hour"), "kW": ("KWT", "kilowatt")}
UNECE_URI = "http://www.opcfoundation.org/UA/units/un/cefact"
REFUSED = {
    "not_found": ua.StatusCodes.BadNodeIdUnknown,
    "read_only": ua.StatusCodes.BadNotWritable,
    "forbidden": ua.StatusCodes.BadUserAccessDenied,
    "wrong_type": ua.StatusCodes.BadTypeMismatch,
    "out_of_range": ua.StatusCodes.BadOutOfRange,
    "rejected": ua.StatusCodes.BadInvalidArgument,
    "unavailable": ua.StatusCodes.BadResourceUnavailable,
}
_ADMIN = User(role=UserRole.Admin)  # asyncua's default for its own internal writes
_ANONYMOUS = User(role=UserRole.Anonymous)  # a session's user until it is activated
CERT_FILE, KEY_FILE = "opcua-cert.der", "opcua-key.pem"
# A login with a key not in memory re-reads the keys, at most this often: a key made a
# moment ago works on the client's next try, and made-up keys cannot keep the store busy.
KEYS_REREAD_MIN_S = 1.0
CURRENT_READ, CURRENT_WRITE = ua.AccessLevel.CurrentRead.mask, ua.AccessLevel.CurrentWrite.mask


# asyncua annotates its fields with marker subclasses (UInt32, Int16, String, DateTime) that
# pick the binary encoding, yet takes plain ints, strings and datetimes, as its own code
# passes them. The gap in its typing stays in these three places.
def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(code)  # type: ignore[arg-type]


def _node_id(name: str, idx: int) -> ua.NodeId:
    return ua.NodeId(name, idx)  # type: ignore[arg-type]


def _data_value(variant: ua.Variant, at: datetime) -> ua.DataValue:
    now = datetime.now(UTC)
    return ua.DataValue(variant, SourceTimestamp=at, ServerTimestamp=now)  # type: ignore[arg-type]


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


@dataclass
class _Caller(User):
    """An activated session's user: asyncua's role is User for every client (reads,
    subscriptions, writes it checks itself; never its Admin, which may add and delete
    nodes), ours is the API key's, or viewer for Anonymous."""

    key: Principal | None = None

    @property
    def our_role(self) -> Role:
        return self.key.role if self.key is not None else "viewer"


class _KeyUsers(UserManager):
    """Logins checked against the active API keys, held in memory (see the module doc)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.known: dict[str, Principal] = {}
        self.read_at = 0.0
        self.error: str | None = None
        self.stale = asyncio.Event()

    async def refresh(self) -> None:
        try:
            self.known = await self.store.read(keys.active)
        except StoreError as exc:  # the keys known before keep working
            if self.error is None:
                log.error("opcua: API keys not read, logins use the last known: %s", exc)
            self.error = str(exc)
        else:
            self.error = None
        self.read_at = time.monotonic()

    async def follow(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stale.wait(), CACHE_S)
            self.stale.clear()
            await asyncio.sleep(max(0.0, self.read_at + KEYS_REREAD_MIN_S - time.monotonic()))
            await self.refresh()

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        # `certificate` is the secure channel's (the client application's), not a user's:
        # user certificate tokens are not offered (set_identity_tokens), so asyncua
        # refuses them before asking here.
        if username is None and password is None:
            return _Caller(role=UserRole.User, name="anonymous")
        principal = self.known.get(keys.hash_key(password)) if isinstance(password, str) else None
        if principal is None:
            self.stale.set()
            # Never the password: a wrong one may be a real password mistyped.
            log.warning("opcua: refused login %r: the password is not an active API key",
                        username)  # fmt: skip
            return None
        return _Caller(role=UserRole.User, name=principal.name, key=principal)


# The session a read or write is served for: asyncua hands the AttributeService only the
# user, and the audit trail wants the session's peer address.
_SESSION: ContextVar[InternalSession | None] = ContextVar("opcua_session", default=None)


class _Session(InternalSession):
    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        token = _SESSION.set(self)
        try:
            return await super().read(params)
        finally:
            _SESSION.reset(token)

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        token = _SESSION.set(self)
        try:
            return await super().write(params)
        finally:
            _SESSION.reset(token)


class _PointWrites(AttributeService):
    """asyncua's AttributeService with client writes to a point's Value routed to us, and
    each point's UserAccessLevel told for the session that reads it."""

    def __init__(self, aspace: Any, owner: OpcUaServer) -> None:
        super().__init__(aspace)
        self.owner = owner

    def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        results = super().read(params)
        for i, item in enumerate(params.NodesToRead):
            point = self.owner.by_node.get(item.NodeId)
            if point is not None and item.AttributeId == ua.AttributeIds.UserAccessLevel:
                writable = self.owner.may_write(point, _caller())
                level = CURRENT_READ | (CURRENT_WRITE if writable else 0)
                results[i] = ua.DataValue(ua.Variant(level, ua.VariantType.Byte))
        return results

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        results: list[ua.StatusCode] = []
        for item in params.NodesToWrite:
            point = self.owner.by_node.get(item.NodeId)
            if point is None and item.NodeId not in self._aspace:
                # asyncua checks a client's access level first and calls it denied.
                results.append(_status(ua.StatusCodes.BadNodeIdUnknown))
            elif point is None or item.AttributeId != ua.AttributeIds.Value:
                single = ua.WriteParameters(NodesToWrite=[item])
                results += await super().write(single, user=user)
            else:
                results.append(await self.owner.client_write(point, item, _caller()))
        return results


class Who(NamedTuple):
    role: Role
    name: str
    peer: str


def _caller() -> Who:
    """Who the session being served is; our own process reads as a viewer."""
    session = _SESSION.get()
    if session is None:
        return Who("viewer", "factory_mas", "internal")
    user = session.user
    if isinstance(user, _Caller):
        return Who(user.our_role, user.name or "anonymous", peer_text(session.name))
    return Who("viewer", "anonymous", peer_text(session.name))


class OpcUaServer:
    name = "opcua"

    def __init__(self, bridge: ScadaBridge) -> None:
        self.bridge = bridge
        self.settings = bridge.settings
        self.data_dir = Path(bridge.data_dir)
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
        self.users = _KeyUsers(bridge.store)
        self._pending: dict[str, tuple[Value, datetime]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._keys_task: asyncio.Task | None = None

    # -- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> OpcUaServer:
        try:
            server = await self._build()
        except Exception as exc:  # a broken certificate dir etc. must not stop the process
            log.exception("opcua: setting up the server failed")
            self.error = f"setup failed: {exc}"
            return self
        await self.users.refresh()
        try:
            await server.start()
        except OSError as exc:  # port in use, no permission, unknown host
            self.error = f"cannot listen on {self.settings.host}:{self.settings.opcua_port}: {exc}"
            log.error("opcua: %s; OPC UA is off, everything else keeps running", self.error)
            return self
        self.server, self.listening = server, True
        self._task = asyncio.create_task(self._apply_updates(), name="opcua-updates")
        self._keys_task = asyncio.create_task(self.users.follow(), name="opcua-keys")
        log.info("opcua: listening on %s (security %s)", self.endpoint, self.security)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel(self._task)
        await cancel(self._keys_task)
        self._task = self._keys_task = None
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
        server = Server(user_manager=self.users)
        await server.init()
        # init() has written asyncua's own BuildInfo (FreeOpcUa, "1.0pre").
        version = identity.VERSION  # also the build number: releases carry no other
        await server.set_build_info(
            NAMESPACE,
            identity.VENDOR,
            identity.PRODUCT_NAME,
            version,
            version,
            identity.build_date(),
        )
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        server.set_endpoint(self.endpoint)
        server.set_server_name("factory_mas OPC UA server")
        await server.set_application_uri(APPLICATION_URI)
        server.product_uri = NAMESPACE
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
            _node_id(ROOT_FOLDER, idx), ua.QualifiedName(ROOT_FOLDER, idx)
        )
        folders: dict[str, Any] = {}
        for point in self.bridge.points:
            folder = folders.get(point.group)
            if folder is None:
                folder = await root.add_folder(
                    _node_id(f"{ROOT_FOLDER}/{point.group}", idx),
                    ua.QualifiedName(point.group, idx),
                )
                folders[point.group] = folder
            await self._add_variable(folder, point, idx)
        # Client writes from now on go through the point table's checks and audit.
        iserver = server.iserver
        iserver.attribute_service = _PointWrites(iserver.aspace, self)

        def create_session(
            name: Any, user: User = _ANONYMOUS, external: bool = False
        ) -> InternalSession:
            return _Session(iserver, iserver.aspace, iserver.subscription_service, name,
                            user=user, external=external)  # fmt: skip

        iserver.create_session = create_session  # type: ignore[method-assign]
        return server

    async def _add_variable(self, folder: Any, point: Point, idx: int) -> None:
        vt = VARIANT[point.type]
        node_id = _node_id(point.name, idx)
        var = await folder.add_variable(node_id, ua.QualifiedName(point.browse_name, idx),
                                        PYTHON[point.type](0), vt)  # fmt: skip
        await var.write_attribute(
            ua.AttributeIds.Description,
            ua.DataValue(ua.Variant(ua.LocalizedText(point.description))),
        )
        if point.type == "Float":
            definition = ua.ObjectIds.HasTypeDefinition
            await var.delete_reference(
                ua.ObjectIds.BaseDataVariableType, definition, bidirectional=False
            )
            await var.add_reference(ua.ObjectIds.AnalogItemType, definition, bidirectional=False)
        if point.unit:
            await var.add_property(
                _node_id(f"{point.name}.EngineeringUnits", idx),
                ua.QualifiedName("EngineeringUnits", 0),
                eu_information(point.unit),
                datatype=ua.ObjectIds.EUInformation,
            )
        if point.eu_range is not None:
            low, high = point.eu_range
            await var.add_property(
                _node_id(f"{point.name}.EURange", idx),
                ua.QualifiedName("EURange", 0),
                ua.Range(Low=float(low), High=float(high)),
                datatype=ua.ObjectIds.Range,
            )
        if point.writable and self.settings.writes_enabled:
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
        dv = _data_value(ua.Variant(PYTHON[point.type](value), VARIANT[point.type]), at)
        await self.server.iserver.aspace.write_attribute_value(
            self.nodes[name], ua.AttributeIds.Value, dv
        )

    # -- writes in -----------------------------------------------------------------------

    def may_write(self, point: Point, caller: Who) -> bool:
        return self.bridge.writes.may_write(point, caller.role)

    async def client_write(self, point: Point, item: ua.WriteValue, caller: Who) -> ua.StatusCode:
        if item.IndexRange:
            return _status(ua.StatusCodes.BadIndexRangeInvalid)
        dv = item.Value
        bad = dv is None or (dv.StatusCode is not None and not dv.StatusCode.is_good())
        variant = None if bad else dv.Value
        raw, typed_as = None, None
        if variant is not None:
            raw, vt = variant.Value, variant.VariantType
            typed_as = TYPED_AS.get(vt, vt.name)
        role, name, peer = caller
        try:
            result = await self.bridge.writes.write(
                point.name, raw, "scada:opcua", peer=peer, role=role, by=name, typed_as=typed_as
            )
        except Exception:
            log.exception("opcua: writing %s failed", point.name)
            self.writes["refused"] += 1
            return _status(ua.StatusCodes.BadInternalError)
        if not result.ok:
            self.writes["refused"] += 1
            code = REFUSED.get(result.code or "", ua.StatusCodes.BadInvalidArgument)
            return _status(code)
        self.writes["accepted"] += 1
        if result.value is not None:
            # Read back at once what is in force; the next refresh confirms it.
            self._pending.pop(point.name, None)
            await self._set(point.name, result.value, datetime.now(UTC))
        return _status(ua.StatusCodes.Good)

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
