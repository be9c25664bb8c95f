"""Typed settings: Struct defaults, then settings.toml, then environment variables.

The Structs below carry every default; `settings.toml` at the repository root spells the
same defaults out for operators (a test keeps the two equal). Environment overrides use the
names operators already know (PORT, LOG_LEVEL, CORS_ORIGINS) and FACTORY_<SECTION>_<KEY>
for everything else, e.g. FACTORY_AGENTS_PM_RUL_CRITICAL_HOURS=12.

A bad value raises SettingsError whose one-line message names the key, the value, where it
came from and what is allowed; `python -m factory_mas` prints exactly that line and exits 2.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field
from msgspec import inspect as mi

from .errors import SettingsError

Level = Literal["NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"]
LEVELS: tuple[Level, ...] = ("NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY")

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Probability = Annotated[float, Meta(ge=0, le=1)]


class _Section(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Strict by default: browsers on other origins get no CORS headers unless listed here.
    cors_origins: list[str] = field(default_factory=list)
    # uvicorn's grace for open connections on SIGTERM; the rest of the 5 s budget is ours.
    graceful_shutdown_s: Annotated[float, Meta(ge=0, le=30)] = 3.0
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 10_000_000


class DataSettings(_Section):
    # Every piece of runtime state (database, checkpoints, keys) lives below this folder.
    dir: str = "./data"


class ModelsSettings(_Section):
    # Empty means the artifacts/ folder that ships beside the package.
    dir: str = ""


class HubSettings(_Section):
    # Per subscriber, in hub messages; one message may carry a whole batch of records.
    queue_size: PositiveInt = 256


class InferenceSettings(_Section):
    threads: Annotated[int, Meta(ge=1, le=64)] = 2
    max_batch: Annotated[int, Meta(ge=1, le=100_000)] = 1024
    # How long a lone record waits for company before it is scored alone.
    max_wait_ms: Annotated[float, Meta(ge=0, le=1000)] = 2.0


class ReplaySettings(_Section):
    enabled: bool = True
    # Records per second over all machines; 0 means as fast as the pipeline takes them.
    rate: Annotated[float, Meta(ge=0)] = 50.0
    seed: int = 7
    machines: Annotated[int, Meta(ge=1, le=10_000)] = 50
    step_minutes: PositiveFloat = 1.0
    # A CSV file (the Kaggle dataset's header names) replayed instead of synthetic data.
    csv: str = ""
    loop: bool = True


class AgentSettings(_Section):
    enabled: bool = True
    history_size: Annotated[int, Meta(ge=10, le=1_000_000)] = 10_000
    checkpoint_interval_s: Annotated[float, Meta(ge=0.05)] = 10.0
    # Predictions at or above this level raise an alert when a machine's level changes.
    alert_min_level: Level = "WARNING"
    ws_queue_size: Annotated[int, Meta(ge=1, le=100_000)] = 256


class PmSettings(AgentSettings):
    failure_probability_emergency: Probability = 0.8
    rul_critical_hours: PositiveFloat = 24.0
    rul_warning_hours: PositiveFloat = 72.0
    rul_caution_hours: PositiveFloat = 168.0

    def __post_init__(self) -> None:
        if not self.rul_critical_hours < self.rul_warning_hours < self.rul_caution_hours:
            raise ValueError(
                "rul_critical_hours < rul_warning_hours < rul_caution_hours must hold, got "
                f"{self.rul_critical_hours} / {self.rul_warning_hours} / {self.rul_caution_hours}"
            )


class AgentsSettings(_Section):
    pm: PmSettings = field(default_factory=PmSettings)


class Settings(_Section):
    server: ServerSettings = field(default_factory=ServerSettings)
    data: DataSettings = field(default_factory=DataSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    agents: AgentsSettings = field(default_factory=AgentsSettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)

    @property
    def models_dir(self) -> Path:
        if self.models.dir:
            return Path(self.models.dir)
        return Path(__file__).resolve().parent.parent / "artifacts"


# Names operators know from other tools; everything else is FACTORY_<SECTION>_<KEY>.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "PORT": ("server", "port"),
    "LOG_LEVEL": ("server", "log_level"),
    "CORS_ORIGINS": ("server", "cors_origins"),
}
SETTINGS_FILE_ENV = "FACTORY_SETTINGS"


def _leaves(info: mi.StructType, prefix: tuple[str, ...] = ()):
    for f in info.fields:
        path = (*prefix, f.name)
        if isinstance(f.type, mi.StructType):
            yield from _leaves(f.type, path)
        else:
            yield path, f.type


_TYPE_INFO = mi.type_info(Settings)
LEAVES: dict[tuple[str, ...], mi.Type] = dict(_leaves(_TYPE_INFO))
ENV_NAMES: dict[str, tuple[str, ...]] = {
    **{"FACTORY_" + "_".join(p).upper(): p for p in LEAVES},
    **ENV_ALIASES,
}


def describe(t: mi.Type) -> str:
    """What a setting of this type accepts, in words."""
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(map(str, t.values))
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType | mi.FloatType):
        kind = "an integer" if isinstance(t, mi.IntType) else "a number"
        bounds = [
            f"{op} {v}"
            for op, v in ((">", t.gt), (">=", t.ge), ("<", t.lt), ("<=", t.le))
            if v is not None
        ]
        return kind + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(t, mi.ListType):
        return "a list (comma-separated in an environment variable)"
    if isinstance(t, mi.StrType):
        return "a string"
    return type(t).__name__


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _env_value(raw: str, t: mi.Type) -> Any:
    if isinstance(t, mi.ListType):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(t, mi.LiteralType) and all(isinstance(v, str) for v in t.values):
        # LOG_LEVEL=INFO and log_level="info" are both common spellings.
        for v in t.values:
            if v.lower() == raw.strip().lower():
                return v
    return raw.strip()


def load_settings(
    path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build Settings from defaults, a TOML file and environment overrides.

    `path` defaults to $FACTORY_SETTINGS, else ./settings.toml when it exists.
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = {}
    sources: dict[tuple[str, ...], str] = {}
    file_path = path or env.get(SETTINGS_FILE_ENV)
    if file_path is None and Path("settings.toml").is_file():
        file_path = "settings.toml"
    if file_path is not None:
        try:
            tree = tomllib.loads(Path(file_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"settings file {file_path} does not exist") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"settings file {file_path} is not valid TOML: {exc}") from None
        except OSError as exc:
            raise SettingsError(
                f"settings file {file_path} cannot be read: {exc.strerror}"
            ) from None
        for p in LEAVES:
            sources[p] = str(file_path)
    for name, p in ENV_NAMES.items():
        if name in env:
            _set(tree, p, _env_value(env[name], LEAVES[p]))
            sources[p] = f"environment {name}"
    try:
        return msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_explain(exc, tree, sources)) from None


_UNKNOWN = re.compile(r"unknown field `(?P<name>[^`]+)`")


def _explain(exc: msgspec.ValidationError, tree: dict, sources: dict) -> str:
    text = str(exc)
    reason, _, where = text.partition(" - at `$")
    dotted = where.rstrip("`").lstrip(".")
    path = tuple(dotted.split(".")) if dotted else ()
    if path in LEAVES:
        value = _get(tree, path)
        return (
            f"bad setting {dotted} = {value!r} (from {sources.get(path, 'defaults')}): "
            f"{reason}; allowed: {describe(LEAVES[path])}"
        )
    # The error is about a whole section (an unknown key, a rule between keys, a list
    # item): name every source that set something inside it.
    inside = sorted({src for p, src in sources.items() if p[: len(path)] == path} or {"defaults"})
    origin = f"(from {', '.join(inside)})"
    unknown = _UNKNOWN.search(reason)
    if unknown:
        known = sorted({p[len(path)] for p in LEAVES if p[: len(path)] == path})
        key = ".".join((*path, unknown["name"]))
        value = _get(tree, (*path, unknown["name"]))
        return (
            f"bad setting {key} = {value!r} {origin}: there is no such setting; "
            f"known in [{dotted or 'top level'}]: {', '.join(known)}"
        )
    return f"bad setting [{dotted}] {origin}: {reason}"


def as_toml_tree(settings: Settings) -> dict[str, Any]:
    """Settings as the nested dict settings.toml holds (used by tests and docs)."""
    return msgspec.to_builtins(settings)
