"""factory_mas with its state in PostgreSQL (DATABASE_URL): the whole app end to end, and
the database URL setting. The SQL of every module (tests/store/test_sql.py) and the
app-level tests of the orchestrator, notifier, backlog and configurator run on both
backends through the `store` and `database` fixtures (tests/support/databases.py).

The server comes from tests/support/postgres.py; without PostgreSQL installed these are
skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa

from factory_mas.settings import Settings, load_settings
from factory_mas.store import Store, database_url
from tests.support.app import TEST_ENV, running_app
from tests.support.paths import REPO
from tests.support.postgres import Postgres
from tests.support.scenarios import attack_episode
from tests.support.waiting import until

replace = msgspec.structs.replace


# -- the app end to end --------------------------------------------------------------------


def pg_settings(tmp_path: Path, url: str) -> Settings:
    """Settings as an operator gives them: DATABASE_URL in the form Heroku hands out."""
    heroku = "postgres://" + url.partition("://")[2]
    return load_settings(
        path=REPO / "settings.toml",
        env={**TEST_ENV, "FACTORY_DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": heroku},
    )


@pytest.mark.integration
async def test_the_app_on_postgresql_keeps_its_alarms_across_a_restart(
    tmp_path: Path, postgres: Postgres, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = pg_settings(tmp_path, postgres_url)
    episode = attack_episode()
    machine = episode.records[0]["machine_id"]
    attack = episode.records[: episode.lead + episode.attack_rows]  # no calm at the end

    async def cyber_alarms(client: Any) -> list[dict]:
        answer = await client.get(
            "/api/orchestrator/alarms", params={"source": "cyber_agent", "machine_id": machine}
        )
        return answer.json()["alarms"]

    async with running_app(settings) as (_c, client):
        status = (await client.get("/status")).json()
        assert status["store"]["url"].startswith("postgresql+psycopg://factory:***@127.0.0.1")
        answer = await client.post("/api/ingest", json=attack)
        assert answer.status_code == 202, answer.text

        async def critical() -> list[dict]:
            found = await cyber_alarms(client)
            return found if any(a["highest_level"] == "CRITICAL" for a in found) else []

        before = await until(critical, "a CRITICAL cyber alarm from the ingested records")
        assert all(a["state"] == "ACTIVE_UNACK" for a in before)

        async def decided() -> list[dict]:
            answer = await client.get("/api/orchestrator/decisions", params={"limit": 100})
            return answer.json()["decisions"]

        decisions = await until(decided, "a decision about the alarm")
        history_rows = (await client.get(f"/api/cyber/history?machine_id={machine}")).json()
        assert len(history_rows["predictions"]) == len(attack)

    assert not (tmp_path / "data" / "factory.db").exists()  # nothing went to SQLite

    async with running_app(settings) as (c, client):
        after = await cyber_alarms(client)
        assert [(a["id"], a["state"], a["count"]) for a in after] == [
            (a["id"], a["state"], a["count"]) for a in before
        ]
        answer = await client.get("/api/orchestrator/decisions", params={"limit": 100})
        assert len(answer.json()["decisions"]) >= len(decisions)
        # The restored alarm is the one the orchestrator keeps: the same attack again
        # counts on it instead of raising a new one.
        assert (await client.post("/api/ingest", json=attack)).status_code == 202

        async def counted_again() -> list[dict]:
            found = await cyber_alarms(client)
            return found if sum(a["count"] for a in found) > sum(a["count"] for a in before) else []

        again = await until(counted_again, "the alerts counted on the restored alarm")
        assert {a["id"] for a in again} == {a["id"] for a in before}
        assert c.store.version == (await c.store.read(_max_version))

    assert postgres.password not in caplog.text


def _max_version(conn: sa.Connection) -> int:
    return int(conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() or 0)


def test_the_database_url_setting_and_its_env_alias(tmp_path: Path) -> None:
    assert load_settings(path=REPO / "settings.toml", env={}).data.database_url == ""
    s = load_settings(path=REPO / "settings.toml", env={"DATABASE_URL": "postgres://u:p@h/db"})
    assert Store.from_settings(s).url == database_url("postgres://u:p@h/db")
    sqlite = load_settings(path=REPO / "settings.toml", env={"FACTORY_DATA_DIR": str(tmp_path)})
    assert Store.from_settings(sqlite).url == f"sqlite:///{tmp_path / 'factory.db'}"


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h/db", "u:s3cret@h/db", "sqlite:/relative.db"])
def test_a_database_url_of_another_kind_is_refused_without_echoing_it(url: str) -> None:
    from factory_mas.errors import SettingsError

    with pytest.raises(SettingsError) as info:
        load_settings(path=REPO / "settings.toml", env={"DATABASE_URL": url})
    message = str(info.value)
    assert "database_url" in message and "DATABASE_URL" in message
    assert "s3cret" not in message
