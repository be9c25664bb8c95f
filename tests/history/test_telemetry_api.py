"""GET /api/telemetry on the whole app (SQLite and PostgreSQL): records posted to
/api/ingest come back as JSON or as a CSV that training and the replay accept again."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import msgspec
import pytest

from factory_mas.app import Components
from factory_mas.errors import SettingsError
from factory_mas.history import export
from factory_mas.history import telemetry as reading_side
from factory_mas.ingest.replay import Replay
from factory_mas.ingest.schema import CSV_HEADERS, parse_many
from factory_mas.settings import Settings, load_settings
from factory_mas.training.sources import read_csv
from tests.history.support import reading
from tests.support.app import TEST_ENV, running_app
from tests.support.paths import REPO
from tests.support.waiting import until


@pytest.fixture
def settings(on_each_database: Settings) -> Settings:
    """The app's store on SQLite, then on PostgreSQL."""
    return on_each_database


# Three machines, 20 minutes each: 60 records.
RECORDS = [reading(m, minute) for minute in range(20) for m in (1, 2, 3)]


async def ingested(c: Components, http: httpx.AsyncClient) -> None:
    for start in range(0, len(RECORDS), 25):
        answer = await http.post("/api/ingest", json=RECORDS[start : start + 25])
        assert answer.status_code == 202, answer.text
    await until(lambda: c.telemetry.written == len(RECORDS), "every record stored")


async def test_ingested_records_come_back_filtered_as_json_and_csv(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, so every answer is streamed over several store calls.
    monkeypatch.setattr(reading_side, "READ_PAGE_ROWS", 7)
    async with running_app(settings) as (c, http):
        await ingested(c, http)
        everything = (await http.get("/api/telemetry")).json()
        assert (everything["count"], everything["truncated"]) == (60, False)
        assert everything["records"][0] == {
            **msgspec.json.decode(msgspec.json.encode(RECORDS[0])),
            "efficiency_status": None,
        }
        times = [r["timestamp"] for r in everything["records"]]
        assert times == sorted(times), "oldest first"

        # since <= time < until, in ISO 8601 or Unix seconds (00:05 is 1735689900).
        q = {"machine_id": 2, "since": "2025-01-01T00:05:00Z", "until": "1735690200"}
        window = (await http.get("/api/telemetry", params=q)).json()
        assert [r["timestamp"][14:16] for r in window["records"]] == [
            f"{m:02d}" for m in range(5, 10)
        ]
        assert {r["machine_id"] for r in window["records"]} == {2}

        capped = (await http.get("/api/telemetry", params={"limit": 10})).json()
        assert (capped["count"], capped["limit"], capped["truncated"]) == (10, 10, True)
        assert capped["records"] == everything["records"][:10]

        answer = await http.get("/api/telemetry", params={"format": "csv", "machine_id": 1})
        assert answer.headers["content-type"].startswith("text/csv")
        assert "attachment" in answer.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(answer.text)))
        assert list(rows[0]) == list(CSV_HEADERS) and len(rows) == 20
        short = await http.get("/api/telemetry", params={"format": "csv", "limit": 3})
        assert len(short.text.splitlines()) == 1 + 3

    # The export is a plant CSV again: for `train --csv` and for the replay.
    path = tmp_path / "export.csv"
    path.write_text(answer.text, encoding="utf-8")
    data = read_csv(path, note=lambda _text: None)
    assert len(data.columns["machine_id"]) == 20
    assert data.columns["temperature_c"][-1] == RECORDS[-3]["temperature_c"]
    once = msgspec.structs.replace(settings.replay, csv=str(path), loop=False)
    replay = Replay(once, _nowhere)
    for _lines, batch in replay.batches():
        good, bad = parse_many(batch, "csv")
        assert bad == [] and {r.machine_id for r in good} == {1}


async def _nowhere(_rows: object, _indices: object) -> None:
    raise AssertionError("not published in this test")


BAD_QUERIES = [
    ({"format": "xml"}, "format"),
    ({"since": "yesterday"}, "since"),
    ({"until": "2025-13-01"}, "until"),
    ({"since": "2025-01-02", "until": "2025-01-01"}, "since"),
    ({"machine_id": "pump"}, "machine_id"),
    ({"machine_id": "0"}, "machine_id"),
    ({"limit": "0"}, "limit"),
    ({"limit": str(export.JSON_LIMIT_MAX + 1)}, "limit"),
    ({"format": "csv", "limit": "-1"}, "limit"),
]


async def test_a_bad_query_answers_400_naming_the_parameter(settings: Settings) -> None:
    async with running_app(settings) as (_c, http):
        for query, named in BAD_QUERIES:
            answer = await http.get("/api/telemetry", params=query)
            body = answer.json()
            assert answer.status_code == 400, (query, body)
            assert body["error"] == "bad_query" and body["detail"].startswith(named), body


async def test_the_historian_is_on_status_and_off_stores_nothing(tmp_path: Path) -> None:
    env = {"FACTORY_DATA_DIR": str(tmp_path / "data"), **TEST_ENV}
    on = load_settings(path=REPO / "settings.toml", env=env)
    async with running_app(on) as (_c, http):
        status = (await http.get("/status")).json()["telemetry"]
        assert status["enabled"] and status["running"] and status["max_rows"] == 5_000_000
    off = load_settings(
        path=REPO / "settings.toml", env={**env, "FACTORY_HISTORY_TELEMETRY_ENABLED": "false"}
    )
    async with running_app(off) as (c, http):
        assert (await http.post("/api/ingest", json=RECORDS[:5])).status_code == 202
        assert (await http.get("/status")).json()["telemetry"] == {
            "enabled": False,
            "running": False,
        }
        # The route still answers from the store: nothing, not an error.
        assert (await http.get("/api/telemetry")).json()["count"] == 0
        assert c.telemetry.written == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TELEMETRY_RETENTION_DAYS", "0"),
        ("TELEMETRY_MAX_ROWS", "0"),
        ("TELEMETRY_MAX_ROWS", "many"),
        ("TELEMETRY_ENABLED", "perhaps"),
    ],
)
def test_bad_settings_are_refused_naming_them(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"history.{name.lower()}"):
        load_settings(path=REPO / "settings.toml", env={f"FACTORY_HISTORY_{name}": value})
