"""Where a plant's training data comes from: a CSV export, the telemetry historian, a labels
file. Each reading is validated as ingest validates it, then kept as numpy columns (about
150 bytes a reading), sorted by (machine, time) with repeated readings dropped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

from ..errors import RecordError, TrainingError
from ..ingest.csv_reader import read_batches
from ..ingest.schema import _ALIASES, CSV_HEADERS, FIELDS, parse_record
from ..labels.model import Label
from ..messages import OperationMode, TelemetryRecord
from ..times import iso
from .plant import PlantData

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)
Note = Callable[[str], None]

# Without these a reading cannot be put in its machine's sequence.
REQUIRED = ("machine_id", "timestamp")
# Kept as columns; efficiency_status is a label of the dataset, not something trained on.
KEPT: tuple[str, ...] = tuple(f for f in FIELDS if f != "efficiency_status")
_NUMERIC = tuple(f for f in KEPT if f not in ("machine_id", "timestamp", "operation_mode"))
# A valid stand-in for each field the source lacks, so that parse_record checks the present
# ones with exactly the ranges ingest uses; stand-ins never reach the columns.
_STAND_IN: dict[str, str] = {
    **dict.fromkeys(_NUMERIC, "0"),
    "operation_mode": get_args(OperationMode)[0],
}
HEADER_OF = {field: header for header, field in CSV_HEADERS.items()}
MAX_LISTED_ERRORS = 20
BATCH_ROWS = 10_000


def _log_note(text: str) -> None:
    log.info("%s", text)


class _Columns:
    """Validated readings gathered batch by batch into numpy arrays."""

    def __init__(self, fields: Collection[str]) -> None:
        self.fields = tuple(f for f in KEPT if f in fields)
        self._parts: dict[str, list[np.ndarray]] = {f: [] for f in self.fields}
        self._batch: dict[str, list[Any]] = {f: [] for f in self.fields}

    def add(self, record: TelemetryRecord) -> None:
        for name in self.fields:
            value = getattr(record, name)
            if name == "timestamp":
                value = round(value.timestamp() * 1000)
            elif value is None:  # an optional reading the record does not carry
                value = np.nan
            self._batch[name].append(value)
        if len(self._batch["machine_id"]) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        for name, values in self._batch.items():
            if name == "timestamp":
                part = np.array(values, np.int64).astype("datetime64[ms]")
            elif name == "machine_id":
                part = np.array(values, np.int64)
            elif name == "operation_mode":
                part = np.array(values, "<U11")
            else:
                part = np.array(values, np.float64)
            self._parts[name].append(part)
            values.clear()

    def finish(self, note: Note) -> tuple[dict[str, np.ndarray], int]:
        """The columns sorted by (machine, time), a repeated (machine, time) kept once; and
        how many repeats were dropped."""
        self._flush()
        cols = {
            name: np.concatenate(parts) if parts else np.empty(0)
            for name, parts in self._parts.items()
        }
        # Stable: of repeated readings the first in the source stays.
        order = np.lexsort((cols["timestamp"], cols["machine_id"]))
        ids, ts = cols["machine_id"][order], cols["timestamp"][order]
        keep = np.ones(len(order), bool)
        keep[1:] = (ids[1:] != ids[:-1]) | (ts[1:] != ts[:-1])
        order = order[keep]
        dropped = int((~keep).sum())
        cols = {name: col[order] for name, col in cols.items()}
        for name in _NUMERIC:
            if name in cols and len(cols[name]) and np.isnan(cols[name]).all():
                note(f"{name} is empty in every reading: treated as absent")
                del cols[name]
        return cols, dropped


def _resolve_columns(header: Sequence[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """{CSV column: field} for the columns we read: `mapping` first (--map COLUMN=field),
    then the schema's spellings; two columns for one field is an error."""
    known = set(header)
    for column, field in mapping.items():
        if column not in known:
            raise TrainingError(
                f"--map {column}={field}: the CSV has no column {column!r} (it has {list(header)})"
            )
        if _ALIASES.get(field.lower()) not in KEPT:
            raise TrainingError(
                f"--map {column}={field}: {field!r} is not a telemetry field; one of {list(KEPT)}"
            )
    columns: dict[str, str] = {}
    for column in header:
        if column in mapping:
            field = _ALIASES[mapping[column].lower()]
        elif column and column.lower() in _ALIASES:
            field = _ALIASES[column.lower()]
        else:
            continue
        if field == "efficiency_status":
            continue
        twin = next((c for c, f in columns.items() if f == field), None)
        if twin is not None:
            raise TrainingError(
                f"the CSV columns {twin!r} and {column!r} both give {field}: "
                f"map one of them to another field with --map, or remove it"
            )
        columns[column] = field
    return columns


def _fields_note(path: Path, header: Sequence[str], columns: Mapping[str, str], note: Note) -> None:
    ignored = [c for c in header if c not in columns]
    if ignored:
        note(f"{path.name}: columns not used by training: {', '.join(map(str, ignored))}")
    absent = [f for f in KEPT if f not in columns.values()]
    if absent:
        note(
            f"{path.name}: no column for {', '.join(absent)}; agents that need them will say so "
            f"(map a column with --map COLUMN=field)"
        )


def _check_required(fields: Iterable[str], where: str) -> None:
    missing = [f for f in REQUIRED if f not in fields]
    if missing:
        raise TrainingError(
            f"{where} has no {' or '.join(missing)} column; training needs each reading's "
            f"machine and time ({', '.join(HEADER_OF[f] for f in missing)}, or --map COLUMN=field)"
        )


def read_csv(
    path: Path,
    mapping: Mapping[str, str] | None = None,
    skip_invalid: bool = False,
    labels: Sequence[Label] = (),
    note: Note = _log_note,
) -> PlantData:
    """A telemetry CSV (a historian export, the dataset, or a plant's own with --map) as
    PlantData. Every row is checked as ingest checks a record, the present columns only. A
    bad row fails the whole read, naming up to 20 rows and their columns, unless
    `skip_invalid`, which leaves bad rows out and says how many."""
    mapping = dict(mapping or {})
    columns: dict[str, str] | None = None
    gathered: _Columns | None = None
    errors: list[str] = []
    bad = 0
    for lines, rows in read_batches(path, BATCH_ROWS):
        if columns is None:
            header = list(rows[0])
            columns = _resolve_columns(header, mapping)
            _check_required(columns.values(), str(path))
            _fields_note(path, header, columns, note)
            present = set(columns.values())
            stand_ins = {f: v for f, v in _STAND_IN.items() if f not in present}
            column_of = {f: c for c, f in columns.items()}
            gathered = _Columns(present)
        assert gathered is not None
        for line, row in zip(lines, rows, strict=True):
            data = {field: row[column] for column, field in columns.items()}
            try:
                if not (data["timestamp"] or "").strip():
                    raise RecordError("empty; training needs each reading's time", "timestamp")
                record = parse_record({**stand_ins, **data})
            except RecordError as exc:
                bad += 1
                if len(errors) < MAX_LISTED_ERRORS:
                    column = column_of.get(exc.field or "", exc.field or "row")
                    errors.append(f"line {line}, column {column}: {exc.reason}")
                continue
            gathered.add(record)
    if gathered is None:
        raise TrainingError(f"{path} has a header but no readings")
    if bad and not skip_invalid:
        more = f"\n  ... and {bad - len(errors)} more" if bad > len(errors) else ""
        raise TrainingError(
            f"{path}: {bad} invalid row(s); nothing was trained (--skip-invalid trains on the "
            f"valid rows):\n  " + "\n  ".join(errors) + more
        )
    if bad:
        note(f"{path.name}: skipped {bad} invalid row(s), e.g. {errors[0]}")
    return _plant_data(gathered, path.name, labels, note)


def _plant_data(gathered: _Columns, name: str, labels: Sequence[Label], note: Note) -> PlantData:
    cols, dropped = gathered.finish(note)
    if dropped:
        note(f"{name}: dropped {dropped} repeated reading(s) (same machine and timestamp)")
    rows, machines = len(cols["machine_id"]), len(np.unique(cols["machine_id"]))
    if rows == 0:
        raise TrainingError(f"{name}: no valid readings to train on")
    return PlantData(
        columns=cols,
        labels=tuple(labels),
        source=f"{name} ({rows:,} rows, {machines} machines)",
        missing=tuple(f for f in KEPT if f not in cols),
    )


def from_store(
    settings: Settings,
    since: float | None = None,
    until: float | None = None,
    labels: Sequence[Label] | None = None,
    note: Note = _log_note,
) -> PlantData:
    """The historian's telemetry between `since` and `until` (Unix seconds), with the
    stored labels (or `labels` when given, from a labels file)."""
    import sqlalchemy as sa

    from ..history.telemetry import read_records
    from ..ingest.schema import parse_record
    from ..store import Store

    span = f"{_when(since)}..{_when(until)}"
    store = Store.from_settings(settings)
    # A missing SQLite file would be created empty by connecting to it: say so instead.
    if not settings.data.database_url and not (settings.data_dir / "factory.db").exists():
        raise TrainingError(
            f"no telemetry store at {settings.data_dir / 'factory.db'}: set FACTORY_DATA_DIR "
            "to the server's data folder, or DATABASE_URL"
        )
    gathered = _Columns(KEPT)
    read = bad = 0
    engine = sa.create_engine(store.url)
    try:
        with engine.connect() as conn:
            for row in read_records(conn, since=since, until=until):
                read += 1
                try:
                    gathered.add(parse_record(row))
                except RecordError:  # stored by a version whose ranges were wider
                    bad += 1
    except sa.exc.SQLAlchemyError as exc:
        raise TrainingError(
            f"the telemetry store {store.safe_url} cannot be read: "
            f"{getattr(exc, 'orig', None) or exc}"
        ) from None
    finally:
        engine.dispose()
    if not read:
        raise TrainingError(
            f"the telemetry store {store.safe_url} holds no readings {span} (by record time); "
            "telemetry is kept while history.telemetry_enabled is on, and GET /api/telemetry "
            "shows what is there"
        )
    if bad:
        note(f"the telemetry store: skipped {bad} stored reading(s) that are no longer valid")
    if labels is None:
        # No labels file: the ones people logged (REST, dashboard, `labels import`).
        from ..labels.store import labels_in

        labels = labels_in(Store.from_settings(settings).url)
    return _plant_data(gathered, f"the telemetry store {span}", labels, note)


def _when(moment: float | None) -> str:
    return "" if moment is None else iso(moment) or ""


def read_labels_file(path: Path) -> list[Label]:
    from ..labels.csv import read_labels_csv

    return list(read_labels_csv(path))
