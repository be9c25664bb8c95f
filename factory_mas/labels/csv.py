"""Labels CSV: read a file of labels, naming every bad line and column, or write labels out."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TextIO

from factory_mas.errors import FactoryError
from factory_mas.labels.model import CSV_COLUMNS, LABEL_KINDS, Label, LabelError, checked


class LabelsCsvError(FactoryError, ValueError):
    """A labels file had bad lines; `problems` lists each as "line N, column C: reason"."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} bad line(s):\n" + "\n".join(problems))
        self.problems = problems


class _Bad(ValueError):
    def __init__(self, column: str, reason: str) -> None:
        super().__init__(f"column {column}: {reason}")


def _instant(column: str, raw: str) -> datetime:
    try:
        # A naive time is read as UTC (checked() says so), as the telemetry export writes it.
        return datetime.fromisoformat(raw)
    except ValueError:
        raise _Bad(column, f"{raw!r} is not an ISO 8601 time") from None


def _optional_int(column: str, raw: str) -> int | None:
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _Bad(column, f"{raw!r} is not a whole number") from None


def label_of(row: Mapping[str, str]) -> Label:
    """One label from a row of text fields; raises ValueError naming the column."""
    kind = row.get("kind", "")
    if kind not in LABEL_KINDS:
        raise _Bad("kind", f"{kind!r} is not one of {', '.join(LABEL_KINDS)}")
    label = Label(
        kind=kind,  # checked against LABEL_KINDS above
        machine_id=_optional_int("machine_id", row.get("machine_id", "")),
        start=_instant("start", row.get("start", "")),
        end=_instant("end", row["end"]) if row.get("end") else None,
        detail=row.get("detail", ""),
        alarm_id=_optional_int("alarm_id", row.get("alarm_id", "")),
        source=row.get("source", ""),
        comment=row.get("comment", ""),
        by=row.get("by", ""),
    )
    try:
        return checked(label)
    except LabelError as bad:
        raise _Bad(bad.field, bad.reason) from None


def parse_labels_csv(path: Path | str) -> tuple[list[Label], list[str]]:
    """The good labels of a file and a "line N, column C: reason" line for each bad one."""
    labels: list[Label] = []
    problems: list[str] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("kind", "start") if c not in (reader.fieldnames or [])]
        if missing:
            return [], [f"line 1, column {c}: missing from the header" for c in missing]
        for row in reader:
            try:
                labels.append(label_of({k: (v or "").strip() for k, v in row.items() if k}))
            except ValueError as bad:
                problems.append(f"line {reader.line_num}, {bad}")
    return labels, problems


def read_labels_csv(path: Path | str) -> list[Label]:
    """Every label of a file, or LabelsCsvError listing every bad line (nothing half-read)."""
    labels, problems = parse_labels_csv(path)
    if problems:
        raise LabelsCsvError(str(path), problems)
    return labels


def write_labels_csv(labels: Iterable[Label], out: Path | str | TextIO) -> int:
    """Write labels in the import format, to a file or an open text stream; returns how
    many."""
    if not isinstance(out, Path | str):
        return _write(labels, out)
    with open(out, "w", newline="", encoding="utf-8") as f:
        return _write(labels, f)


def _write(labels: Iterable[Label], f: TextIO) -> int:
    n = 0
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    for label in labels:
        writer.writerow(
            [
                label.kind,
                "" if label.machine_id is None else label.machine_id,
                label.start.isoformat(),
                "" if label.end is None else label.end.isoformat(),
                label.detail,
                "" if label.alarm_id is None else label.alarm_id,
                label.source,
                label.comment,
                label.by,
            ]
        )
        n += 1
    return n
