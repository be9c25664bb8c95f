"""Error answers as a client sees them: a failing store is named in general terms, while
its file, URL, SQL and the record's values stay in the server log."""

from __future__ import annotations

import logging
import sqlite3

import msgspec
import pytest

from factory_mas.errors import StoreError
from factory_mas.settings import Settings
from tests.support.app import add_key, running_app
from tests.support.records import record

RETRY = "nothing was changed, try again"


def leaks(text: str, settings: Settings) -> list[str]:
    """What of the store's internals `text` gives away."""
    return [
        secret
        for secret in (str(settings.data_dir), "factory.db", "sqlite", "INSERT", "SELECT", "61.25")
        if secret in text
    ]


async def test_a_failing_store_answers_503_in_general_terms(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="factory_mas.http.api")
    db = settings.data_dir / "factory.db"
    async with running_app(settings) as (_c, client):
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE inbox RENAME TO inbox_away")
        answer = await client.post("/api/ingest", json=record(7, temperature_c=61.25))
        assert answer.status_code == 503, answer.text
        assert answer.json() == {
            "error": "store_unavailable",
            "detail": f"the store could not be used: unavailable; {RETRY}",
        }
        assert leaks(answer.text, settings) == []

        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE inbox_away RENAME TO inbox")
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            locked = await client.post("/api/ingest", json=record(7, temperature_c=61.25))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert locked.status_code == 503
        assert locked.json()["detail"] == f"the store could not be used: database locked; {RETRY}"
    # The whole story is in the log, for whoever runs the server.
    logged = [r.getMessage() for r in caplog.records if "store unavailable" in r.getMessage()]
    assert len(logged) == 2
    assert "no such table: inbox" in logged[0] and str(db) in logged[0]
    assert "database is locked" in logged[1]


async def test_a_key_check_without_a_store_answers_503_in_general_terms(
    settings: Settings,
) -> None:
    settings = msgspec.structs.replace(
        settings, auth=msgspec.structs.replace(settings.auth, enabled=True)
    )
    key = await add_key(settings, "wall", "viewer")
    async with running_app(settings) as (_c, client):
        with sqlite3.connect(settings.data_dir / "factory.db") as conn:
            conn.execute("ALTER TABLE api_keys RENAME TO api_keys_away")
        answer = await client.get("/status", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 503
    assert answer.json()["detail"] == (
        "API keys cannot be checked now: the store could not be used: unavailable"
    )
    assert leaks(answer.text, settings) == []


@pytest.mark.parametrize(
    ("detail", "public"),
    [
        ("(sqlite3.OperationalError) database or disk is full", "disk full"),
        ("OSError: [Errno 28] No space left on device", "disk full"),
        ("(sqlite3.OperationalError) database is locked", "database locked"),
        (
            "(psycopg.errors.LockNotAvailable) canceling statement due to lock timeout",
            "database locked",
        ),
        ("attempt to write a readonly database", "database read-only"),
        ("(psycopg.OperationalError) connection refused", "unavailable"),
    ],
)
def test_store_errors_say_what_failed_without_detail(detail: str, public: str) -> None:
    error = StoreError(f"database sqlite:////srv/factory.db: OperationalError: {detail}")
    assert error.public == f"the store could not be used: {public}"
