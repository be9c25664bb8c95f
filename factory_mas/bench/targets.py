"""A bench target: a figure, the goal it is held to, and whether it got there."""

from __future__ import annotations

from typing import Any


def target(value: float, goal: float, at_least: bool) -> dict[str, Any]:
    """`at_least`: the figure must reach the goal (a rate); otherwise stay under it."""
    return {
        "value": value,
        "target": goal,
        "at_least": at_least,
        "met": value >= goal if at_least else value <= goal,
    }


def verdict(t: dict[str, Any]) -> str:
    return "met" if t["met"] else "MISSED"
