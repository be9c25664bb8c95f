"""The topic catalogue: every hub and MQTT topic factory_mas publishes or listens to.

The hub and the MQTT bridge share these names, so a topic means the same thing in
process and on the broker. Filters use MQTT wildcards: `+` is one level, `#` the rest.
These are wire names (DESIGN.md and docs/architecture.md): renaming one breaks every
client that subscribes to it.
"""

from __future__ import annotations

# Telemetry: one batch per message, on the plain topic or one topic per machine.
TELEMETRY = "sensors/factory/data"
TELEMETRY_FILTER = "sensors/factory/data/#"
TELEMETRY_PER_MACHINE = "sensors/factory/data/+"
# Records refused by validation, with their reasons.
REJECTED = "sensors/factory/rejected"
# Camera frames for the PPE agent, one topic per camera.
PPE_FRAMES_FILTER = "sensors/factory/ppe/+"

# Every agent publishes its scores on predictions/<agent_id> and its alerts on
# alerts/<agent_id>.
PREDICTIONS_FILTER = "predictions/+"
ALERTS_FILTER = "alerts/+"
# History keeps whatever is published under predictions/.
PREDICTIONS_TREE = "predictions/#"
# The orchestrator and the hub's protection take the whole alerts/ tree: an alert a
# gateway publishes one level deeper must still become an alarm.
ALERTS_TREE = "alerts/#"

DECISIONS = "orchestrator/decisions"
ALARMS = "orchestrator/alarms"
SHIFT_SUMMARY = "backlog/shift_summary"
BACKLOG_TREE = "backlog/#"

# Settings changes: a request on config/<agent_id>, its answer on config/<agent_id>/result.
CONFIG_REQUESTS_FILTER = "config/+"  # one level: our answers do not come back as requests
CONFIG_TREE = "config/#"
CONFIG_RESULTS_FILTER = "config/+/result"


def ppe_frames(camera_id: str) -> str:
    return f"sensors/factory/ppe/{camera_id}"


def predictions(agent_id: str) -> str:
    return f"predictions/{agent_id}"


def alerts(agent_id: str) -> str:
    return f"alerts/{agent_id}"


def config_result(agent_id: str) -> str:
    return f"config/{agent_id}/result"


# The hub never drops these for a slow subscriber: alarms and decisions are never lost.
PROTECTED_FILTERS = (ALERTS_TREE, DECISIONS, ALARMS, CONFIG_TREE, BACKLOG_TREE)
