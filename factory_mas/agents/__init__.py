"""The ML agents. Each lives in its own package: model.py, logic.py, agent.py."""

from __future__ import annotations

from ..settings import Settings
from .base import AgentContext, BaseAgent
from .cyber.agent import CyberAgent
from .energy.agent import EnergyAgent
from .pm.agent import PmAgent
from .ppe.agent import PpeAgent
from .safety.agent import SafetyAgent


def build_agents(settings: Settings, ctx: AgentContext) -> list[BaseAgent]:
    """Every agent, in the order they start (and the reverse of how they stop)."""
    a = settings.agents
    return [
        PmAgent(a.pm, ctx),
        EnergyAgent(a.energy, ctx),
        CyberAgent(a.cyber, ctx),
        SafetyAgent(a.safety, ctx),
        PpeAgent(a.ppe, ctx),
    ]
