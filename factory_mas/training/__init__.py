"""`python -m factory_mas train`: rebuild every model under artifacts/, seeded and repeatable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cyber import train_cyber
from .energy import train_energy
from .pm import train_pm
from .ppe import train_ppe
from .safety import train_safety

TRAINERS = {
    "pm_agent": train_pm,
    "energy_agent": train_energy,
    "cyber_agent": train_cyber,
    "safety_agent": train_safety,
    "ppe_agent": train_ppe,
}


def train_all(out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    return {
        agent: trainer(out_dir) for agent, trainer in TRAINERS.items() if not only or agent in only
    }
