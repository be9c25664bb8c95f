"""What the SCADA bridge needs of the plant: a view that its points read, and a control
that writes from control systems go through.

The bridge and its protocol servers depend on these two protocols rather than on the
application holding the components, so the same servers run against the app's plant
(an adapter over its real components, in factory_mas/components.py) or a test's fake.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ...agents.points import Value
from ...configure.requests import ConfigResult
from ...errors import FactoryError


class Refused(FactoryError):
    """The plant would not do what a write asked (no such agent or alarm, or a state that
    does not allow it); the message says why, for the audit trail and the client."""


class AgentView(Protocol):
    """One agent as the points show it (a BaseAgent is one)."""

    @property
    def agent_id(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def settings(self) -> Any:
        """Its settings Struct: the setting points read their fields by name."""

    def health(self) -> dict[str, Any]: ...


class PlantView(Protocol):
    """The state behind the system and agent points, read on the event loop."""

    @property
    def ready(self) -> bool:
        """Every component has started."""

    @property
    def broker_connected(self) -> bool: ...

    @property
    def agents(self) -> Sequence[AgentView]:
        """The agents this instance runs: none on a control instance."""

    @property
    def alarm_flood(self) -> bool: ...

    def alarm_counts(self) -> Mapping[str, Any]:
        """{"active": n, "unacknowledged": n, "by_level": {level: n}}, as system-state and
        /metrics count them."""


class PlantControl(Protocol):
    """The changes a SCADA write may make; each raises Refused when it cannot be made."""

    async def change_setting(
        self, agent_id: str, key: str, value: Value, *, by: str, origin: str
    ) -> ConfigResult:
        """One run-time setting through the configurator, which checks, applies, keeps and
        audits it; its answer says whether it was accepted."""

    async def set_running(self, agent_id: str, running: bool) -> None: ...

    async def ack_alarm(self, alarm_id: int, *, by: str, note: str) -> None: ...
