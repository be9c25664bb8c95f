"""`labels import FILE.csv` and `labels export`: the plant's labels in and out of the
configured store, as the labels CSV (factory_mas/labels/csv.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from functools import partial
from pathlib import Path
from typing import TextIO

from ..settings import Settings


def cmd_labels(settings: Settings, args: argparse.Namespace) -> int:
    if args.labels_command == "import":
        return _import(settings, Path(args.file), args.skip_invalid)
    return _export(settings, args)


def _import(settings: Settings, path: Path, skip_invalid: bool) -> int:
    from ..labels.csv import parse_labels_csv
    from ..labels.store import add_labels
    from ..store import Store

    try:
        labels, problems = parse_labels_csv(path)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"factory_mas: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    if problems and not skip_invalid:
        print(
            f"factory_mas: {path}: {len(problems)} bad line(s); nothing was stored "
            "(--skip-invalid stores the good ones):\n  " + "\n  ".join(problems),
            file=sys.stderr,
        )
        return 2
    if problems:
        print(
            f"{path}: skipped {len(problems)} bad line(s):\n  " + "\n  ".join(problems),
            file=sys.stderr,
        )

    async def run() -> int:
        async with Store.from_settings(settings) as store:
            ids = await store.write(partial(add_labels, by=_who(), origin="cli"), labels)
        return len(ids)

    stored = asyncio.run(run())
    print(f"stored {stored} label(s) from {path}")
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from ..labels.store import export_labels
    from ..store import Store

    query = {"machine_id": args.machine_id, "since": args.since, "until": args.until}
    write = partial(export_labels, kind=args.kind, **query)

    async def run(out: TextIO) -> int:
        async with Store.from_settings(settings) as store:
            # Written on the store's thread as it is read: memory stays at a page of rows.
            return await store.read(write, out)

    if args.out is None:
        asyncio.run(run(sys.stdout))
        return 0
    try:
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            n = asyncio.run(run(f))
    except OSError as exc:
        print(f"factory_mas: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} label(s) to {args.out}", file=sys.stderr)
    return 0


def _who() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "cli"
