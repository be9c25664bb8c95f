"""Run-time setting requests: their shape, their answer, and the rules that judge them.

Pure: nothing here does I/O. The agent's settings Struct is the validator: the current
settings, updated with "set", are converted to the agent's settings type, so types,
bounds and the cross-checks of __post_init__ apply exactly as at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct
from msgspec import inspect as mi

from ..http.api import ApiError, decode_json
from ..settings import AgentSettings, describe

REQUEST_MAX_BYTES = 65_536  # a settings change is a few hundred bytes
# What the audit keeps of a payload that is not a JSON object.
RAW_KEPT_CHARS = 2_000
CHECKPOINT_FORMAT = 1

Text = Annotated[str, Meta(min_length=1, max_length=200)]


def checkpoint_name(agent_id: str) -> str:
    return f"config:{agent_id}"


class ConfigRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    set: dict[str, Any] = msgspec.field(default_factory=dict)
    reset: bool = False
    by: Text | None = None
    id: Annotated[str, Meta(max_length=200)] | int | None = None


class ConfigResult(Struct, kw_only=True):
    """The answer to one request, published on config/<agent_id>/result."""

    target: str
    accepted: bool
    at: datetime
    id: str | int | None = None
    origin: str = ""
    by: str = ""
    # Setting -> [old, new], for what actually changed.
    changed: dict[str, list[Any]] = msgspec.field(default_factory=dict)
    # Why it was refused: a short code for programs, a sentence for people, and the
    # setting to blame when there is one.
    code: str | None = None
    error: str | None = None
    field: str | None = None
    # The agent's settings in force after the request, and which of them differ from
    # settings.toml / the environment. None for an unknown target.
    settings: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None


class SavedOverrides(Struct, kw_only=True):
    format: int = CHECKPOINT_FORMAT
    overrides: dict[str, Any] = msgspec.field(default_factory=dict)
    at: float = 0.0
    by: str = ""
    origin: str = ""


class Refused(Exception):
    """A request that cannot be applied; becomes a rejected result."""

    def __init__(self, code: str, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.code, self.error, self.field = code, error, field


def field_types(settings_type: type[AgentSettings]) -> dict[str, mi.Type]:
    info = mi.type_info(settings_type)
    assert isinstance(info, mi.StructType)
    return {f.name: f.type for f in info.fields}


def merge(
    base: AgentSettings,
    overrides: dict[str, Any],
    restart_only: Iterable[str],
    current: AgentSettings | None = None,
    requested: Iterable[str] = (),
    who: str = "",
) -> AgentSettings:
    """`base` (the file/env settings) with `overrides` on top, validated as a whole.

    Raises Refused naming the setting(s) at fault. `current` is what runs now: a
    restart-only setting may be repeated at its current value, not changed. `requested`
    are the keys the request set (blamed first), `who` the agent, for messages.
    """
    settings_type = type(base)
    types = field_types(settings_type)
    unknown = sorted(k for k in overrides if k not in types)
    if unknown:
        raise Refused(
            "unknown_setting",
            f"{who or settings_type.__name__} has no setting {', '.join(unknown)}; "
            f"known: {', '.join(types)}",
            unknown[0],
        )
    merged = msgspec.to_builtins(base) | overrides
    try:
        new = msgspec.convert(merged, settings_type)
    except msgspec.ValidationError as exc:
        raise _invalid(exc, overrides, types, [*requested, *overrides]) from None
    current = current or base
    fixed = sorted(k for k in restart_only if k in types and getattr(new, k) != getattr(current, k))
    if fixed:
        raise Refused(
            "restart_required",
            f"{', '.join(fixed)} {'needs' if len(fixed) == 1 else 'need'} a restart: set "
            f"{'it' if len(fixed) == 1 else 'them'} in settings.toml (or the environment) "
            "and restart factory_mas",
            fixed[0],
        )
    return new


def _invalid(
    exc: msgspec.ValidationError,
    overrides: dict[str, Any],
    types: dict[str, mi.Type],
    suspects: list[str],
) -> Refused:
    text = str(exc)
    reason, sep, where = text.partition(" - at `$.")
    if sep:
        key = where.rstrip("`").split(".")[0].split("[")[0]
        if key in types:
            return Refused(
                "invalid_value",
                f"{key} = {overrides.get(key)!r}: {reason}; allowed: {describe(types[key])}",
                key,
            )
    # A rule between settings (__post_init__): its message names them all; blame the
    # first one this request set.
    named = [k for k in suspects if re.search(rf"\b{k}\b", text)]
    return Refused("invalid_value", text, named[0] if named else None)


def differences(a: AgentSettings, b: AgentSettings) -> dict[str, list[Any]]:
    old, new = msgspec.to_builtins(a), msgspec.to_builtins(b)
    return {k: [old[k], new[k]] for k in old if old[k] != new[k]}


def overrides_of(base: AgentSettings, settings: AgentSettings) -> dict[str, Any]:
    """The settings that differ from the file/env ones, as JSON builtins."""
    return {k: new for k, (_, new) in differences(base, settings).items()}


@dataclass(frozen=True)
class Received:
    """A request as received: the decoded JSON, or the text when it was not JSON."""

    request: Any = None
    raw: str | None = None
    refused: Refused | None = None

    @property
    def id(self) -> str | int | None:
        """The sender's id when one can be read, so even a refusal is answered under it."""
        found = self.request.get("id") if isinstance(self.request, dict) else None
        if isinstance(found, bool) or not isinstance(found, int | str):
            return None
        return found[:200] if isinstance(found, str) else found

    @property
    def by(self) -> str | None:
        found = self.request.get("by") if isinstance(self.request, dict) else None
        return found[:200] if isinstance(found, str) and found else None


def decode(payload: Any) -> Received:
    if isinstance(payload, Struct):
        return Received(request=msgspec.to_builtins(payload))
    if not isinstance(payload, bytes | bytearray | memoryview | str):
        return Received(request=payload)
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    text = data[:RAW_KEPT_CHARS].decode("utf-8", "replace")
    if len(data) > REQUEST_MAX_BYTES:
        refused = Refused(
            "too_large", f"the request has {len(data)} bytes, at most {REQUEST_MAX_BYTES}"
        )
        return Received(raw=text, refused=refused)
    if not data.strip():
        return Received(raw=text, refused=Refused("invalid_json", 'empty; send {"set": {...}}'))
    try:
        return Received(request=decode_json(data))
    except ApiError as exc:  # not JSON, too deep, too big: whatever the bytes
        return Received(raw=text, refused=Refused(exc.code, exc.detail))


def parse(received: Received) -> ConfigRequest:
    if received.refused is not None:
        raise received.refused
    raw = received.request
    if not isinstance(raw, dict):
        raise Refused(
            "not_an_object",
            f'the request must be a JSON object like {{"set": {{...}}}}, got {type(raw).__name__}',
        )
    stray = [k for k in raw if k not in ConfigRequest.__struct_fields__]
    if stray:
        raise Refused(
            "invalid_request",
            f"unknown request key {', '.join(map(repr, stray))}: a request holds "
            '"set" (the settings to change), "reset", "by" and "id"; e.g. '
            f'{{"set": {{"{stray[0]}": ...}}}}',
            stray[0],
        )
    try:
        request = msgspec.convert(raw, ConfigRequest)
    except msgspec.ValidationError as exc:
        reason, _, where = str(exc).partition(" - at `$.")
        key = where.rstrip("`").split(".")[0].split("[")[0] or None
        raise Refused("invalid_request", f"{key}: {reason}" if key else reason, key) from None
    if not request.set and not request.reset:
        # Most likely a client that lost its payload: say so rather than "accepted".
        raise Refused(
            "invalid_request", 'nothing to change: send {"set": {...}} or {"reset": true}', "set"
        )
    return request


def audit_data(received: Received, result: ConfigResult) -> bytes:
    data: dict[str, Any] = {"request": received.request, "result": result}
    if received.raw is not None:
        data["raw"] = received.raw
    try:
        return msgspec.json.encode(data)
    except (TypeError, msgspec.EncodeError):
        # A bridge handed over something JSON cannot hold: keep its text instead.
        data["request"] = repr(received.request)[:RAW_KEPT_CHARS]
        return msgspec.json.encode(data)
