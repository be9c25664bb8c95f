"""`labels import` and `labels export` as a user runs them (real child processes, real exit
codes, the configured SQLite store), and `train --from-store`'s source reading the stored
labels when no labels file is given."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
import sqlalchemy as sa

from factory_mas.labels.csv import read_labels_csv
from factory_mas.labels.model import Label
from factory_mas.labels.store import insert_labels, read_labels
from factory_mas.settings import Settings
from factory_mas.store import Store, config_changes, telemetry
from factory_mas.training.sources import from_store
from tests.support.records import record

HEADER = "kind,machine_id,start,end,detail,alarm_id,source,comment,by\n"
GOOD = (
    "maintenance,3,2026-03-01T08:00:00Z,2026-03-01T09:00:00Z,,,,oil change,ann\n"
    "failure,3,2026-03-04T12:00:00Z,,,,,spindle,ann\n"
    "incident,5,2026-03-02T10:00:00Z,,MECHANICAL_HAZARD,,,,\n"
)
TIMEOUT_S = 60


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACTORY_")}
    env.pop("DATABASE_URL", None)
    env["FACTORY_DATA_DIR"] = str(tmp_path / "data")
    return env


def run(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory_mas", "labels", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def stored(tmp_path: Path) -> list[Label]:
    path = tmp_path / "data" / "factory.db"
    if not path.exists():  # a refused import does not even open the store
        return []
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("labels"):
                return []
            return list(read_labels(conn))
    finally:
        engine.dispose()


@pytest.mark.integration
def test_import_stores_a_file_and_export_writes_it_back(tmp_path, cli_env):
    source = tmp_path / "labels.csv"
    source.write_text(HEADER + GOOD)
    done = run(["import", str(source)], tmp_path, cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stored 3 label(s) from {source}"
    assert [(lb.kind, lb.machine_id) for lb in stored(tmp_path)] == [
        ("maintenance", 3),
        ("incident", 5),
        ("failure", 3),
    ]

    out = tmp_path / "export.csv"
    exported = run(["export", "--out", str(out)], tmp_path, cli_env)
    assert exported.returncode == 0, exported.stderr
    assert exported.stderr.strip() == f"wrote 3 label(s) to {out}"
    assert sorted(read_labels_csv(out), key=lambda lb: lb.start) == sorted(
        read_labels_csv(source), key=lambda lb: lb.start
    )
    only = run(
        ["export", "--machine-id", "3", "--kind", "failure", "--since", "2026-03-02"],
        tmp_path,
        cli_env,
    )
    assert only.returncode == 0, only.stderr
    rows = list(csv.DictReader(only.stdout.splitlines()))
    assert [(r["kind"], r["comment"]) for r in rows] == [("failure", "spindle")]


@pytest.mark.integration
def test_a_bad_line_is_named_and_nothing_is_stored_unless_told(tmp_path, cli_env):
    source = tmp_path / "labels.csv"
    source.write_text(
        HEADER + GOOD + "incident,5,2026-03-02T10:00:00Z,,SMOKE,,,,\nfailure,x,2026-03-03,,,,,,\n"
    )
    done = run(["import", str(source)], tmp_path, cli_env)
    assert done.returncode == 2
    assert "2 bad line(s); nothing was stored" in done.stderr
    assert "line 5, column detail: 'SMOKE' is not one of" in done.stderr
    assert "line 6, column machine_id: 'x' is not a whole number" in done.stderr
    assert stored(tmp_path) == []

    skipped = run(["import", "--skip-invalid", str(source)], tmp_path, cli_env)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped 2 bad line(s)" in skipped.stderr and "line 5, column detail" in skipped.stderr
    assert skipped.stdout.strip() == f"stored 3 label(s) from {source}"
    assert len(stored(tmp_path)) == 3

    missing = run(["import", str(tmp_path / "nope.csv")], tmp_path, cli_env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


@pytest.mark.integration
def test_an_import_is_audited(tmp_path, cli_env):
    source = tmp_path / "labels.csv"
    source.write_text(HEADER + GOOD)
    assert run(["import", str(source)], tmp_path, cli_env).returncode == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'factory.db'}")
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(config_changes)).all()
    engine.dispose()
    assert (row.target, row.origin) == ("labels", "cli") and row.by.startswith("cli")
    assert msgspec.json.decode(row.data)["request"]["kinds"] == {
        "maintenance": 1,
        "failure": 1,
        "incident": 1,
    }


async def test_training_from_the_store_reads_the_stored_labels(settings: Settings):
    async with Store.from_settings(settings) as store:
        rows = [
            {
                "machine_id": m,
                "ts": 1772352000.0 + 60 * i,
                "received_at": time.time(),
                "data": msgspec.json.encode(
                    record(m, timestamp=f"2026-03-01T08:{i:02d}:00Z", temperature_c=60.0 + i)
                ),
            }
            for m in (1, 2)
            for i in range(5)
        ]
        await store.write(lambda conn: conn.execute(telemetry.insert(), rows))
        failure = Label(kind="failure", machine_id=2, start=datetime(2026, 3, 5, tzinfo=UTC))
        await store.write(insert_labels, [failure])
    data = from_store(settings, note=lambda _text: None)
    assert len(data.columns["machine_id"]) == 10
    assert [(lb.kind, lb.machine_id) for lb in data.labels] == [("failure", 2)]
    # A labels file given instead wins, even an empty one.
    assert from_store(settings, labels=[], note=lambda _text: None).labels == ()
