"""A plant's telemetry CSV read for training: checked row by row as ingest checks a record,
columns found by header, snake_case or --map, kept as sorted numpy columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from factory_mas.errors import TrainingError
from factory_mas.ingest.schema import CSV_HEADERS
from factory_mas.sim.synthetic import FactorySimulator
from factory_mas.training.sources import read_csv

HEADER_OF = {field: header for header, field in CSV_HEADERS.items()}


def plant_rows(machines: int = 3, ticks: int = 40) -> list[dict[str, object]]:
    """Simulated readings under the dataset's CSV headers, as a historian export has them."""
    records = FactorySimulator(seed=5, machines=machines).run(ticks).records()
    return [{HEADER_OF[k]: v for k, v in r.items()} for r in records]


def write_csv(path: Path, rows: list[dict[str, object]], drop: tuple[str, ...] = ()) -> Path:
    names = [n for n in rows[0] if n not in drop]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_csv_export_becomes_sorted_columns_with_repeats_dropped_and_extras_noted(tmp_path):
    rows = plant_rows()
    # Out of order, one reading twice, and a column of the plant's own.
    shuffled = [{**r, "Site": "north"} for r in rows[::-1]] + [{**rows[7], "Site": "north"}]
    notes: list[str] = []
    data = read_csv(write_csv(tmp_path / "plant.csv", shuffled), note=notes.append)

    assert len(data) == len(rows)
    ids, ts = data.columns["machine_id"], data.columns["timestamp"]
    assert ts.dtype == np.dtype("datetime64[ms]") and ids.dtype == np.int64
    order = np.lexsort((ts, ids))
    assert (order == np.arange(len(ids))).all(), "sorted by machine, then time"
    assert data.source == f"plant.csv ({len(rows):,} rows, 3 machines)"
    assert any("Site" in n for n in notes)
    assert any("dropped 1 repeated" in n for n in notes)
    first = min(rows, key=lambda r: (r["Machine_ID"], r["Timestamp"]))
    assert data.columns["temperature_c"][0] == first["Temperature_C"]
    assert data.columns["operation_mode"][0] == first["Operation_Mode"]
    assert data.missing == ()


def test_bad_rows_are_named_by_line_and_column_and_nothing_is_read(tmp_path):
    rows = plant_rows()
    rows[2] = {**rows[2], "Packet_Loss_%": "150"}
    rows[5] = {**rows[5], "Temperature_C": "hot"}
    rows[6] = {**rows[6], "Timestamp": ""}
    with pytest.raises(TrainingError) as caught:
        read_csv(write_csv(tmp_path / "plant.csv", rows))
    message = str(caught.value)
    assert "3 invalid row(s)" in message
    # Line 1 is the header: data row i is on line i + 2.
    assert "line 4, column Packet_Loss_%" in message
    assert "line 7, column Temperature_C" in message
    assert "line 8, column Timestamp" in message


def test_more_than_twenty_bad_rows_list_twenty_and_count_the_rest(tmp_path):
    rows = [{**r, "Machine_ID": "0"} for r in plant_rows()[:30]]
    with pytest.raises(TrainingError) as caught:
        read_csv(write_csv(tmp_path / "plant.csv", rows))
    message = str(caught.value)
    assert message.count("column Machine_ID") == 20
    assert "... and 10 more" in message


def test_skip_invalid_trains_on_the_good_rows_and_says_how_many_were_left_out(tmp_path):
    rows = plant_rows()
    rows[3] = {**rows[3], "Vibration_Hz": "-1"}
    notes: list[str] = []
    data = read_csv(write_csv(tmp_path / "plant.csv", rows), skip_invalid=True, note=notes.append)
    assert len(data) == len(rows) - 1
    assert any("skipped 1 invalid row" in n and "Vibration_Hz" in n for n in notes)


def test_map_reads_a_plant_s_own_column_names_and_snake_case_is_known(tmp_path):
    rows = [
        {
            ("Temp" if k == "Temperature_C" else CSV_HEADERS.get(k, k)): v
            for k, v in r.items()
            if k != "Predictive_Maintenance_Score"
        }
        for r in plant_rows()
    ]
    path = write_csv(tmp_path / "plant.csv", rows)
    data = read_csv(path, {"Temp": "temperature_c"})
    assert data.has("temperature_c") and data.has("power_consumption_kw")
    assert not data.has("maintenance_score") and "maintenance_score" in data.missing

    with pytest.raises(TrainingError, match="no column 'Temperature'"):
        read_csv(path, {"Temperature": "temperature_c"})
    with pytest.raises(TrainingError, match="'warmth' is not a telemetry field"):
        read_csv(path, {"Temp": "warmth"})


def test_a_csv_without_a_machine_column_is_refused_naming_it(tmp_path):
    path = write_csv(tmp_path / "plant.csv", plant_rows(), drop=("Machine_ID",))
    with pytest.raises(TrainingError, match=r"no machine_id column.*Machine_ID"):
        read_csv(path)


def test_a_csv_lacking_network_and_maintenance_columns_reads_the_rest(tmp_path):
    lacking = ("Network_Latency_ms", "Packet_Loss_%", "Predictive_Maintenance_Score")
    path = write_csv(tmp_path / "plant.csv", plant_rows(), drop=lacking)
    data = read_csv(path)
    assert set(data.missing) == {"network_latency_ms", "packet_loss_pct", "maintenance_score"}
    assert data.has("power_consumption_kw") and not data.has("network_latency_ms")
