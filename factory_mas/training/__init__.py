"""`python -m factory_mas train`: rebuild every model under artifacts/, seeded and repeatable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..agents.registry import AGENTS, Trainer

# Imported here, not by the registry: serving never loads scikit-learn or TensorFlow.
TRAINERS: dict[str, Trainer] = {e.agent_id: e.load_trainer() for e in AGENTS if e.trainer}


def train_all(out_dir: Path, only: list[str] | None = None) -> dict[str, Any]:
    return {
        agent: trainer(out_dir) for agent, trainer in TRAINERS.items() if not only or agent in only
    }
