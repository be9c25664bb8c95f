"""`python -m factory_mas export` and `train --from-store`: telemetry posted to a real
app, then read out of its store by the command line."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from factory_mas.cli import main
from factory_mas.labels.model import Label
from factory_mas.labels.store import insert_labels
from factory_mas.settings import Settings
from factory_mas.store import Store
from tests.history.support import reading
from tests.support.app import TEST_ENV, running_app
from tests.support.paths import REPO
from tests.support.waiting import until
from tests.training.test_plant_sources import plant_rows

SETTINGS = ["--settings", str(REPO / "settings.toml")]


def exit_code(argv: list[str]) -> int | str | None:
    """What `python -m factory_mas ARGV` exits with: argparse refuses by SystemExit."""
    try:
        return main([*SETTINGS, *argv])
    except SystemExit as stop:
        return stop.code


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the app and the commands share, as FACTORY_DATA_DIR says."""
    folder = tmp_path / "data"
    for name, value in {**TEST_ENV, "FACTORY_DATA_DIR": str(folder)}.items():
        monkeypatch.setenv(name, value)
    return folder


async def ingest(settings: Settings, records: list[dict]) -> None:
    async with running_app(settings) as (c, http):
        for start in range(0, len(records), 1000):
            answer = await http.post("/api/ingest", json=records[start : start + 1000])
            assert answer.status_code == 202, answer.text
        await until(lambda: c.telemetry.written == len(records), "every record stored", 120)


async def _labelled(settings: Settings) -> None:
    async with Store.from_settings(settings) as store:
        at = datetime(2025, 1, 1, 0, 3, tzinfo=UTC)
        await store.write(
            insert_labels,
            [
                Label(kind="maintenance", machine_id=1, start=at, comment="new bearing"),
                Label(kind="failure", machine_id=2, start=at),
                Label(kind="failure", machine_id=1, start=datetime(2025, 2, 1, tzinfo=UTC)),
            ],
        )


def test_export_writes_csv_json_lines_and_the_labels_of_the_span(
    settings: Settings, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(ingest(settings, [reading(m, minute) for minute in range(10) for m in (1, 2)]))
    asyncio.run(_labelled(settings))
    capsys.readouterr()

    assert main([*SETTINGS, "export"]) == 0
    printed = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(printed.out)))
    assert len(rows) == 20 and rows[0]["Timestamp"] == "2025-01-01T00:00:00Z"
    assert "exported 20 records" in printed.err

    out, labels = tmp_path / "m1.jsonl", tmp_path / "labels.csv"
    argv = ["export", "--machine-id", "1", "--since", "2025-01-01T00:02:00", "--until"]
    argv += ["1735690200", "--format", "json", "--out", str(out), "--labels", str(labels)]
    assert main([*SETTINGS, *argv]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["timestamp"][14:16] for r in lines] == [f"{m:02d}" for m in range(2, 10)]
    assert {r["machine_id"] for r in lines} == {1}
    written = list(csv.DictReader(io.StringIO(labels.read_text(encoding="utf-8"))))
    assert [(r["kind"], r["comment"]) for r in written] == [("maintenance", "new bearing")]
    assert "8 records to" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--since", "yesterday"], "--since: 'yesterday': expected an ISO 8601 time"),
        (["--since", "2025-01-02", "--until", "2025-01-01"], "must be earlier than until"),
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--machine-id", "0"], "--machine-id 0"),
        (["--out", "/nonexistent/folder/x.csv"], "--out /nonexistent/folder/x.csv"),
        (["--labels", "/nonexistent/folder/l.csv"], "--labels /nonexistent/folder/l.csv"),
    ],
)
def test_export_refuses_bad_arguments_with_exit_2(
    argv: list[str], says: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "factory.db").touch()
    assert exit_code(["export", *argv]) == 2
    assert says in capsys.readouterr().err


def test_export_without_a_store_says_where_it_looked(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SETTINGS, "export"]) == 2
    assert f"no store at {data_dir / 'factory.db'}" in capsys.readouterr().err
    assert not data_dir.exists(), "nothing was created"


def test_train_from_store_trains_on_what_was_ingested(
    settings: Settings, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(ingest(settings, plant_rows(machines=5, ticks=1200)))
    capsys.readouterr()
    out = tmp_path / "plant-models"
    argv = ["train", "--from-store", "--since", "2020-01-01", "--only", "cyber_agent"]
    assert main([*SETTINGS, *argv, "--force", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "training on the telemetry store 2020-01-01T00:00:00+00:00.. (6,000 rows" in printed
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["models"]) == {"cyber_agent"}

    # A span holding nothing is said plainly, and nothing is written.
    empty = tmp_path / "empty"
    argv = ["train", "--from-store", "--since", "2100-01-01", "--only", "cyber_agent"]
    assert main([*SETTINGS, *argv, "--out", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "holds no readings 2100-01-01T00:00:00+00:00.." in err
    assert not empty.exists()
    assert exit_code(["train", "--from-store", "--since", "soon"]) == 2
    assert "--since: 'soon': expected an ISO 8601 time" in capsys.readouterr().err
