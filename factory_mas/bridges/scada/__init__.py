"""SCADA: OPC UA, Modbus TCP and DNP3 servers, all laid out by one point table."""
