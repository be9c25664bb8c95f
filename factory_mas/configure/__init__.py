"""Run-time setting changes: config/<agent_id> in, validated, audited, answered.

A request is a JSON object, from the MQTT bridge (raw bytes), a SCADA bridge or REST (a
dict):

    {"set": {"rul_critical_hours": 36}, "by": "j.doe", "id": "req-17"}
    {"reset": true}          # back to settings.toml and the environment

The agent's settings Struct is the validator: the current settings, updated with "set",
are converted to the agent's settings type, so types, bounds and the cross-checks of
__post_init__ apply exactly as at start-up. Settings an agent reads only when it is built
or started (BaseAgent.restart_only) are refused with a pointer to settings.toml.

An accepted change is swapped in between two batches (BaseAgent.apply_settings), saved as
the checkpoint "config:<agent_id>" in the same transaction as its audit row, and applied
again at the next start, so a restart does not silently undo what an operator set from
SCADA. Every request, accepted or not, leaves a row in config_changes and an answer on
config/<agent_id>/result.
"""

from .service import Configurator

__all__ = ["Configurator"]
