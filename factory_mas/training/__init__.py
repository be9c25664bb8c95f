"""`python -m factory_mas train`: rebuild every model under artifacts/, seeded and repeatable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .pm import train_pm

TRAINERS = {"pm_agent": train_pm}


def train_all(out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    return {
        agent: trainer(out_dir) for agent, trainer in TRAINERS.items() if not only or agent in only
    }
