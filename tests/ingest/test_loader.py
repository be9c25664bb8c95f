"""Reading the Intelligent Manufacturing Dataset's CSV (or any CSV with its header names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory_mas.errors import FactoryError
from factory_mas.ingest.csv_reader import CsvError, read_batches
from factory_mas.ingest.schema import CSV_HEADERS, parse_record

HEADER = ",".join(CSV_HEADERS)


def row(machine_id: int, minute: int = 0, mode: str = "Active") -> str:
    stamp = f"2024-01-01 00:{minute:02d}:00"
    return f"{stamp},{machine_id},{mode},65.5,1.5,6.1,12,0.5,2.0,300,0.4,2.5,High"


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_batches_in_file_order_with_the_line_of_each_row(tmp_path):
    path = write(tmp_path / "d.csv", "\n".join([HEADER, *(row(m) for m in range(1, 8))]) + "\n")
    batches = list(read_batches(path, 3))
    assert [len(rows) for _, rows in batches] == [3, 3, 1]
    assert [lines for lines, _ in batches] == [[2, 3, 4], [5, 6, 7], [8]]
    assert [r["Machine_ID"] for _, rows in batches for r in rows] == [str(m) for m in range(1, 8)]


def test_one_batch_when_the_file_is_small(tmp_path):
    path = write(tmp_path / "d.csv", "\n".join([HEADER, row(1), row(2)]))  # no final newline
    assert [(lines, len(rows)) for lines, rows in read_batches(path, 50)] == [([2, 3], 2)]


def test_a_file_with_only_a_header_yields_nothing(tmp_path):
    assert list(read_batches(write(tmp_path / "d.csv", HEADER + "\n"), 10)) == []


def test_rows_are_raw_strings_that_parse_as_records(tmp_path):
    path = write(tmp_path / "d.csv", "\n".join([HEADER, row(4, minute=30, mode="Idle")]) + "\n")
    [(_, [raw])] = list(read_batches(path, 10))
    assert set(raw) == set(CSV_HEADERS)
    assert raw["Temperature_C"] == "65.5"
    record = parse_record(raw)
    assert record.machine_id == 4
    assert record.operation_mode == "Idle"
    assert record.temperature_c == 65.5
    assert record.timestamp.isoformat() == "2024-01-01T00:30:00+00:00"


def test_a_utf8_bom_does_not_hide_the_first_column(tmp_path):
    path = write(tmp_path / "d.csv", "\n".join([HEADER, row(1, minute=5)]) + "\n", bom=True)
    [(_, [raw])] = list(read_batches(path, 10))
    assert "Timestamp" in raw
    assert not any(key.startswith("\ufeff") for key in raw)
    assert parse_record(raw).timestamp.minute == 5


def test_windows_line_endings(tmp_path):
    path = write(tmp_path / "d.csv", "\r\n".join([HEADER, row(1), row(2)]) + "\r\n")
    batches = list(read_batches(path, 1))
    assert [lines for lines, _ in batches] == [[2], [3]]
    assert batches[1][1][0]["Efficiency_Status"] == "High"


def test_surplus_cells_are_dropped(tmp_path):
    path = write(tmp_path / "d.csv", "\n".join([HEADER, row(1) + ",surplus,more"]) + "\n")
    [(_, [raw])] = list(read_batches(path, 10))
    assert None not in raw
    assert set(raw) == set(CSV_HEADERS)
    assert raw["Efficiency_Status"] == "High"
    assert parse_record(raw).machine_id == 1


def test_quoted_commas_stay_in_their_cell(tmp_path):
    header = HEADER + ",Notes"
    text = "\n".join([header, row(1) + ',"hot, loud, smells of oil"', row(2) + ",quiet"]) + "\n"
    batches = list(read_batches(write(tmp_path / "d.csv", text), 10))
    [(_, [first, second])] = batches
    assert first["Notes"] == "hot, loud, smells of oil"
    assert first["Efficiency_Status"] == "High"
    assert second["Notes"] == "quiet"
    assert parse_record(first).machine_id == 1


def test_snake_case_headers_are_read_too(tmp_path):
    header = ",".join(CSV_HEADERS.values())
    path = write(tmp_path / "d.csv", "\n".join([header, row(3)]) + "\n")
    [(_, [raw])] = list(read_batches(path, 10))
    assert parse_record(raw).machine_id == 3


def test_a_header_with_no_telemetry_column_is_refused(tmp_path):
    path = write(tmp_path / "sales.csv", "Date,Customer,Amount\n2024-01-01,ACME,12\n")
    with pytest.raises(CsvError) as err:
        list(read_batches(path, 10))
    assert "sales.csv" in str(err.value)
    assert "Customer" in str(err.value)
    assert isinstance(err.value, FactoryError)  # callers catch the project's errors


def test_an_empty_file_is_refused(tmp_path):
    with pytest.raises(CsvError):
        list(read_batches(write(tmp_path / "empty.csv", ""), 10))


def test_a_missing_file_is_refused(tmp_path):
    missing = tmp_path / "nowhere" / "data.csv"
    with pytest.raises(CsvError) as err:
        list(read_batches(missing, 10))
    assert str(missing) in str(err.value)


def test_a_file_that_is_not_utf8_is_refused_with_its_line(tmp_path):
    text = ("\n".join([HEADER, row(1), row(2)]) + "\n").encode() + b"\xff\xfe\xfa,broken\n"
    path = tmp_path / "latin.csv"
    path.write_bytes(text)
    with pytest.raises(CsvError) as err:
        list(read_batches(path, 10))
    assert "latin.csv" in str(err.value)


def test_the_line_of_a_row_is_where_it_starts(tmp_path):
    # A quoted cell may hold a line break; an editor shows that row at its first line.
    header = HEADER + ",Notes"
    text = "\n".join([header, row(1) + ",ok", row(2) + ',"two\nlines"', row(3) + ",ok"]) + "\n"
    batches = list(read_batches(write(tmp_path / "d.csv", text), 1))
    assert [(lines, rows[0]["Machine_ID"]) for lines, rows in batches] == [
        ([2], "1"),
        ([3], "2"),
        ([5], "3"),
    ]
