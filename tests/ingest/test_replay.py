"""The replay publisher: simulated or CSV telemetry, retimed to now, into any sink."""

from __future__ import annotations

import asyncio
import csv
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from factory_mas.hub import Hub
from factory_mas.ingest.intake import Intake
from factory_mas.ingest.replay import CameraReplay, Replay
from factory_mas.ingest.schema import CSV_HEADERS, parse_record
from factory_mas.settings import ReplaySettings
from factory_mas.topics import REJECTED as REJECTED_TOPIC
from factory_mas.topics import TELEMETRY as TELEMETRY_TOPIC
from tests.support.hub import drain
from tests.support.waiting import until

TIMEOUT_S = 15.0


class Sink:
    """Collects what the replay sends, call by call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[dict[str, Any]]]] = []

    async def __call__(self, rows: list[dict[str, Any]], indices: list[int] | None) -> None:
        self.calls.append((indices, [dict(r) for r in rows]))

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [r for _, rows in self.calls for r in rows]


# ------------------------------------------------------------------ simulated


@pytest.mark.parametrize(("machines", "limit"), [(7, 50), (50, 1000), (3, 3)])
async def test_unpaced_replay_sends_exactly_the_limit(machines, limit):
    sink = Sink()
    replay = Replay(ReplaySettings(rate=0, machines=machines, seed=3), sink, limit=limit)
    started = datetime.now(UTC)
    await asyncio.wait_for(replay.run(), TIMEOUT_S)
    ended = datetime.now(UTC)

    rows = sink.rows
    assert len(rows) == limit
    assert replay.sent == limit
    assert replay.stats()["sent"] == limit
    records = [parse_record(r) for r in rows]  # every row is a valid record
    assert {r.machine_id for r in records} == set(range(1, machines + 1))
    for r in records:
        assert started <= r.timestamp <= ended, "a replayed record should be stamped now"


async def test_without_retime_the_simulator_clock_advances_by_step_minutes():
    sink = Sink()
    settings = ReplaySettings(rate=0, machines=4, seed=3, step_minutes=2.5)
    await asyncio.wait_for(Replay(settings, sink, retime=False, limit=4 * 12).run(), TIMEOUT_S)
    records = [parse_record(r) for r in sink.rows]
    assert len(records) == 48
    by_machine: dict[int, list[datetime]] = {}
    for r in records:
        by_machine.setdefault(r.machine_id, []).append(r.timestamp)
    assert set(by_machine) == {1, 2, 3, 4}
    for stamps in by_machine.values():
        assert len(stamps) == 12
        steps = {b - a for a, b in itertools.pairwise(stamps)}
        assert steps == {timedelta(minutes=2.5)}
    # One round of readings shares one timestamp.
    assert len({r.timestamp for r in records[:4]}) == 1


async def test_the_same_seed_replays_the_same_readings():
    first, second = Sink(), Sink()
    settings = ReplaySettings(rate=0, machines=5, seed=11)
    await Replay(settings, first, retime=False, limit=100).run()
    await Replay(settings, second, retime=False, limit=100).run()
    assert first.rows == second.rows
    other = Sink()
    await Replay(ReplaySettings(rate=0, machines=5, seed=12), other, retime=False, limit=100).run()
    assert other.rows != first.rows


async def test_paced_replay_sends_one_round_of_all_machines_per_batch():
    sink = Sink()
    # A rate this high never waits; what matters is the shape of the batches.
    settings = ReplaySettings(rate=1e9, machines=6, seed=3)
    await asyncio.wait_for(Replay(settings, sink, limit=18).run(), TIMEOUT_S)
    assert [sorted(r["machine_id"] for r in rows) for _, rows in sink.calls] == [
        list(range(1, 7))
    ] * 3


# ------------------------------------------------------------------ CSV

GOOD = [
    {
        "Timestamp": f"2024-01-01 00:0{i}:00",
        "Machine_ID": str(i + 1),
        "Operation_Mode": "Active",
        "Temperature_C": "65.5",
        "Vibration_Hz": "1.5",
        "Power_Consumption_kW": "6.1",
        "Network_Latency_ms": "12",
        "Packet_Loss_%": "0.5",
        "Quality_Control_Defect_Rate_%": "2.0",
        "Production_Speed_units_per_hr": "300",
        "Predictive_Maintenance_Score": "0.4",
        "Error_Rate_%": "2.5",
        "Efficiency_Status": "High",
    }
    for i in range(4)
]
BAD_LINE = 4  # line 1 is the header; the bad row is the third data row


def write_kaggle_csv(path: Path) -> Path:
    bad = {**GOOD[0], "Machine_ID": "9", "Packet_Loss_%": "150"}
    rows = [GOOD[0], GOOD[1], bad, GOOD[2], GOOD[3]]
    with path.open("w", encoding="utf-8-sig", newline="") as fh:  # with a BOM, as Excel saves
        writer = csv.DictWriter(fh, fieldnames=list(CSV_HEADERS))
        writer.writeheader()
        writer.writerows(rows)
    assert path.read_bytes().startswith(b"\xef\xbb\xbfTimestamp,")
    return path


async def replay_csv_through_intake(csv_path: Path, retime: bool) -> tuple[Intake, list, list]:
    hub = Hub(queue_size=64)
    data = hub.subscribe(TELEMETRY_TOPIC, name="agent")
    rejected = hub.subscribe(REJECTED_TOPIC, name="watcher")
    intake = Intake(hub, max_body_bytes=1_000_000)
    settings = ReplaySettings(csv=str(csv_path), loop=False, rate=0, machines=50)

    async def to_hub(rows: list[dict[str, Any]], indices: list[int] | None) -> None:
        await intake.accept(rows, replay.source, indices=indices)

    replay = Replay(settings, to_hub, retime=retime)
    await asyncio.wait_for(replay.run(), TIMEOUT_S)
    assert replay.error is None
    return intake, await drain(data), await drain(rejected)


@pytest.mark.parametrize("retime", [False, True], ids=["as-recorded", "retimed"])
async def test_csv_replay_publishes_good_rows_and_rejects_the_bad_one(tmp_path, retime):
    path = write_kaggle_csv(tmp_path / "plant.csv")
    started = datetime.now(UTC)
    intake, published, rejections = await replay_csv_through_intake(path, retime)
    ended = datetime.now(UTC)

    source = "csv:plant.csv"
    why = [(r.index, r.field, r.reason) for r in rejections]
    assert [r.machine_id for r in published] == [1, 2, 3, 4], f"rejected instead: {why}"
    assert published[0].temperature_c == 65.5
    assert published[0].efficiency_status == "High"
    if retime:
        assert all(started <= r.timestamp <= ended for r in published)
    else:
        assert published[0].timestamp == datetime(2024, 1, 1, tzinfo=UTC)

    assert len(rejections) == 1
    rejection = rejections[0]
    assert rejection.index == BAD_LINE, "a CSV rejection names the line of the file"
    assert rejection.field == "packet_loss_pct"
    assert rejection.source == source
    assert intake.stats()["accepted"] == {source: 4}
    assert intake.stats()["rejected"] == {source: 1}


async def test_csv_replay_in_small_batches_keeps_line_numbers(tmp_path):
    path = write_kaggle_csv(tmp_path / "plant.csv")
    sink = Sink()
    settings = ReplaySettings(csv=str(path), loop=False, rate=0, machines=2)
    await asyncio.wait_for(Replay(settings, sink, retime=False).run(), TIMEOUT_S)
    assert [lines for lines, _ in sink.calls] == [[2, 3], [4, 5], [6]]
    assert Counter(r["Machine_ID"] for r in sink.rows) == Counter(["1", "2", "9", "3", "4"])


async def test_csv_replay_loops_when_asked(tmp_path):
    path = write_kaggle_csv(tmp_path / "plant.csv")
    sink = Sink()
    settings = ReplaySettings(csv=str(path), loop=True, rate=0, machines=50)
    await asyncio.wait_for(Replay(settings, sink, retime=False, limit=12).run(), TIMEOUT_S)
    assert [r["Machine_ID"] for r in sink.rows] == ["1", "2", "9", "3", "4"] * 2 + ["1", "2"]


async def test_a_missing_csv_sets_the_error_and_does_not_raise(tmp_path):
    sink = Sink()
    missing = tmp_path / "no-such-file.csv"
    settings = ReplaySettings(csv=str(missing), loop=True, rate=0)
    async with Replay(settings, sink) as replay:
        await until(lambda: not replay.stats()["running"], "the replay task to end")
        assert replay.error is not None
        assert "no-such-file.csv" in replay.error
        assert replay.stats()["error"] == replay.error
        assert replay.stats()["source"] == "csv:no-such-file.csv"
    assert sink.calls == []
    assert replay.sent == 0


async def test_leaving_the_context_stops_an_endless_replay():
    sink = Sink()
    async with Replay(ReplaySettings(rate=0, machines=5), sink) as replay:
        await until(lambda: replay.sent >= 500, "the replay to send")
        assert replay.stats()["running"] is True
    assert replay.stats()["running"] is False
    assert replay.error is None


async def test_a_csv_that_is_not_utf8_sets_the_error_and_does_not_raise(tmp_path):
    path = write_kaggle_csv(tmp_path / "latin1.csv")
    path.write_bytes(path.read_bytes() + "99,Température\n".encode("latin-1"))
    sink = Sink()
    settings = ReplaySettings(csv=str(path), loop=False, rate=0)
    async with Replay(settings, sink) as replay:
        await until(lambda: not replay.stats()["running"], "the replay task to end")
        assert replay.error is not None, "the replay died without saying why"
        assert "latin1.csv" in replay.error


async def test_simulated_cameras_feed_the_ppe_agent(settings):
    import msgspec

    from tests.support.app import running_app

    replay = msgspec.structs.replace(
        settings.replay, enabled=True, rate=10.0, cameras=2, camera_fps=20.0
    )
    async with running_app(msgspec.structs.replace(settings, replay=replay)) as (_, client):

        async def cameras_seen() -> set[str]:
            while True:
                body = (await client.get("/api/ppe/history?limit=500")).json()
                seen = {p["camera_id"] for p in body["predictions"]}
                if seen >= {"cam-1", "cam-2"}:
                    return seen
                await asyncio.sleep(0.05)

        assert await asyncio.wait_for(cameras_seen(), TIMEOUT_S) == {"cam-1", "cam-2"}
        status = (await client.get("/status")).json()
        assert status["replay"]["cameras"]["sent"] >= 2
        prediction = (await client.get("/api/ppe/history?limit=1")).json()["predictions"][0]
        assert set(prediction["result"]["probabilities"]) == {"helmet", "boots", "pants", "shirt"}


async def test_camera_frames_are_decodable_jpegs_at_the_asked_count():
    from factory_mas.agents.ppe.frames import Limits, frames_of_payload

    sent: list[bytes] = []

    async def keep(_topic: str, jpeg: bytes) -> None:
        sent.append(jpeg)

    cameras = CameraReplay(ReplaySettings(cameras=3, camera_fps=1000.0), keep)
    cameras.frames = 30
    await asyncio.wait_for(cameras.run(), TIMEOUT_S)
    assert len(sent) == 30
    limits = Limits(max_bytes=10**7, max_pixels=10**7, size=(64, 64))
    frames = [f for jpeg in sent for f in frames_of_payload(jpeg, "cam", limits)]
    assert len(frames) == 30 and all(f.pixels.shape == (64, 64, 3) for f in frames)
