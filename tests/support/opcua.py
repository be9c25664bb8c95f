"""A synchronous OPC UA client session (FreeOpcUa, another stack than our server's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opcua import Client as OpcUaClient
from opcua import ua

from factory_mas.bridges.scada.points import NAMESPACE
from factory_mas.settings import Settings


def opcua_session(settings: Settings, key: str | None, work: Callable[[Any, int], Any]) -> Any:
    """Run `work(client, namespace index)` in a python-opcua session, anonymous or
    logged in with `key` as the password."""
    client = OpcUaClient(f"opc.tcp://127.0.0.1:{settings.scada.opcua_port}/factory_mas/", 10)
    if key is not None:
        client.set_user("control-room")
        client.set_password(key)
    client.connect()
    try:
        return work(client, client.get_namespace_index(NAMESPACE))
    finally:
        client.disconnect()


def opcua_write(
    settings: Settings, key: str | None, name: str, value: Any, vt: ua.VariantType
) -> str:
    """The status a write of one point got: "Good" or the Bad... code's name."""

    def work(client: Any, idx: int) -> str:
        node = client.get_node(ua.NodeId(name, idx))
        try:
            node.set_value(ua.DataValue(ua.Variant(value, vt)))
        except ua.UaStatusCodeError as exc:
            return ua.StatusCode(exc.code).name
        return "Good"

    return opcua_session(settings, key, work)
