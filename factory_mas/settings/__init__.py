"""Typed settings: Struct defaults, then settings.toml, then environment variables.

The Structs carry every default; `settings.toml` at the repository root spells the same
defaults out for operators (a test keeps the two equal). Environment overrides use the
names operators already know (PORT, LOG_LEVEL, CORS_ORIGINS) and FACTORY_<SECTION>_<KEY>
for everything else, e.g. FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS=12.

A bad value raises SettingsError whose one-line message names the key, the value, where it
came from and what is allowed; `python -m factory_mas` prints exactly that line and exits 2.

`base` holds what every section is built from, `agents` the agents' sections, `playbooks`
the planner's defaults, `sections` the others and the `Settings` tree, `loader` the reading
of file and environment. Components import what they use from here.
"""

from .agents import (
    AgentSettings,
    AgentsSettings,
    AlarmDelay,
    ConditionedSettings,
    CyberSettings,
    EnergySettings,
    PmSettings,
    PpeSettings,
    SafetySettings,
)
from .loader import (
    ENV_ALIASES,
    ENV_NAMES,
    LEAVES,
    SETTINGS_FILE_ENV,
    as_toml_tree,
    describe,
    load_settings,
)
from .playbooks import Playbook
from .sections import (
    ROLES,
    AuthSettings,
    BacklogSettings,
    DataSettings,
    HistorySettings,
    HubSettings,
    InferenceSettings,
    InstanceSettings,
    LimitsSettings,
    ModelsSettings,
    MqttSettings,
    NotifySettings,
    OrchestratorSettings,
    PlannerSettings,
    ReplaySettings,
    Role,
    ScadaSettings,
    ServerSettings,
    Settings,
)

__all__ = [
    "ENV_ALIASES",
    "ENV_NAMES",
    "LEAVES",
    "ROLES",
    "SETTINGS_FILE_ENV",
    "AgentSettings",
    "AgentsSettings",
    "AlarmDelay",
    "AuthSettings",
    "BacklogSettings",
    "ConditionedSettings",
    "CyberSettings",
    "DataSettings",
    "EnergySettings",
    "HistorySettings",
    "HubSettings",
    "InferenceSettings",
    "InstanceSettings",
    "LimitsSettings",
    "ModelsSettings",
    "MqttSettings",
    "NotifySettings",
    "OrchestratorSettings",
    "PlannerSettings",
    "Playbook",
    "PmSettings",
    "PpeSettings",
    "ReplaySettings",
    "Role",
    "SafetySettings",
    "ScadaSettings",
    "ServerSettings",
    "Settings",
    "as_toml_tree",
    "describe",
    "load_settings",
]
