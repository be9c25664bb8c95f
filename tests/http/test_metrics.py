"""GET /metrics against the real app, the Grafana dashboard's names, request ids, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import platform
import re
import signal
import sys

import httpx
import msgspec
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from factory_mas import __version__
from factory_mas.app import Components
from factory_mas.logs import JsonFormatter
from factory_mas.settings import Settings
from tests.support.app import running_app, with_scada
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.records import record
from tests.support.waiting import until

DASHBOARD = REPO / "deploy" / "grafana" / "factory_mas.json"
PROMETHEUS = REPO / "deploy" / "prometheus.yml"
TELEMETRY_AGENTS = ("pm_agent", "energy_agent", "cyber_agent", "safety_agent")
# Hang guard only.

# A line of the text format ("2025-01-01 12:00:00,000 INFO ...") or uvicorn's ("INFO:     ...").
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\d |(DEBUG|INFO|WARNING|ERROR|CRITICAL):\s{2,}")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient) -> Samples:
    answer = await client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scored(c: Components, n: int) -> bool:
    return all(a.counters["predictions"] >= n for a in c.agents if a.agent_id in TELEMETRY_AGENTS)


async def test_counters_reflect_what_was_posted(settings: Settings) -> None:
    async with running_app(settings) as (c, client):
        records = [record(m) for m in (1, 2, 3, 4, 5)]
        bad = record(6, temperature_c="hot")
        answer = await client.post("/api/ingest", json=[*records, bad])
        assert answer.status_code == 202 and answer.json()["accepted"] == 5
        await until(lambda: scored(c, 5), "every telemetry agent to score 5 records")

        samples = await scrape(client)
        assert value(samples, "factory_mas_records_accepted_total", source="http") == 5
        assert value(samples, "factory_mas_records_rejected_total", source="http") == 1
        for agent in TELEMETRY_AGENTS:
            assert value(samples, "factory_mas_agent_predictions_total", agent=agent) == 5
            assert value(samples, "factory_mas_agent_errors_total", agent=agent) == 0
            batches = value(samples, "factory_mas_inference_batch_seconds_count", agent=agent)
            assert batches > 0
            every = value(
                samples, "factory_mas_inference_batch_seconds_bucket", agent=agent, le="+Inf"
            )
            assert every == batches
        assert value(samples, "factory_mas_agent_predictions_total", agent="ppe_agent") == 0
        build = {"version": __version__, "python": platform.python_version()}
        assert value(samples, "factory_mas_build_info", **build) == 1
        assert value(samples, "factory_mas_ready") == 1
        for agent in (*TELEMETRY_AGENTS, "orchestrator", "history"):
            assert value(samples, "factory_mas_hub_queue_depth", subscription=agent) >= 0
        assert value(samples, "factory_mas_mqtt_connected") == 0  # no broker configured

        alert = {
            "level": "CRITICAL",
            "type": "FIRE_RISK",
            "source": "plc",
            "details": "smoke",
            "machine_id": 3,
        }
        assert (await client.post("/api/orchestrator/alert", json=alert)).status_code < 300
        await c.orchestrator.idle()
        await c.notifier.flush()
        samples = await scrape(client)
        assert value(samples, "factory_mas_alarms_open", state="ACTIVE_UNACK") == 1
        assert value(samples, "factory_mas_alarms_open", state="ACTIVE_ACK") == 0
        assert value(samples, "factory_mas_alarms_raised_total") == 1
        assert value(samples, "factory_mas_decisions_total") == 1
        # No Twilio credentials in tests: the text is recorded, not sent.
        assert value(samples, "factory_mas_sms_outbox", status="not_configured") == 1
        assert value(samples, "factory_mas_sms_outbox", status="sent") == 0


@pytest.mark.integration
async def test_scada_servers_listening(settings: Settings) -> None:
    settings = with_scada(settings, modbus_enabled=True, modbus_port=free_port())
    async with running_app(settings) as (_c, client):
        samples = await scrape(client)
    assert value(samples, "factory_mas_scada_server_listening", protocol="modbus") == 1
    assert value(samples, "factory_mas_scada_connections_refused_total", protocol="modbus") == 0
    assert ("factory_mas_scada_server_listening", frozenset({("protocol", "opcua")})) not in samples


async def test_openmetrics_when_asked(settings: Settings) -> None:
    async with running_app(settings) as (_c, client):
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        answer = await client.get("/metrics", headers={"accept": accept})
        assert answer.headers["content-type"].startswith("application/openmetrics-text")
        assert answer.text.rstrip().endswith("# EOF")


async def test_every_metric_of_the_dashboard_exists(settings: Settings) -> None:
    dashboard = DASHBOARD.read_text(encoding="utf-8")
    wanted = set(re.findall(r"factory_mas_\w+", dashboard))
    assert len(wanted) > 10
    async with running_app(settings) as (c, client):
        assert (await client.post("/api/ingest", json=[record(1)])).status_code == 202
        await until(lambda: scored(c, 1), "a record scored")
        names = {name for name, _labels in await scrape(client)}
    assert not wanted - names, f"not served: {sorted(wanted - names)}"
    board = json.loads(dashboard)
    assert board["schemaVersion"] >= 39
    assert any(v["type"] == "datasource" for v in board["templating"]["list"])
    job = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert "credentials_file" in job["authorization"]


async def test_request_id_is_echoed_when_safe_and_replaced_when_not(settings: Settings) -> None:
    async with running_app(settings) as (_c, client):

        async def echoed(given: str | bytes | None) -> str:
            headers = {} if given is None else {"X-Request-ID": given}
            return (await client.get("/health", headers=headers)).headers["x-request-id"]

        for good in ("abc-123", "trace.42_x", "a" * 64):
            assert await echoed(good) == good
        made = {await echoed(None), await echoed(None)}
        assert len(made) == 2
        for bad in ("has space", "a" * 65, 'quote"', "back\\slash", "ünï".encode()):
            replaced = await echoed(bad)
            assert replaced != bad and re.fullmatch(r"[0-9a-f]{32}", replaced)
        # Errors carry it too: a caller can quote it in a report.
        missing = await client.get("/no/such/thing", headers={"X-Request-ID": "lost-1"})
        assert missing.status_code == 404 and missing.headers["x-request-id"] == "lost-1"


async def test_json_lines_carry_the_request_id_of_a_refused_request(settings: Settings) -> None:
    settings = msgspec.structs.replace(
        settings, auth=msgspec.structs.replace(settings.auth, enabled=True)
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("factory_mas")
    logger.addHandler(handler)
    try:
        async with running_app(settings) as (_c, client):
            answer = await client.get("/status", headers={"X-Request-ID": "refused-7"})
            assert answer.status_code == 401
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    refused = [line for line in lines if "401 GET /status" in line["message"]]
    assert [line["request_id"] for line in refused] == ["refused-7"]
    assert refused[0]["level"] == "WARNING" and refused[0]["logger"].startswith("factory_mas.")
    # Lines outside a request have no id: this one comes from the lifespan.
    first_key = [line for line in lines if "made the first admin key" in line["message"]]
    assert first_key and "request_id" not in first_key[0]


def test_json_formatter_keeps_a_traceback_on_one_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "factory_mas.x", logging.ERROR, __file__, 1, "failed: %s", ("it",), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed: it" and parsed["level"] == "ERROR"
    assert "ValueError: boom" in parsed["exc_info"]
    assert parsed["ts"].endswith("+00:00")
    # A byte that was not UTF-8 (decoded with surrogateescape) must not lose the line.
    odd = logging.LogRecord("x", logging.INFO, __file__, 1, "path /a\udcff", (), None)
    written = formatter.format(odd).encode("utf-8", "backslashreplace")  # as stderr does
    assert json.loads(written)["message"] == "path /a\udcff"


@pytest.mark.integration
def test_server_logs_json_lines_with_request_ids(server_factory) -> None:
    server = server_factory(
        {"LOG_FORMAT": "json", "LOG_LEVEL": "info", "FACTORY_SERVER_ACCESS_LOG": "true"}
    )
    answer = server.get("/status", headers={"X-Request-ID": "trace-42"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "trace-42"
    bad = server.get("/health", headers={"X-Request-ID": "no good"})
    made = bad.headers["x-request-id"]
    assert made != "no good"
    # uvicorn re-raises the SIGTERM it handled once it has shut down.
    assert server.stop() in (0, -signal.SIGTERM)
    lines, foreign = [], []
    for text in server.output().splitlines():
        try:
            lines.append(json.loads(text))
        except json.JSONDecodeError:
            foreign.append(text)
    # Native libraries print to stderr themselves (LiteRT: "INFO: Created TensorFlow Lite
    # XNNPACK delegate"); no line in our text format or uvicorn's own may be left.
    assert not [t for t in foreign if TEXT_LINE.match(t)], foreign
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    loggers = {line["logger"] for line in lines}
    assert {"factory_mas.app", "uvicorn.error", "uvicorn.access"} <= loggers, loggers
    access = {line.get("request_id"): line for line in lines if line["logger"] == "uvicorn.access"}
    assert "GET /status" in access["trace-42"]["message"]
    assert "GET /health" in access[made]["message"]
