"""The whole process as a user runs it: real uvicorn, real HTTP and WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from websockets.sync.client import connect

from factory_mas.app import build_components
from tests.support.app import running_app
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import wait_until


@pytest.mark.integration
def test_default_replay_streams_predictions_for_all_50_machines(server_factory):
    server = server_factory({"FACTORY_REPLAY_ENABLED": "true", "FACTORY_REPLAY_RATE": "500"})

    def machines_seen():
        body = server.get("/api/pm/history?limit=2000").json()
        return {p["machine_id"] for p in body["predictions"]} == set(range(1, 51))

    wait_until(machines_seen, what="predictions for machines 1..50 in /api/pm/history")
    status = server.get("/status").json()
    assert status["replay"]["running"] is True
    assert status["ingest"]["accepted"]["replay"] >= 50
    assert status["agents"]["pm_agent"]["machines"]["count"] == 50
    health = server.get("/health").json()
    assert health["status"] == "ok"
    assert health["components"]["agents"]["pm_agent"] == "running"


@pytest.mark.integration
def test_posted_record_reaches_history_and_websocket(server_factory):
    server = server_factory()
    ws_url = server.url.replace("http", "ws") + "/api/pm/ws?machine_id=7"
    with connect(ws_url, open_timeout=10) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["type"] == "hello" and hello["data"]["status"] == "running"
        response = server.post("/api/pm/predict", record(7, temperature_c=71.5))
        assert response.status_code == 200
        prediction = response.json()
        assert prediction["agent_id"] == "pm_agent" and prediction["machine_id"] == 7
        assert 0.0 <= prediction["result"]["failure_probability"] <= 1.0
        assert prediction["level"] in {"NORMAL", "CAUTION", "WARNING", "CRITICAL", "EMERGENCY"}
        # Records of other machines must not reach a client filtered on machine 7.
        server.post("/api/pm/predict", record(8))
        server.post("/api/ingest", [record(7, temperature_c=72.0), record(9)])
        frames = []
        while sum(len(f["data"]) for f in frames if f["type"] == "predictions") < 2:
            frame = json.loads(ws.recv(timeout=10))
            frames.append(frame)
        machine_ids = {
            p["machine_id"] for f in frames if f["type"] == "predictions" for p in f["data"]
        }
        assert machine_ids == {7}

    history = server.get("/api/pm/history?machine_id=7").json()["predictions"]
    assert len(history) == 2
    assert history[-1]["result"] == prediction["result"]  # oldest last: newest first order


@pytest.mark.integration
def test_bad_input_is_answered_clearly_and_the_server_keeps_serving(server_factory):
    server = server_factory()
    missing = {k: v for k, v in record(3).items() if k != "vibration_hz"}
    cases = [
        ("/api/pm/predict", b"{not json", 400, "invalid_json"),
        ("/api/pm/predict", b"", 400, "empty_body"),
        ("/api/pm/predict", json.dumps(missing).encode(), 422, "vibration_hz"),
        (
            "/api/pm/predict",
            json.dumps(record(3, temperature_c="hot")).encode(),
            422,
            "temperature_c",
        ),
        (
            "/api/pm/predict",
            json.dumps(record(3, packet_loss_pct=140)).encode(),
            422,
            "packet_loss_pct",
        ),
        (
            "/api/ingest",
            json.dumps([record(3, operation_mode="Broken")]).encode(),
            422,
            "operation_mode",
        ),
        ("/api/ingest", b"[]", 400, "empty_batch"),
    ]
    for path, body, status, named in cases:
        response = server.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code == status, (path, body, response.text)
        answer = response.json()
        assert set(answer) >= {"error", "detail"}
        assert named in answer["detail"] or named == answer["error"], answer

    bad_query = server.get("/api/pm/history?limit=lots")
    assert bad_query.status_code == 400 and "limit" in bad_query.json()["detail"]

    # A batch with good and bad records keeps the good ones.
    mixed = server.post("/api/ingest", [record(4), record(5, network_latency_ms=-3), record(6)])
    assert mixed.status_code == 202
    body = mixed.json()
    assert body["accepted"] == 2 and body["rejected"] == 1
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["field"] == "network_latency_ms"
    wait_until(
        lambda: (
            {p["machine_id"] for p in server.get("/api/pm/history").json()["predictions"]} >= {4, 6}
        ),
        what="the two good records of the mixed batch scored",
    )
    status = server.get("/status").json()
    assert status["ingest"]["rejected"]["http"] == 2
    assert server.get("/health").status_code == 200


@pytest.mark.integration
def test_history_and_counters_survive_a_graceful_restart(server_factory, tmp_path):
    server = server_factory()
    for machine in range(1, 6):
        assert server.post("/api/pm/predict", record(machine)).status_code == 200
    before = server.get("/api/pm/history").json()["predictions"]
    # uvicorn re-raises SIGTERM after its graceful shutdown, as a process should.
    assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)

    again = server_factory(data_dir=server.data_dir)
    after = again.get("/api/pm/history").json()["predictions"]
    assert after == before
    assert again.get("/api/pm/status").json()["counters"]["predictions"] == 5


@pytest.mark.integration
def test_kill_9_keeps_what_was_checkpointed(server_factory):
    server = server_factory({"FACTORY_AGENTS_PM_CHECKPOINT_INTERVAL_S": "0.2"})
    posted_at = time.time()
    assert server.post("/api/pm/predict", [record(m) for m in range(10, 20)]).status_code == 200
    wait_until(
        lambda: (server.get("/api/pm/status").json()["last_checkpoint_at"] or 0) > posted_at,
        what="a checkpoint after the post",
    )
    server.stop(signal.SIGKILL)

    again = server_factory(data_dir=server.data_dir)
    machines = {p["machine_id"] for p in again.get("/api/pm/history").json()["predictions"]}
    assert machines == set(range(10, 20))


@pytest.mark.integration
def test_sigterm_stops_the_server_promptly(server_factory):
    server = server_factory({"FACTORY_REPLAY_ENABLED": "true", "FACTORY_REPLAY_RATE": "0"})
    wait_until(
        lambda: server.get("/api/pm/status").json()["counters"].get("predictions", 0) > 1000,
        what="the unpaced replay under way",
    )
    # The 20 s wait is a hang guard, not the promise; the promise (within 5 s) is measured
    # in the bench command, where timing belongs.
    assert server.stop(signal.SIGTERM, timeout_s=20) in (0, -signal.SIGTERM)
    assert "Traceback" not in server.output()


@pytest.mark.integration
def test_a_bad_setting_stops_start_up_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "factory_mas"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PORT": "eighty", "FACTORY_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "server.port" in lines[0] and "'eighty'" in lines[0] and "PORT" in lines[0]
    assert "integer" in lines[0]
    assert (REPO / "settings.toml").exists()


@pytest.mark.integration
def test_kill_9_right_after_ingest_loses_no_accepted_record(server_factory):
    # No checkpoint will come in time: only the ingest journal can save these records.
    server = server_factory({"FACTORY_AGENTS_PM_CHECKPOINT_INTERVAL_S": "3600"})
    accepted = []
    for start in range(0, 300, 30):
        batch = [record(m % 50 + 1, temperature_c=40 + m / 10) for m in range(start, start + 30)]
        answer = server.post("/api/ingest", batch)
        assert answer.status_code == 202
        accepted.extend(batch)
    server.stop(signal.SIGKILL)

    again = server_factory(data_dir=server.data_dir)
    history = again.get("/api/pm/history?limit=1000").json()["predictions"]
    assert len(history) == len(accepted)
    status = again.get("/api/pm/status").json()
    assert status["journal"]["scored_up_to"] >= 10


@pytest.mark.integration
def test_kill_9_after_history_was_stored_stores_each_rescored_record_once(server_factory):
    no_checkpoints = {
        f"FACTORY_AGENTS_{agent}_CHECKPOINT_INTERVAL_S": "3600"
        for agent in ("PM", "ENERGY", "CYBER", "SAFETY")
    }
    # Every prediction stored, so each record has its row to be duplicated.
    env = {**no_checkpoints, "FACTORY_HISTORY_SAMPLE_S": "0"}
    server = server_factory(env)
    records = [record(m % 50 + 1, temperature_c=40 + m / 10) for m in range(300)]
    for start in range(0, len(records), 60):
        assert server.post("/api/ingest", records[start : start + 60]).status_code == 202
    # The four telemetry agents' predictions of all of them are in the store, and no
    # checkpoint says so: after the kill each agent scores the whole journal again.
    wait_until(
        lambda: server.get("/status").json()["history"]["written"] == 4 * len(records),
        what="every prediction stored",
    )
    server.stop(signal.SIGKILL)

    again = server_factory(env, data_dir=server.data_dir)

    def history_settled() -> dict | None:
        h = again.get("/status").json()["history"]
        return h if h["written"] + h["duplicates"] >= 4 * len(records) else None

    stats = wait_until(history_settled, what="the rescored predictions written or found")
    assert (stats["written"], stats["duplicates"]) == (0, 4 * len(records))
    stored = again.get("/api/pm/history?source=store&limit=1000").json()["predictions"]
    assert len(stored) == len(records)
    positions = {(p["journal_seq"], p["journal_index"]) for p in stored}
    assert len(positions) == len(records) and None not in {seq for seq, _ in positions}


async def test_the_journal_is_pruned_once_checkpoints_cover_it(settings):
    c = build_components(settings)
    async with c.store, c.inference, c.agents[0] as agent:
        for m in range(1, 6):
            await c.intake.accept([record(m)], "http", journal=True)
        assert await c.store.inbox_size() == 5

        async def scored_all():
            while agent.inbox_cursor < 5:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(scored_all(), 20)
        assert await c.prune_journal() == 0  # nothing is checkpointed yet
        await agent.save_checkpoint()
        assert await c.prune_journal() == 5
        assert await c.store.inbox_size() == 0
        # New rows never reuse the numbers of pruned ones.
        await c.intake.accept([record(9)], "http", journal=True)
        assert (await c.store.inbox_after(0))[0][0] == 6


async def test_the_journal_is_pruned_while_ppe_agent_runs(settings):
    # ppe_agent takes camera frames, never journaled telemetry: its cursor stayed 0 and
    # held every row back, until the journal filled and ingest answered 503.
    async with running_app(settings) as (c, client):
        ppe = next(a for a in c.agents if a.agent_id == "ppe_agent")
        telemetry = [a for a in c.agents if a is not ppe]
        assert ppe.status == "running" and not ppe.reads_journal
        assert {a.status for a in telemetry} == {"running"} and len(telemetry) == 4
        for m in range(1, 6):
            assert (await client.post("/api/ingest", json=[record(m)])).status_code == 202
        assert await c.store.inbox_size() == 5

        async def scored_all():
            # The telemetry historian's stored cursor holds the journal back too.
            while min(a.inbox_cursor for a in telemetry) < 5 or c.telemetry.durable_cursor < 5:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(scored_all(), 20)
        for agent in telemetry:
            await agent.save_checkpoint()
        assert await c.prune_journal() == 5
        assert await c.store.inbox_size() == 0
