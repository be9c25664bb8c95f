"""`bench --process` on a small stream: the bench's own bookkeeping must add up (every record
posted is accepted and scored by every telemetry agent, nothing refused, a clean stop).
Timings and memory are what the bench reports, not what a test can hold a machine to."""

from __future__ import annotations

import json
import math
import tomllib

import msgspec
import pytest

from factory_mas.bench.process import (
    TELEMETRY_SLUGS,
    process_report,
    run_process_bench,
    sample_step,
    settings_toml,
    slope_mb_per_100k,
)
from factory_mas.settings import Settings, load_settings

RECORDS = 20_000


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    # One bench run for every check below: it starts a real server and streams to it.
    from tests.support.app import TEST_ENV
    from tests.support.paths import REPO

    settings = load_settings(
        path=REPO / "settings.toml",
        env={"FACTORY_DATA_DIR": str(tmp_path_factory.mktemp("unused")), **TEST_ENV},
    )
    return run_process_bench(settings, quick=True, records=RECORDS)


@pytest.mark.integration
def test_the_server_came_up_and_stopped_cleanly(results):
    c = results["consistency"]
    assert c["ready_reached"]
    assert results["startup"]["runs"] and all(s > 0 for s in results["startup"]["runs"])
    # Scoring can only start once the server answers.
    assert results["memory"]["agents_running_s"] >= results["startup"]["runs"][-1]
    assert c["clean_exit"], results["startup"]["stops"]
    assert not c["killed"]
    assert all(s["shutdown_complete_logged"] for s in results["startup"]["stops"])
    assert not any(s["traceback_in_log"] for s in results["startup"]["stops"])


@pytest.mark.integration
def test_every_record_posted_is_accepted_and_scored_by_every_agent(results):
    c = results["consistency"]
    assert c["records_posted"] == RECORDS
    assert c["records_accepted"] == RECORDS
    assert c["server_accepted"] == RECORDS
    assert c["scored"] == dict.fromkeys(TELEMETRY_SLUGS, RECORDS)
    assert c["all_scored"]
    assert c["posted_equals_accepted"] and c["accepted_equals_scored"]
    assert c["non_2xx"] == 0
    assert c["transport_errors"] == 0
    assert c["status_codes"] == {"202": RECORDS // 500}


@pytest.mark.integration
def test_memory_is_sampled_each_tenth_with_the_work_done(results):
    memory = results["memory"]
    samples = memory["samples"]
    assert [s["records"] for s in samples] == list(range(2_000, RECORDS + 1, 2_000))
    for s in samples:
        assert s["rss_mb"] > 0 and s["hwm_mb"] >= s["rss_mb"]
    assert memory["peak_mb"] >= max(s["rss_mb"] for s in samples)
    assert memory["trend"] in ("flat", "growing")


@pytest.mark.integration
def test_tensorflow_is_not_in_the_serving_process(results):
    assert results["memory"]["tensorflow_loaded"] is False
    assert results["targets"]["tensorflow_loaded"]["met"]


@pytest.mark.integration
def test_results_are_json_and_the_report_renders(results):
    again = json.loads(json.dumps(results, default=float))
    assert set(again["targets"]) == {
        "startup_s",
        "peak_rss_mb",
        "rss_slope_mb_per_100k",
        "tensorflow_loaded",
    }
    for target in again["targets"].values():
        assert set(target) == {"value", "target", "at_least", "met"}
    text = process_report(results)
    assert "spawn to first /health 200" in text
    assert f"posted {RECORDS:,}, accepted {RECORDS:,}" in text
    assert "SCADA off" in text  # TEST_ENV turns it off; the bench says so


def test_the_settings_file_reads_back_as_written(settings: Settings):
    odd = msgspec.structs.replace(
        settings,
        backlog=msgspec.structs.replace(settings.backlog, gemini_model='quote " back\\slash\x7f'),
        agents=msgspec.structs.replace(
            settings.agents,
            ppe=msgspec.structs.replace(settings.agents.ppe, camera_machines={"cam 7": 12}),
        ),
    )
    text = settings_toml(odd)
    tomllib.loads(text)
    assert msgspec.convert(tomllib.loads(text), Settings) == odd


def test_trend_and_sample_arithmetic():
    assert sample_step(1_000_000) == 100_000
    assert sample_step(20_000) == 2_000
    assert sample_step(1_234) == 500
    flat = [{"records": r, "rss_mb": 300.0} for r in (500_000, 600_000, 700_000)]
    assert slope_mb_per_100k(flat) == 0
    rising = [{"records": r, "rss_mb": r / 10_000} for r in (500_000, 600_000, 700_000)]
    assert slope_mb_per_100k(rising) == pytest.approx(10.0)
    assert math.isnan(slope_mb_per_100k(flat[:1]))
