"""The three SCADA protocols on loopback, and the calls of clients from other authors
(pyModbusTCP for Modbus, opendnp3 for DNP3) that the SCADA tests make."""

from __future__ import annotations

from typing import Any

import opendnp3 as o
from pyModbusTCP.client import ModbusClient

from factory_mas.bridges.scada.points import Point
from factory_mas.settings import Settings
from tests.support.app import with_scada
from tests.support.dnp3 import MASTER, OUTSTATION, master
from tests.support.net import free_port


def all_protocols(settings: Settings, **scada: object) -> Settings:
    """All three protocols on loopback; the write settings as given, else the defaults."""
    return with_scada(
        settings,
        opcua_enabled=True,
        opcua_port=free_port(),
        modbus_enabled=True,
        modbus_port=free_port(),
        modbus_device_id=1,
        dnp3_enabled=True,
        dnp3_port=free_port(),
        dnp3_outstation_address=OUTSTATION,
        dnp3_master_address=MASTER,
        **scada,
    )


def modbus_write(settings: Settings, point: Point, register: int) -> int | None:
    """None when the write was accepted, else the Modbus exception code it got."""
    client = ModbusClient("127.0.0.1", settings.scada.modbus_port, unit_id=1, timeout=10)
    try:
        if client.write_single_register(point.modbus_address, register):
            return None
        assert client.last_except, f"no answer: {client.last_error_as_txt}"
        return client.last_except
    finally:
        client.close()


def modbus_read(settings: Settings, point: Point) -> list[int] | None:
    client = ModbusClient("127.0.0.1", settings.scada.modbus_port, unit_id=1, timeout=10)
    try:
        if point.modbus_table == "holding":
            return client.read_holding_registers(point.modbus_address, 2)
        return client.read_input_registers(point.modbus_address, 2)
    finally:
        client.close()


async def dnp3_commands(settings: Settings, *commands: tuple[Any, Point, bool]) -> list[Any]:
    """The status of each (command, point, select-before-operate) from one master."""
    statuses = []
    with master(settings.scada.dnp3_port) as m:
        for command, point, select in commands:
            [status] = await m.operate(command, point.dnp3_output, select=select)
            statuses.append(status)
    return statuses


def crob(on: bool) -> Any:
    return o.ControlRelayOutputBlock(o.OperationType.LATCH_ON if on else o.OperationType.LATCH_OFF)
