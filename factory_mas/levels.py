"""Severity levels shared by every agent, and the rule for when a level change is news."""

from __future__ import annotations

from .settings import LEVELS, Level

RANK: dict[str, int] = {level: i for i, level in enumerate(LEVELS)}


def worst(levels: list[Level]) -> Level:
    return max(levels, key=RANK.__getitem__, default="NORMAL")


def should_alert(previous: Level | None, current: Level, minimum: Level) -> bool:
    """Alert when a machine enters the alerting band or gets worse inside it.

    Staying at one level, or easing off, is not news: the orchestrator already holds that
    alarm, and a NORMAL prediction is what clears it. Re-alerting every record would turn
    50 machines at one record a second into an alarm flood.
    """
    if RANK[current] < RANK[minimum]:
        return False
    return previous is None or RANK[previous] < RANK[minimum] or RANK[current] > RANK[previous]
