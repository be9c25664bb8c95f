"""Severity levels shared by every agent, alarm and point: the domain's own vocabulary."""

from __future__ import annotations

from typing import Literal

Level = Literal["NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"]
LEVELS: tuple[Level, ...] = ("NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY")

RANK: dict[str, int] = {level: i for i, level in enumerate(LEVELS)}


def worst(levels: list[Level]) -> Level:
    return max(levels, key=RANK.__getitem__, default="NORMAL")
