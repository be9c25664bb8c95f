"""Telemetry records: accepted spellings, conversions, and rejections that say why."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import numpy as np
import pytest

from factory_mas.errors import FactoryError, RecordError
from factory_mas.ingest.schema import CSV_HEADERS, columns_of, parse_many, parse_record
from factory_mas.messages import Rejection, TelemetryRecord

# One row as the Kaggle CSV reader yields it: header names, every cell a string.
CSV_ROW = {
    "Timestamp": "2024-01-01 00:00:00",
    "Machine_ID": "7",
    "Operation_Mode": "Active",
    "Temperature_C": "70.5",
    "Vibration_Hz": "2.5",
    "Power_Consumption_kW": "5.25",
    "Network_Latency_ms": "10",
    "Packet_Loss_%": "1.5",
    "Quality_Control_Defect_Rate_%": "2",
    "Production_Speed_units_per_hr": "200",
    "Predictive_Maintenance_Score": "0.5",
    "Error_Rate_%": "3",
    "Efficiency_Status": "High",
}

SNAKE = {
    "timestamp": "2024-01-01T00:00:00Z",
    "machine_id": 7,
    "operation_mode": "Active",
    "temperature_c": 70.5,
    "vibration_hz": 2.5,
    "power_consumption_kw": 5.25,
    "network_latency_ms": 10.0,
    "packet_loss_pct": 1.5,
    "defect_rate_pct": 2.0,
    "production_speed": 200.0,
    "maintenance_score": 0.5,
    "error_rate_pct": 3.0,
    "efficiency_status": "High",
}

EXPECTED = TelemetryRecord(
    machine_id=7,
    operation_mode="Active",
    temperature_c=70.5,
    vibration_hz=2.5,
    power_consumption_kw=5.25,
    network_latency_ms=10.0,
    packet_loss_pct=1.5,
    defect_rate_pct=2.0,
    production_speed=200.0,
    maintenance_score=0.5,
    error_rate_pct=3.0,
    timestamp=datetime(2024, 1, 1, tzinfo=UTC),
    efficiency_status="High",
)

REQUIRED = [
    "machine_id",
    "operation_mode",
    "temperature_c",
    "vibration_hz",
    "power_consumption_kw",
    "network_latency_ms",
    "packet_loss_pct",
    "defect_rate_pct",
    "production_speed",
    "error_rate_pct",
]


def snake(**changes) -> dict:
    record = dict(SNAKE)
    record.update(changes)
    return record


def rejected(obj) -> RecordError:
    with pytest.raises(RecordError) as info:
        parse_record(obj)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FactoryError)
    return info.value


# --------------------------------------------------------------------------- accepted


def test_csv_header_names_with_string_cells() -> None:
    assert parse_record(CSV_ROW) == EXPECTED


def test_csv_headers_cover_every_field() -> None:
    assert set(CSV_HEADERS.values()) == set(TelemetryRecord.__struct_fields__)


def test_snake_case_names() -> None:
    assert parse_record(SNAKE) == EXPECTED


def test_short_aliases() -> None:
    record = dict(SNAKE)
    record["temperature"] = record.pop("temperature_c")
    record["vibration"] = record.pop("vibration_hz")
    record["power"] = record.pop("power_consumption_kw")
    assert parse_record(record) == EXPECTED


def test_names_ignore_case() -> None:
    record = {
        "TIMESTAMP": "2024-01-01T00:00:00",
        "machine_ID": 7,
        "operation_mode": "Active",
        "TEMPERATURE": 70.5,
        "Vibration_HZ": 2.5,
        "POWER_CONSUMPTION_KW": 5.25,
        "network_latency_MS": 10,
        "PACKET_LOSS_%": 1.5,
        "quality_control_defect_rate_%": 2,
        "Production_Speed": 200,
        "predictive_maintenance_score": 0.5,
        "Error_Rate_Pct": 3,
        "efficiency_STATUS": "High",
    }
    assert parse_record(record) == EXPECTED


def test_string_numbers_convert() -> None:
    record = snake(machine_id="12", temperature_c="-5.5", maintenance_score="1", vibration_hz="0")
    parsed = parse_record(record)
    assert parsed.machine_id == 12
    assert parsed.temperature_c == -5.5
    assert parsed.maintenance_score == 1.0
    assert parsed.vibration_hz == 0.0


def test_values_outside_the_usual_range_but_physical_are_kept() -> None:
    parsed = parse_record(snake(temperature_c=250.0, vibration_hz=80.0, machine_id=999))
    assert parsed.temperature_c == 250.0
    assert parsed.machine_id == 999


@pytest.mark.parametrize("ts", ["2024-03-05 06:07:08", "2024-03-05T06:07:08"])
def test_naive_timestamp_is_read_as_utc(ts: str) -> None:
    parsed = parse_record(snake(timestamp=ts))
    assert parsed.timestamp == datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)
    assert parsed.timestamp.utcoffset() == timedelta(0)


def test_aware_timestamp_keeps_its_instant() -> None:
    parsed = parse_record(snake(timestamp="2024-03-05T08:07:08+02:00"))
    assert parsed.timestamp == datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)
    assert parsed.timestamp.utcoffset() == timedelta(hours=2)
    assert parsed.timestamp.tzinfo == timezone(timedelta(hours=2))


def test_missing_timestamp_is_stamped_on_arrival_in_utc() -> None:
    # "A record without a timestamp is stamped on arrival" (messages.TelemetryRecord).
    record = dict(SNAKE)
    del record["timestamp"]
    before = datetime.now(UTC)
    parsed = parse_record(record)
    after = datetime.now(UTC)
    assert parsed.timestamp is not None
    assert parsed.timestamp.utcoffset() == timedelta(0)
    assert before <= parsed.timestamp <= after


def test_empty_timestamp_cell_is_treated_as_missing() -> None:
    before = datetime.now(UTC)
    parsed = parse_record(dict(CSV_ROW, Timestamp=""))
    after = datetime.now(UTC)
    assert parsed.timestamp is not None
    assert before <= parsed.timestamp <= after
    assert parsed.machine_id == 7


def test_empty_efficiency_status_cell_is_missing() -> None:
    parsed = parse_record(dict(CSV_ROW, Efficiency_Status=""))
    assert parsed.efficiency_status is None
    assert parsed.machine_id == 7


def test_missing_efficiency_status_is_none() -> None:
    record = dict(SNAKE)
    del record["efficiency_status"]
    assert parse_record(record).efficiency_status is None


def test_unknown_extra_keys_are_ignored() -> None:
    record = snake(site="north", line=3, gateway={"id": "gw-1"})
    assert parse_record(record) == EXPECTED
    assert parse_record(dict(CSV_ROW, Site="north")) == EXPECTED


@pytest.mark.parametrize("mode", ["Active", "Idle", "Maintenance"])
def test_every_operation_mode(mode: str) -> None:
    assert parse_record(snake(operation_mode=mode)).operation_mode == mode


# --------------------------------------------------------------------------- rejected


@pytest.mark.parametrize(
    ("changes", "field", "reason_has"),
    [
        ({"temperature_c": math.nan}, "temperature_c", "finite"),
        ({"temperature_c": "nan"}, "temperature_c", "finite"),
        ({"vibration_hz": "NaN"}, "vibration_hz", "finite"),
        ({"vibration_hz": math.inf}, "vibration_hz", "finite"),
        ({"power_consumption_kw": -math.inf}, "power_consumption_kw", "finite"),
        ({"power_consumption_kw": "inf"}, "power_consumption_kw", "finite"),
        ({"maintenance_score": math.nan}, "maintenance_score", "finite"),
        ({"network_latency_ms": -1}, "network_latency_ms", ">= 0"),
        ({"network_latency_ms": "-0.5"}, "network_latency_ms", ">= 0"),
        ({"packet_loss_pct": 100.5}, "packet_loss_pct", "<= 100"),
        ({"defect_rate_pct": 101}, "defect_rate_pct", "<= 100"),
        ({"error_rate_pct": 150}, "error_rate_pct", "<= 100"),
        ({"packet_loss_pct": -1}, "packet_loss_pct", ">= 0"),
        ({"maintenance_score": 1.01}, "maintenance_score", "<= 1"),
        ({"maintenance_score": -0.1}, "maintenance_score", ">= 0"),
        ({"temperature_c": -300}, "temperature_c", ">= -273.15"),
        ({"machine_id": 0}, "machine_id", ">= 1"),
        ({"timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        ({"timestamp": "2024-13-01T00:00:00"}, "timestamp", ""),
        ({"machine_id": "abc"}, "machine_id", "int"),
        ({"machine_id": 1.5}, "machine_id", "int"),
        ({"machine_id": [7]}, "machine_id", "int"),
        ({"temperature_c": True}, "temperature_c", "float"),
        ({"temperature_c": {"value": 70}}, "temperature_c", "float"),
        ({"temperature_c": "hot"}, "temperature_c", "float"),
        ({"operation_mode": 3}, "operation_mode", ""),
    ],
)
def test_rejection_names_the_field(changes: dict, field: str, reason_has: str) -> None:
    err = rejected(snake(**changes))
    assert err.field == field
    assert reason_has in err.reason
    assert str(err).startswith(f"{field}: ")


def test_nan_reason_shows_the_value() -> None:
    err = rejected(snake(temperature_c="nan"))
    assert "nan" in err.reason


def test_unknown_operation_mode_lists_the_allowed_values() -> None:
    err = rejected(snake(operation_mode="Running"))
    assert err.field == "operation_mode"
    for part in ("Running", "Active", "Idle", "Maintenance"):
        assert part in err.reason


def test_unknown_efficiency_status_lists_the_allowed_values() -> None:
    err = rejected(snake(efficiency_status="Great"))
    assert err.field == "efficiency_status"
    for part in ("Great", "Low", "Medium", "High"):
        assert part in err.reason


def test_mode_is_case_sensitive() -> None:
    assert rejected(snake(operation_mode="active")).field == "operation_mode"


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_required_field(field: str) -> None:
    record = dict(SNAKE)
    del record[field]
    err = rejected(record)
    assert err.field == field
    assert "missing" in err.reason


@pytest.mark.parametrize("given", ["left out", None, ""])
def test_maintenance_score_is_optional_and_nan_in_the_columns(given) -> None:
    record = dict(SNAKE)
    if given == "left out":
        del record["maintenance_score"]
    else:
        record["maintenance_score"] = given
    parsed = parse_record(record)
    assert parsed.maintenance_score is None
    scores = columns_of([parsed, parse_record(SNAKE)])["maintenance_score"]
    assert np.isnan(scores[0]) and scores[1] == 0.5


def test_missing_required_field_in_a_csv_row() -> None:
    row = dict(CSV_ROW)
    del row["Network_Latency_ms"]
    assert rejected(row).field == "network_latency_ms"


@pytest.mark.parametrize("obj", [[SNAKE], "machine_id=7", None, 7, 7.5, b"{}"])
def test_non_object_input(obj) -> None:
    err = rejected(obj)
    assert err.field is None
    assert "object" in err.reason


@pytest.mark.parametrize(
    ("first", "second", "field"),
    [
        ("Temperature_C", "temperature", "temperature_c"),
        ("temperature_c", "TEMPERATURE_C", "temperature_c"),
        ("Machine_ID", "machine_id", "machine_id"),
        ("Packet_Loss_%", "packet_loss_pct", "packet_loss_pct"),
        ("power", "power_consumption_kw", "power_consumption_kw"),
    ],
)
def test_same_field_given_twice(first: str, second: str, field: str) -> None:
    record = {k: v for k, v in SNAKE.items() if k != field}
    record[first] = SNAKE[field]
    record[second] = SNAKE[field]
    err = rejected(record)
    assert err.field == field
    assert "twice" in err.reason


# --------------------------------------------------------------------------- batches


def test_parse_many_keeps_the_good_and_explains_the_bad() -> None:
    bad_nan = snake(temperature_c="nan")
    missing = {k: v for k, v in SNAKE.items() if k != "machine_id"}
    items = [SNAKE, bad_nan, 42, CSV_ROW, missing]

    good, bad = parse_many(items, source="http")

    assert good == [EXPECTED, EXPECTED]
    assert [r.index for r in bad] == [1, 2, 4]
    assert all(isinstance(r, Rejection) for r in bad)
    assert all(r.source == "http" for r in bad)
    assert [r.field for r in bad] == ["temperature_c", None, "machine_id"]
    assert "finite" in bad[0].reason
    assert "object" in bad[1].reason
    assert "missing" in bad[2].reason
    assert bad[0].input == bad_nan
    assert bad[1].input == 42
    assert bad[2].input == missing


def test_parse_many_empty() -> None:
    assert parse_many([], source="x") == ([], [])


def test_huge_rejected_input_is_echoed_cut_short() -> None:
    huge = {"machine_id": "x" * 200_000, "note": "y" * 200_000}
    _, bad = parse_many([huge], source="mqtt")
    (rejection,) = bad
    assert rejection.field == "machine_id"
    echoed = rejection.input
    assert echoed != huge
    text = echoed if isinstance(echoed, str) else msgspec.json.encode(echoed).decode()
    assert 0 < len(text) < 5_000
    assert "machine_id" in text


def test_rejections_encode_as_json_even_for_odd_input() -> None:
    odd = object()
    _, bad = parse_many([odd, snake(machine_id=math.nan)], source="replay")
    assert [r.index for r in bad] == [0, 1]
    decoded = msgspec.json.decode(msgspec.json.encode(bad))
    assert decoded[0]["source"] == "replay"
    assert "object" in decoded[0]["input"]
    assert decoded[1]["field"] == "machine_id"
