"""Telemetry field names and validation with reasons.

Three spellings are accepted for each field: the CSV header of the public dataset
(`Temperature_C`), snake_case (`temperature_c`) and, for the three that the original seed
clients sent, a short alias (`temperature`). Matching ignores case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, get_args

import msgspec
import numpy as np

from ..errors import RecordError
from ..messages import EfficiencyStatus, OperationMode, Rejection, TelemetryRecord

CSV_HEADERS: dict[str, str] = {
    "Timestamp": "timestamp",
    "Machine_ID": "machine_id",
    "Operation_Mode": "operation_mode",
    "Temperature_C": "temperature_c",
    "Vibration_Hz": "vibration_hz",
    "Power_Consumption_kW": "power_consumption_kw",
    "Network_Latency_ms": "network_latency_ms",
    "Packet_Loss_%": "packet_loss_pct",
    "Quality_Control_Defect_Rate_%": "defect_rate_pct",
    "Production_Speed_units_per_hr": "production_speed",
    "Predictive_Maintenance_Score": "maintenance_score",
    "Error_Rate_%": "error_rate_pct",
    "Efficiency_Status": "efficiency_status",
}
SHORT_ALIASES = {
    "temperature": "temperature_c",
    "vibration": "vibration_hz",
    "power": "power_consumption_kw",
}
FIELDS: tuple[str, ...] = TelemetryRecord.__struct_fields__
_NUMERIC = tuple(
    f for f in FIELDS if f not in ("machine_id", "timestamp", "operation_mode", "efficiency_status")
)
# Fields a record may leave out (None); an empty CSV cell leaves them out too.
_OPTIONAL = tuple(f.name for f in msgspec.structs.fields(TelemetryRecord) if not f.required)
_CHOICES = {
    "operation_mode": get_args(OperationMode),
    "efficiency_status": get_args(EfficiencyStatus),
}

_ALIASES: dict[str, str] = {
    **{f.lower(): f for f in FIELDS},
    **{h.lower(): f for h, f in CSV_HEADERS.items()},
    **SHORT_ALIASES,
}
_CANONICAL = frozenset(FIELDS)
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_INPUT_ECHO_CHARS = 500


def normalise_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Map every accepted spelling to the snake_case field name.

    Raises RecordError when two spellings of one field disagree about who wins.
    """
    if _CANONICAL.issuperset(obj):  # the common case costs one set check
        return dict(obj)
    # A gateway sends the same keys in every record: their names are worked out once.
    keys = tuple(obj)
    names = _NAMES_OF_KEYS.get(keys)
    if names is None:
        names = _names_of(keys)
        if len(_NAMES_OF_KEYS) < _NAMES_OF_KEYS_MAX:
            _NAMES_OF_KEYS[keys] = names
    return dict(zip(names, obj.values(), strict=True))


_NAMES_OF_KEYS: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_NAMES_OF_KEYS_MAX = 256


def _names_of(keys: tuple[Any, ...]) -> tuple[Any, ...]:
    names: list[Any] = []
    for key in keys:
        name = _ALIASES.get(key.lower(), key) if isinstance(key, str) else key
        if name in names:
            raise RecordError("given twice under different names", field=name)
        names.append(name)
    return tuple(names)


def parse_record(obj: Any) -> TelemetryRecord:
    """One decoded JSON object or CSV row -> a TelemetryRecord, or RecordError naming why."""
    if not isinstance(obj, Mapping):
        raise RecordError(f"a record must be a JSON object, got {type(obj).__name__}")
    data = normalise_keys(obj)
    # CSV cells are strings and an empty optional cell means "not given".
    for optional in _OPTIONAL:
        if data.get(optional) == "":
            del data[optional]
    try:
        record = msgspec.convert(data, TelemetryRecord, strict=False)
    except msgspec.ValidationError as exc:
        raise _record_error(exc, data) from None
    if record.timestamp is None:
        record.timestamp = datetime.now(UTC)
    elif record.timestamp.tzinfo is None:
        # The dataset's timestamps carry no zone; they are read as UTC.
        record.timestamp = record.timestamp.replace(tzinfo=UTC)
    return record


def _record_error(exc: msgspec.ValidationError, data: dict[str, Any]) -> RecordError:
    m = _AT.match(str(exc))
    reason, path = (m["reason"], m["path"]) if m else (str(exc), None)
    missing = _MISSING.search(reason)
    if missing:
        return RecordError("required field is missing", field=missing["field"])
    field = path.lstrip(".").split(".")[0].split("[")[0] if path else None
    if field is not None and field in _CHOICES:
        reason = f"{data.get(field)!r} is not one of {', '.join(_CHOICES[field])}"
    elif field is not None and not _finite(data.get(field, 0)):
        reason = f"{data.get(field)!r} is not a finite number"
    reason = reason.replace("Invalid RFC3339 encoded datetime", "not an ISO 8601 timestamp")
    return RecordError(reason, field=field or None)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True  # not a number at all: msgspec's own reason says so better


def echo(obj: Any) -> Any:
    """The rejected input as it goes back to people: whole when small, cut when not."""
    text = msgspec.json.encode(obj) if _encodable(obj) else repr(obj).encode()
    if len(text) <= _INPUT_ECHO_CHARS:
        return obj if _encodable(obj) else text.decode()
    return text[:_INPUT_ECHO_CHARS].decode(errors="replace") + "..."


def _encodable(obj: Any) -> bool:
    try:
        msgspec.json.encode(obj)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def parse_many(items: Iterable[Any], source: str) -> tuple[list[TelemetryRecord], list[Rejection]]:
    """Validate a batch: the good records go on, each bad one becomes a Rejection."""
    good: list[TelemetryRecord] = []
    bad: list[Rejection] = []
    for index, item in enumerate(items):
        try:
            good.append(parse_record(item))
        except RecordError as exc:
            bad.append(
                Rejection(
                    source=source, reason=exc.reason, field=exc.field, index=index, input=echo(item)
                )
            )
    return good, bad


def columns_of(records: Sequence[TelemetryRecord]) -> dict[str, np.ndarray]:
    """Records as column arrays, the shape models and the simulator's frames share."""
    n = len(records)
    cols: dict[str, np.ndarray] = {}
    for name in _NUMERIC:
        if name in _OPTIONAL:
            # A reading the record does not carry is NaN, as in a plant's training columns.
            values = (math.nan if (v := getattr(r, name)) is None else v for r in records)
        else:
            values = (getattr(r, name) for r in records)
        cols[name] = np.fromiter(values, np.float64, count=n)
    cols["machine_id"] = np.fromiter((r.machine_id for r in records), np.int64, count=n)
    cols["operation_mode"] = np.array([r.operation_mode for r in records], dtype=object)
    return cols
