"""`python -m factory_mas bench --quick`, as CI runs it: every section finishes and its
figures add up (records in = predictions out, no errors). Speed itself is never asserted:
these machines are shared and noisy; the bench reports targets, the tests check sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from factory_mas.bench import SECTIONS, all_targets, chosen, summary
from tests.support.app import TEST_ENV
from tests.support.paths import REPO


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """One `bench --quick` of the default sections, run as a user runs it."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = {**os.environ, **TEST_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "factory_mas", "bench", "--quick", "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_default_sections_are_the_whole_path() -> None:
    assert [s.name for s in chosen(set())] == ["process", "pipeline", "http", "alarms"]
    assert [s.name for s in chosen({"mqtt"})] == ["mqtt"]
    assert {s.name for s in SECTIONS} >= {"inference", "mqtt", "scada"}


@pytest.mark.integration
def test_json_says_which_machine(quick_bench: tuple[dict, str]) -> None:
    results, _ = quick_bench
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["python"].count(".") == 2


@pytest.mark.integration
def test_pipeline_adds_up(quick_bench: tuple[dict, str]) -> None:
    p = quick_bench[0]["pipeline"]
    assert p["problems"] == []
    e2e, lat = p["end_to_end"], p["latency"]
    for run in (e2e, lat):
        counts = run["counts"]
        assert counts["accepted"] == run["records"] > 0
        assert counts["rejected"] == counts["agent_errors"] == counts["orchestrator_errors"] == 0
        for agent in ("pm_agent", "energy_agent", "cyber_agent", "safety_agent"):
            assert counts["predictions"][agent] == run["records"]
        assert counts["predictions"]["ppe_agent"] == run["ppe_frames_sent"] > 0
        assert counts["history_dropped"] == 0
    # Every record was timed to its four predictions, every hazard to its alarm.
    assert lat["record_to_prediction_ms"]["count"] == 4 * lat["records"]
    assert lat["alarms_seen"] == lat["triggers"] > 0
    assert lat["record_to_alarm_ms"]["count"] == lat["triggers"]
    assert p["inference_limit"]["per_s"] > 0
    assert p["targets"]["end_to_end_ratio"]["value"] == pytest.approx(
        e2e["per_s"] / p["inference_limit"]["per_s"]
    )


@pytest.mark.integration
def test_alarms_add_up(quick_bench: tuple[dict, str]) -> None:
    a = quick_bench[0]["alarms"]
    assert a["records"] == a["machines"] * round(a["simulated_hours"] * 60 / a["step_minutes"])
    labelled = a["labelled"]
    assert labelled["cyber"] > 0 and labelled["power"] > 0 and labelled["hazard"] > 0
    q = a["quality"]
    assert q["episodes"] == sum(labelled.values())  # each labelled fault judged once
    for agent, v in q["by_agent"].items():
        assert 0 <= v["matched"] <= v["activations"], agent
        assert 0 <= v["recalled"] <= v["episodes"], agent
    assert q["matched"] == sum(v["matched"] for v in q["by_agent"].values())
    k = a["kpis"]
    assert k["activations"] == k["new"] + k["reactivated"] > 0
    assert k["activations_per_period"]["peak"] >= k["activations_per_period"]["average"]
    assert sum(t["activations"] for t in k["top"]) <= k["activations"]
    t = a["targets"]
    assert t["precision"]["value"] == pytest.approx(q["matched"] / q["activations"])
    assert t["activations_per_10min"]["value"] == k["activations_per_period"]["average"]


@pytest.mark.integration
def test_report_names_every_target(quick_bench: tuple[dict, str]) -> None:
    results, stdout = quick_bench
    rows = all_targets(results)
    assert {name for name, _ in rows} >= {
        "pipeline.end_to_end_per_s",
        "pipeline.end_to_end_ratio",
        "pipeline.record_to_alarm_p99_ms",
        "alarms.activations_per_10min",
        "alarms.precision",
        "alarms.recall",
        "alarms.pm_lead_24h_share",
    }
    for name, t in rows:
        assert t["met"] == (
            t["value"] >= t["target"] if t["at_least"] else t["value"] <= t["target"]
        )
        assert name.split(".", 1)[1] in summary(results)
    assert "targets" in stdout and "written to" in stdout
