"""Reading the settings: Struct defaults, then the TOML file, then environment variables,
with one-line errors that name the key, the value and where it came from."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

from ..errors import SettingsError
from .sections import Settings

# Names operators know from other tools; everything else is FACTORY_<SECTION>_<KEY>.
ENV_ALIASES: dict[str, tuple[str, ...]] = {
    "PORT": ("server", "port"),
    "DATABASE_URL": ("data", "database_url"),
    "LOG_LEVEL": ("server", "log_level"),
    "LOG_FORMAT": ("server", "log_format"),
    "CORS_ORIGINS": ("server", "cors_origins"),
    "FORWARDED_ALLOW_IPS": ("server", "forwarded_allow_ips"),
    "MQTT_BROKER": ("mqtt", "broker"),
    "MQTT_PORT": ("mqtt", "port"),
    "MQTT_USERNAME": ("mqtt", "username"),
    "MQTT_PASSWORD": ("mqtt", "password"),
    "PLANNER_URL": ("planner", "url"),
    "GEMINI_API_KEY": ("backlog", "gemini_api_key"),
    "TWILIO_ACCOUNT_SID": ("notify", "twilio_account_sid"),
    "TWILIO_AUTH_TOKEN": ("notify", "twilio_auth_token"),
    "TWILIO_FROM_NUMBER": ("notify", "twilio_from_number"),
    "TWILIO_TO_NUMBER": ("notify", "twilio_to_number"),
}
SETTINGS_FILE_ENV = "FACTORY_SETTINGS"


def _leaves(
    info: mi.Type, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], mi.Type]]:
    if not isinstance(info, mi.StructType):
        yield prefix, info
        return
    for f in info.fields:
        yield from _leaves(f.type, (*prefix, f.name))


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
    if isinstance(t, mi.DictType):
        if isinstance(t.value_type, mi.StructType):
            return "a table of tables (in the settings file; no environment form)"
        if isinstance(t.value_type, mi.ListType):
            return "a table (key=a|b pairs, comma-separated, in an environment variable)"
        return "a table (key=value pairs, comma-separated, in an environment variable)"
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
    if isinstance(t, mi.DictType):
        pairs = (item.partition("=") for item in raw.split(",") if item.strip())
        if isinstance(t.value_type, mi.ListType):
            # key=a|b: a list per key (orchestrator.suppress_by).
            return {
                key.strip(): [v.strip() for v in value.split("|") if v.strip()]
                for key, _, value in pairs
            }
        return {key.strip(): value.strip() for key, _, value in pairs}
    if isinstance(t, mi.LiteralType):
        # LOG_LEVEL=INFO and log_level="info" are both common spellings.
        for v in t.values:
            if isinstance(v, str) and v.lower() == raw.strip().lower():
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
    # An item of a list or table ("cors_origins[0]") is blamed on its setting.
    dotted = re.sub(r"\[[^\]]*\]", "", dotted)
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
