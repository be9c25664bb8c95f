"""The planner's playbooks: what to do for each alarm type, and the ones shipped."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct, field


class Playbook(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    action: Annotated[str, Meta(min_length=1)]
    priority: Annotated[int, Meta(ge=1, le=5)]
    steps: list[str] = field(default_factory=list)


def default_playbooks() -> dict[str, Playbook]:
    return {
        "PPE_VIOLATION": Playbook(
            action="stop_machine",
            priority=1,
            steps=[
                "Stop the machine at the camera's station",
                "Send the shift supervisor to the worker",
                "Restart only once the missing protective equipment is worn",
            ],
        ),
        "FIRE_RISK": Playbook(
            action="evacuate_area",
            priority=1,
            steps=[
                "Trigger the area alarm and evacuate",
                "Cut power to the machine",
                "Call the fire response team",
            ],
        ),
        "ELECTRICAL_HAZARD": Playbook(
            action="isolate_power",
            priority=1,
            steps=[
                "Isolate and lock out the machine's power supply",
                "Keep people clear until an electrician has inspected it",
            ],
        ),
        "MECHANICAL_HAZARD": Playbook(
            action="stop_machine",
            priority=2,
            steps=["Stop the machine", "Inspect guards, bearings and mounts before restart"],
        ),
        "IMMINENT_FAILURE": Playbook(
            action="stop_machine",
            priority=2,
            steps=[
                "Stop the machine in a controlled way",
                "Call maintenance for an immediate inspection",
            ],
        ),
        "DDOS_RISK": Playbook(
            action="isolate_network_segment",
            priority=2,
            steps=[
                "Isolate the machine's network segment",
                "Inform IT security with the indicators",
                "Run the machine locally until the segment is cleared",
            ],
        ),
        "NETWORK_DEGRADATION": Playbook(
            action="inspect_network",
            priority=3,
            steps=["Check the machine's switch port, cabling and recent configuration changes"],
        ),
        "LOW_RUL": Playbook(
            action="schedule_maintenance",
            priority=3,
            steps=[
                "Schedule maintenance in the next shift",
                "Order the wear parts now",
            ],
        ),
        "POWER_ANOMALY": Playbook(
            action="adjust_power_profile",
            priority=4,
            steps=[
                "Compare the machine's draw with its forecast",
                "Adjust the power profile or check for a stuck load",
            ],
        ),
        "IDLE_WASTE": Playbook(
            action="adjust_power_profile",
            priority=4,
            steps=["Switch the idle machine to standby"],
        ),
    }
