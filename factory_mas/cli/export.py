"""`python -m factory_mas export`: the stored telemetry (and its labels) out of the store."""

from __future__ import annotations

import argparse
import asyncio
import sys
from functools import partial
from pathlib import Path
from typing import IO, Any

from ..history.export import csv_header, csv_page, jsonl_page, span_error
from ..history.telemetry import Span, stored_pages
from ..settings import Settings
from ..store import Store
from ..times import parse_instant


def instant(raw: str) -> float:
    """An argparse type: ISO 8601 (no zone = UTC) or Unix seconds, as Unix seconds."""
    try:
        return parse_instant(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None


def add_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="write the stored telemetry as CSV (the dataset's headers) or JSON Lines",
        description="Records with since <= time < until, oldest first; CSV is read back by "
        "`train --csv` and the replay.",
    )
    export.add_argument("--machine-id", type=int, metavar="N", help="only this machine")
    export.add_argument("--since", type=instant, help="from this time (ISO 8601 or Unix s)")
    export.add_argument("--until", type=instant, help="up to, not including, this time")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument("--out", metavar="FILE", help="write here (default: standard output)")
    export.add_argument(
        "--labels", metavar="FILE", help="also write the labels of the same span to this CSV"
    )


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    problem = span_error(args.since, args.until)
    if args.machine_id is not None and args.machine_id < 1:
        problem = f"--machine-id {args.machine_id}: machine ids start at 1"
    if problem:
        print(f"factory_mas export: {problem}", file=sys.stderr)
        return 2
    # A missing SQLite file would be created empty by opening it: say so instead.
    if not settings.data.database_url and not (settings.data_dir / "factory.db").exists():
        print(
            f"factory_mas export: no store at {settings.data_dir / 'factory.db'} (set "
            "FACTORY_DATA_DIR to the server's data folder, or DATABASE_URL)",
            file=sys.stderr,
        )
        return 2
    if args.labels and not Path(args.labels).parent.is_dir():
        print(f"factory_mas export: --labels {args.labels}: no such folder", file=sys.stderr)
        return 2
    try:
        out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115 - closed below
    except OSError as exc:
        print(f"factory_mas export: --out {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    span = Span(args.machine_id, args.since, args.until)
    try:
        records, labels = asyncio.run(_export(settings, span, args.format, out, args.labels))
    except OSError as exc:
        print(f"factory_mas export: {exc}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    where = f" to {args.out}" if args.out else ""
    told = f"; {labels:,} labels to {args.labels}" if args.labels else ""
    print(f"exported {records:,} records{where}{told}", file=sys.stderr)
    return 0


async def _export(
    settings: Settings, span: Span, fmt: str, out: IO[bytes], labels_path: str | None
) -> tuple[int, int]:
    records = labels = 0
    async with Store.from_settings(settings) as store:
        if fmt == "csv":
            out.write(csv_header())
        async for page in stored_pages(store, span):
            out.write(csv_page(page) if fmt == "csv" else jsonl_page(page))
            records += len(page)
        if labels_path:
            from ..labels.store import export_labels

            write = partial(
                export_labels, machine_id=span.machine_id, since=span.since, until=span.until
            )
            labels = await store.read(write, Path(labels_path))
    return records, labels
