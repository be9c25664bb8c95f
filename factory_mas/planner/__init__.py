"""Alarms in, action plans out: playbooks from settings, correlation, an external planner."""

from .service import Planner

__all__ = ["Planner"]
