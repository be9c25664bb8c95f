"""The ML agents. Each lives in its own package: model.py, logic.py, agent.py, its typed
result (result.py) and its SCADA points (points.py); registry.py lists them all."""

from __future__ import annotations

from .registry import AGENTS, AgentEntry, Registry, build_agents

__all__ = ["AGENTS", "AgentEntry", "Registry", "build_agents"]
