"""Severity levels shared by every agent."""

from __future__ import annotations

from .settings import LEVELS, Level

RANK: dict[str, int] = {level: i for i, level in enumerate(LEVELS)}


def worst(levels: list[Level]) -> Level:
    return max(levels, key=RANK.__getitem__, default="NORMAL")
