"""A kill -9 of a real server loses no acknowledged record from the telemetry history."""

from __future__ import annotations

import signal

import pytest

from tests.history.support import reading
from tests.support.waiting import wait_until


@pytest.mark.integration
def test_records_acknowledged_then_killed_are_stored_after_the_restart(server_factory):
    # A minute between flushes: the historian has stored none of them when the kill comes.
    slow = {"FACTORY_HISTORY_FLUSH_INTERVAL_S": "60"}
    server = server_factory(slow)
    records = [reading(m % 5 + 1, m) for m in range(300)]
    for start in range(0, len(records), 60):
        assert server.post("/api/ingest", records[start : start + 60]).status_code == 202
    assert server.get("/status").json()["telemetry"]["written"] == 0
    server.stop(signal.SIGKILL)

    again = server_factory(data_dir=server.data_dir)
    wait_until(
        lambda: again.get("/status").json()["telemetry"]["written"] == len(records),
        what="the journaled records stored",
    )
    stored = again.get("/api/telemetry", params={"limit": 1000}).json()
    assert stored["count"] == len(records)
    got = sorted((r["machine_id"], r["timestamp"]) for r in stored["records"])
    assert got == sorted((r["machine_id"], r["timestamp"]) for r in records)
    status = again.get("/status").json()["telemetry"]
    assert status["from_journal"] == len(records) and status["journal"]["stored_up_to"] > 0
    again.stop()

    # Once stored, a third start reads nothing back and stores nothing twice.
    third = server_factory(data_dir=server.data_dir)
    wait_until(
        lambda: not third.get("/status").json()["telemetry"]["catching_up"],
        what="the journal looked at",
    )
    assert third.get("/status").json()["telemetry"]["written"] == 0
    assert third.get("/api/telemetry", params={"limit": 1000}).json()["count"] == len(records)
