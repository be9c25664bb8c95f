"""Read the Intelligent Manufacturing Dataset's CSV (or any CSV with its header names).

Rows come out raw (dicts of strings) with their line numbers, so validation happens in one
place (`data.schema`) and a rejection can point at the line of the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import FactoryError
from .schema import _ALIASES


class CsvError(FactoryError, ValueError):
    """The file cannot be read as telemetry at all (missing, unreadable, no known columns)."""


def read_batches(path: Path, batch_size: int) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """Yield (the line number where each row starts, rows) in file order."""
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CsvError(f"cannot open {path}: {exc.strerror}") from None
    with fh:
        reader = csv.DictReader(fh)
        batch: list[dict[str, Any]] = []
        lines: list[int] = []
        try:
            header = reader.fieldnames or []
            if not any(h and h.lower() in _ALIASES for h in header):
                raise CsvError(f"{path}: the header {header[:5]} names no telemetry column")
            # A quoted cell may hold line breaks, so a row starts right after the last one.
            ended = reader.line_num
            for row in reader:
                # DictReader puts surplus cells under None; they are not ours to judge.
                row.pop(None, None)
                batch.append(row)
                lines.append(ended + 1)
                ended = reader.line_num
                if len(batch) >= batch_size:
                    yield lines, batch
                    batch, lines = [], []
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CsvError(f"{path} line {reader.line_num + 1}: {exc}") from None
        if batch:
            yield lines, batch
