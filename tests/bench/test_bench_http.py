"""`bench --http` on a small run: its bookkeeping must add up (every record posted is
accepted and scored by every telemetry agent, no request refused, every WebSocket client
gets every frame pushed to it) and its report must render. Speeds and ratios are what the
bench reports, never what a test holds a shared machine to."""

from __future__ import annotations

import json
import signal

import pytest

from factory_mas.bench.http import GET_SIDES, HttpSizes, http_report, run_http_bench
from factory_mas.settings import load_settings

# The benchmark runs real uvicorns and clients.
pytestmark = pytest.mark.integration

# Small enough for a test (the quick run takes ~25 s), large enough for every phase to do
# real work: several ingest posts, a loaded GET round, frames to each WebSocket client.
SIZES = HttpSizes(
    ingest_records=2_000,
    get_round_s=0.3,
    get_rounds=1,
    ws_clients=20,
    ws_processes=1,
    ws_inject_s=2.0,
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # One bench run for every check below: it starts two real uvicorns and three clients.
    from tests.support.app import TEST_ENV
    from tests.support.paths import REPO

    settings = load_settings(
        path=REPO / "settings.toml",
        env={"FACTORY_DATA_DIR": str(tmp_path_factory.mktemp("unused")), **TEST_ENV},
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    figures = run_http_bench(settings, quick=True, sizes=SIZES)
    # uvicorn swaps them per server; the bench must leave them as it found them.
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
    return figures


def test_every_record_posted_is_accepted_and_scored_by_every_agent(results: dict) -> None:
    c = results["consistency"]
    posted = c["records_posted"]
    # The warm-up batch, the ingest run, the loaded GET rounds' stream, the fan-out stream.
    assert posted > SIZES.ingest_batch + SIZES.ingest_records
    assert c["records_accepted"] == c["server_accepted"] == posted
    assert c["records_rejected"] == 0
    assert c["scored"] == dict.fromkeys(
        ("pm_agent", "energy_agent", "cyber_agent", "safety_agent"), posted
    )
    assert c["all_scored"]
    assert results["ingest"]["records"] == SIZES.ingest_records


def test_no_request_failed(results: dict) -> None:
    c = results["consistency"]
    assert c["non_2xx"] == c["transport_errors"] == c["agent_errors"] == 0
    assert c["errors"] == 0, c["first_error"]
    assert set(c["statuses"]) == {"200", "202"}
    assert c["requests"] == sum(c["statuses"].values())


def test_every_get_side_was_measured(results: dict) -> None:
    state = results["system_state"]
    for case in (state["idle"], state["loaded"]):
        for side in GET_SIDES:
            assert case[side]["requests"] > 0
            assert case[side]["per_s"] > 0
        # The bare copy of /system-state is its bytes, far more than the small answer.
        assert case["bare_state"]["response_bytes"] > case["bare"]["response_bytes"]
        assert case["ratio"] == case["state"]["per_s"] / case["bare"]["per_s"]
    assert state["loaded"]["ingest_per_s"] > 0
    assert state["state"]["bytes"] > 0


def test_every_websocket_client_got_every_frame(results: dict) -> None:
    ws = results["websocket"]
    assert ws["clients"] == ws["connected"] == ws["registered"] == SIZES.ws_clients
    assert ws["connect_errors"] == ws["closed_early"] == 0
    assert ws["frames_per_client"] > 0
    assert ws["without_frames"] == 0
    assert ws["min_frames"] == ws["frames_per_client"]
    assert ws["frames"] == ws["frames_per_client"] * SIZES.ws_clients
    assert ws["behind"] == ws["server_dropped"] == 0
    assert ws["lag_ms"]["count"] > 0
    assert results["consistency"]["ws_without_frames"] == 0


def test_results_are_json_and_the_report_renders(results: dict) -> None:
    again = json.loads(json.dumps(results, default=float))
    assert again["quick"] is True
    assert again["machine"]["cores"] >= 1
    target = again["targets"]["system_state_ratio"]
    assert set(target) == {"value", "target", "at_least", "met"}
    assert target["met"] == (target["value"] >= target["target"])
    text = http_report(results)
    assert "POST /api/ingest" in text
    assert "/system-state" in text and "bare /bare" in text
    assert f"WebSocket /api/pm/ws: {SIZES.ws_clients} clients" in text
    assert "met" in text.splitlines()[-1] or "MISSED" in text.splitlines()[-1]
