"""The one list of agents: everything that names every agent follows from it.

An entry says which class an agent is (its agent_id, slug and input topic are class
attributes), what its results are, what SCADA points it declares and what trains its model.
From the registry follow: the agents an instance builds and the order they start in
(build_agents), their routes under /api/<slug> and the stored history a control instance
serves (components.py), their /metrics lines (one per running agent), the SCADA table and its
values (bridges/scada), `python -m factory_mas train` (training/) and the benches.

Settings stay one explicit field per agent in AgentsSettings, named after the slug
(`settings.agents.<slug>`, the `[agents.<slug>]` table of settings.toml), so a type checker
knows `settings.agents.pm` is PmSettings; `settings_of` finds it by that name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .. import topics
from ..errors import SettingsError, TrainingError
from ..settings import AgentSettings, Settings
from .base import AgentContext, BaseAgent
from .cyber import points as cyber_points
from .cyber.agent import CyberAgent
from .cyber.result import CyberResult
from .energy import points as energy_points
from .energy.agent import EnergyAgent
from .energy.result import EnergyResult
from .pm import points as pm_points
from .pm.agent import PmAgent
from .pm.result import PmResult
from .points import ScadaPoints
from .ppe import points as ppe_points
from .ppe.agent import PpeAgent
from .ppe.result import PpeResult
from .result import AgentResult
from .safety import points as safety_points
from .safety.agent import SafetyAgent
from .safety.result import SafetyResult

R = TypeVar("R", bound=AgentResult)
Trainer = Callable[[Path], dict[str, Any]]


@dataclass(frozen=True)
class AgentEntry(Generic[R]):
    agent_type: type[BaseAgent]
    result_type: type[R]
    points: ScadaPoints[R]
    # "module:function" of the trainer that rebuilds the model under artifacts/: a name,
    # not an import, so that serving never loads scikit-learn or TensorFlow.
    trainer: str = ""
    # "module:function" of the trainer on a plant's own data (training/plant.py): for the
    # telemetry agents (data: PlantData, out_dir, options) -> entry; for ppe, its photos
    # (images_dir, labels_csv, out_dir, options) -> entry.
    plant_trainer: str = ""

    @property
    def agent_id(self) -> str:
        return self.agent_type.agent_id

    @property
    def slug(self) -> str:
        return self.agent_type.slug

    @property
    def reads_telemetry(self) -> bool:
        """Scores telemetry records (not camera frames): what the benches feed."""
        return self.agent_type.input_filter == topics.TELEMETRY_FILTER

    def settings_of(self, settings: Settings) -> AgentSettings:
        section: AgentSettings | None = getattr(settings.agents, self.slug, None)
        if section is None:
            raise SettingsError(
                f"{self.agent_id} has no settings section agents.{self.slug}: add the field "
                f"{self.slug} to AgentsSettings (factory_mas/settings/agents.py)"
            )
        return section

    def build(self, settings: Settings, ctx: AgentContext) -> BaseAgent:
        return self.agent_type(self.settings_of(settings), ctx)

    def load_trainer(self) -> Trainer:
        module, _, name = self.trainer.partition(":")
        trainer: Trainer = getattr(importlib.import_module(module), name)
        return trainer

    def load_plant_trainer(self) -> Callable[..., dict[str, Any]]:
        """The plant trainer, or TrainingError when this agent has none (yet)."""
        module, _, name = self.plant_trainer.partition(":")
        try:
            trainer: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise TrainingError(
                f"{self.agent_id} cannot be trained on plant data yet "
                f"({self.plant_trainer or 'no plant trainer'}: {exc})"
            ) from None
        return trainer


Registry = tuple[AgentEntry[Any], ...]

# In the order the agents start (and the reverse of how they stop), which is also the
# order of their blocks in the SCADA table: a new agent goes at the end.
AGENTS: Registry = (
    AgentEntry(
        PmAgent,
        PmResult,
        pm_points.POINTS,
        "factory_mas.training.pm:train_pm",
        "factory_mas.training.pm:train_pm_plant",
    ),
    AgentEntry(
        EnergyAgent,
        EnergyResult,
        energy_points.POINTS,
        "factory_mas.training.energy:train_energy",
        "factory_mas.training.energy:train_energy_plant",
    ),
    AgentEntry(
        CyberAgent,
        CyberResult,
        cyber_points.POINTS,
        "factory_mas.training.cyber:train_cyber",
        "factory_mas.training.cyber:train_cyber_plant",
    ),
    AgentEntry(
        SafetyAgent,
        SafetyResult,
        safety_points.POINTS,
        "factory_mas.training.safety:train_safety",
        "factory_mas.training.safety:train_safety_plant",
    ),
    AgentEntry(
        PpeAgent,
        PpeResult,
        ppe_points.POINTS,
        "factory_mas.training.ppe:train_ppe",
        "factory_mas.training.ppe:train_ppe_images",
    ),
)


def build_agents(
    settings: Settings, ctx: AgentContext, registry: Registry = AGENTS
) -> list[BaseAgent]:
    """Every agent of the registry, in the order they start."""
    return [entry.build(settings, ctx) for entry in registry]
