from pathlib import Path

import pytest

from factory_mas.labels.csv import (
    LabelsCsvError,
    parse_labels_csv,
    read_labels_csv,
    write_labels_csv,
)

HEADER = "kind,machine_id,start,end,detail,alarm_id,source,comment,by\n"


def _file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text(HEADER + body)
    return path


def test_good_file_round_trips(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "failure,3,2026-01-01T00:00:00Z,,,,,,ann\n"
        "incident,2,2026-01-02T10:00:00+00:00,2026-01-02T11:00:00+00:00,FIRE_RISK,,,smoke,bob\n",
    )
    labels = read_labels_csv(path)
    assert [(lb.kind, lb.machine_id, lb.detail) for lb in labels] == [
        ("failure", 3, ""),
        ("incident", 2, "FIRE_RISK"),
    ]
    out = tmp_path / "out.csv"
    assert write_labels_csv(labels, out) == 2
    assert read_labels_csv(out) == labels


def test_every_bad_line_is_named_and_nothing_is_read(tmp_path: Path) -> None:
    path = _file(
        tmp_path,
        "failure,3,2026-01-01T00:00:00Z,,,,,,\n"
        "repair,3,2026-01-01T00:00:00Z,,,,,,\n"
        "incident,2,yesterday,,FIRE_RISK,,,,\n"
        "maintenance,x,2026-01-01T00:00:00Z,,,,,,\n"
        "maintenance,1,2026-01-02T00:00:00Z,2026-01-01T00:00:00Z,,,,,\n",
    )
    with pytest.raises(LabelsCsvError) as err:
        read_labels_csv(path)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "line 3, column kind",
        "line 4, column start",
        "line 5, column machine_id",
        "line 6, column end",
    ]
    good, problems = parse_labels_csv(path)
    assert [lb.machine_id for lb in good] == [3] and len(problems) == 4
