"""Bridges between the hub and the world outside: MQTT brokers, SCADA protocols."""
