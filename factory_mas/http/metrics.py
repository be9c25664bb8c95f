"""GET /metrics: the components' own counters in Prometheus text, read at scrape time.

Nothing is counted twice: a collector turns the counters and gauges that /status already
shows into metric families when Prometheus asks, so the hot path pays nothing for them.
Inference latency is the one exception: a histogram's buckets need every observation, so
each scored batch is observed once (through its agent's LatencyWindow).

Each app has its own registry: tests build many apps in one process, and the default
registry would refuse the second set of names. What is read is `Observed`: the app's
components are one, and this module never imports the app.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, cast

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import __version__
from ..orchestrator import logic

if TYPE_CHECKING:
    from ..agents.base import BaseAgent
    from ..bridges.mqtt import MqttBridge
    from ..bridges.scada.service import ScadaBridge
    from ..history import HistoryWriter
    from ..hub import Hub
    from ..ingest.intake import Intake
    from ..notify import Notifier
    from ..orchestrator.service import Orchestrator

PREFIX = "factory_mas_"
# A lone record scores in a fraction of a millisecond, a big batch in a good part of a
# second: the default buckets (from 5 ms) would put every quiet-time batch in the first.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=float(value))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=float(value))


def _by(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    family = kind(PREFIX + name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


class Observed(Protocol):
    """The components a scrape reads."""

    @property
    def ready(self) -> bool: ...

    @property
    def intake(self) -> Intake: ...

    @property
    def agents(self) -> Sequence[BaseAgent]: ...

    @property
    def hub(self) -> Hub: ...

    @property
    def orchestrator(self) -> Orchestrator: ...

    @property
    def notifier(self) -> Notifier: ...

    @property
    def mqtt(self) -> MqttBridge: ...

    @property
    def scada(self) -> ScadaBridge: ...

    @property
    def history(self) -> HistoryWriter: ...


class FactoryCollector(Collector):
    """Reads the running components on every scrape (on the event loop, like /status)."""

    def __init__(self, components: Observed) -> None:
        self.c = components

    def collect(self) -> Iterator[Metric]:
        c = self.c
        yield from _process(c)
        yield from _ingest(c.intake)
        yield from _agents(c.agents)
        yield from _hub(c.hub)
        yield from _orchestrator(c.orchestrator)
        yield from _sms(c.notifier)
        yield from _mqtt(c.mqtt)
        yield from _scada(c.scada)
        yield from _history(c.history)


def _process(c: Observed) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        PREFIX + "build_info", "Always 1; the labels say what runs.", labels=["version", "python"]
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info
    yield _gauge("ready", "1 once every component has started.", c.ready)


def _ingest(intake: Intake) -> Iterable[Metric]:
    # The same sources in both families, "http" always: a rate over a series that appears
    # only with the first rejection misses that rejection.
    sources = {"http", *intake.accepted, *intake.rejected}
    accepted = {s: intake.accepted.get(s, 0) for s in sources}
    rejected = {s: intake.rejected.get(s, 0) for s in sources}
    doc = "Telemetry records {} by validation, by source (http, mqtt, replay, csv:<file>)."
    yield _by(CounterMetricFamily, "records_accepted", doc.format("accepted"), "source", accepted)
    yield _by(CounterMetricFamily, "records_rejected", doc.format("rejected"), "source", rejected)


def _agents(agents: Sequence[BaseAgent]) -> Iterable[Metric]:
    def each(key: str) -> dict[str, float]:
        return {a.agent_id: a.counters.get(key, 0) for a in agents}

    yield _by(
        CounterMetricFamily,
        "agent_predictions",
        "Predictions made (kept across restarts through the agent's checkpoint).",
        "agent",
        each("predictions"),
    )
    yield _by(
        CounterMetricFamily,
        "agent_alerts",
        "Alerts sent to the orchestrator (level changes at or above alert_min_level).",
        "agent",
        each("alerts"),
    )
    yield _by(
        CounterMetricFamily,
        "agent_errors",
        "Records whose scoring failed.",
        "agent",
        each("errors"),
    )
    by_level = CounterMetricFamily(
        PREFIX + "agent_predictions_by_level",
        "Predictions by level.",
        labels=["agent", "level"],
    )
    for a in agents:
        for key, n in sorted(a.counters.items()):
            if key.startswith("level_"):
                by_level.add_metric([a.agent_id, key.removeprefix("level_")], n)
    yield by_level
    yield _by(
        GaugeMetricFamily,
        "agent_running",
        "1 while the agent runs its model; 0 when stopped, disabled or failed.",
        "agent",
        {a.agent_id: a.status == "running" for a in agents},
    )


def _hub(hub: Hub) -> Iterable[Metric]:
    depth: dict[str, float] = {}
    capacity: dict[str, float] = {}
    waits: dict[str, float] = {}
    dropped: dict[str, float] = {}
    # Summed per name: names are unique today, and a duplicate series would fail the scrape.
    for sub in hub.stats()["subscriptions"]:
        name = sub["name"]
        depth[name] = depth.get(name, 0) + sub["depth"]
        capacity[name] = capacity.get(name, 0) + sub["maxsize"]
        waits[name] = waits.get(name, 0) + sub["publisher_waits"]
        dropped[name] = dropped.get(name, 0) + sub["dropped"]
    label = "subscription"
    yield _by(GaugeMetricFamily, "hub_queue_depth", "Messages queued now.", label, depth)
    yield _by(GaugeMetricFamily, "hub_queue_capacity", "Queue size limit.", label, capacity)
    yield _by(
        CounterMetricFamily,
        "hub_publisher_waits",
        "Times a publisher waited for room: back-pressure from this subscriber.",
        label,
        waits,
    )
    yield _by(
        CounterMetricFamily,
        "hub_dropped",
        "Messages dropped oldest-first (drop-oldest subscriptions only).",
        label,
        dropped,
    )


def _orchestrator(o: Orchestrator) -> Iterable[Metric]:
    counts = logic.counts(o.open.values(), datetime.now(UTC))
    by_state = cast(Mapping[str, int], counts["by_state"])
    by_level = cast(Mapping[str, int], counts["by_level"])
    yield _by(GaugeMetricFamily, "alarms_open", "Open alarms by ISA-18.2 state.", "state", by_state)
    yield _gauge("alarms_active", "Alarms whose condition is present.", cast(int, counts["active"]))
    yield _gauge(
        "alarms_unacknowledged",
        "Open alarms nobody has acknowledged (active or cleared).",
        cast(int, counts["unacknowledged"]),
    )
    yield _by(
        GaugeMetricFamily,
        "alarms_active_by_level",
        "Active alarms by current level (they add up to alarms_active).",
        "level",
        by_level,
    )
    yield _gauge("alarms_shelved", "Open alarms shelved now.", cast(int, counts["shelved"]))
    yield _gauge("alarm_flood", "1 during an alarm flood.", o.flood.active)
    n = o.counters
    yield _counter("orchestrator_alerts", "Alerts received from agents and the API.", n["alerts"])
    yield _counter("alarms_raised", "Alarms raised (new alarms).", n["alarms_raised"])
    yield _counter(
        "alarm_activations",
        "Annunciations (ISA-18.2 activations): alarms raised and alarms that returned.",
        n["activations"],
    )
    yield _counter(
        "alarms_chattering", "Alarms found chattering (marked once each).", n["chattering"]
    )
    yield _counter("decisions", "Decisions (action plans) made.", n["decisions"])
    yield _counter("orchestrator_errors", "Alerts the orchestrator failed to handle.", n["errors"])


def _sms(notifier: Notifier) -> Iterable[Metric]:
    # The notifier's own tally, refreshed on each pass over the outbox (every second):
    # a scrape costs no query.
    stats = notifier.stats()
    yield _by(
        GaugeMetricFamily,
        "sms_outbox",
        "Texts in the SMS outbox by status, as of the notifier's last pass (<= 1 s old).",
        "status",
        stats["counts"],
    )
    yield _gauge(
        "sms_sent_last_hour", "Texts sent in the last rolling hour.", stats["sent_last_hour"]
    )
    yield _gauge("sms_configured", "1 when Twilio credentials are set.", stats["configured"])


def _mqtt(mqtt: MqttBridge) -> Iterable[Metric]:
    n = mqtt.counters
    yield _gauge("mqtt_enabled", "1 when a broker is configured.", mqtt.enabled)
    yield _gauge(
        "mqtt_connected", "1 while connected (and subscribed) to the broker.", mqtt.connected
    )
    yield _counter(
        "mqtt_connects", "Connections made; all but the first are reconnects.", n["connects"]
    )
    yield _counter("mqtt_disconnects", "Connections lost after they had worked.", n["disconnects"])
    yield _counter("mqtt_received_messages", "Messages taken from the broker.", n["received"])
    yield _counter("mqtt_published_messages", "Messages the broker acknowledged.", n["published"])
    yield _counter("mqtt_dropped_messages", "Outgoing messages dropped.", n["dropped"])


def _scada(scada: ScadaBridge) -> Iterable[Metric]:
    # The protocol servers do not count their clients; whether each one listens is what
    # they can tell.
    listening = GaugeMetricFamily(
        PREFIX + "scada_server_listening",
        "1 while the protocol server listens on its port.",
        labels=["protocol"],
    )
    refused = CounterMetricFamily(
        PREFIX + "scada_connections_refused",
        "Client connections refused by scada.allowed_clients.",
        labels=["protocol"],
    )
    for server in scada.servers:
        status = server.status()
        listening.add_metric([server.name], float(bool(status.get("listening"))))
        if "connections_refused" in status:
            refused.add_metric([server.name], status["connections_refused"])
    yield listening
    yield refused


def _history(history: HistoryWriter) -> Iterable[Metric]:
    stats = history.stats()
    yield _counter("history_written", "Predictions written to the store.", stats["written"])
    yield _counter(
        "history_dropped", "Predictions lost before they were written.", stats["dropped"]
    )
    yield _gauge("history_pending", "Predictions waiting for the next flush.", stats["pending"])


class Metrics:
    """The registry of one app and its /metrics route."""

    def __init__(self, components: Observed) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FactoryCollector(components))
        # Memory, CPU seconds and open files of this process (from /proc; empty elsewhere).
        ProcessCollector(registry=self.registry)
        latency = Histogram(
            PREFIX + "inference_batch_seconds",
            "Time to score one micro-batch on the inference pool, queueing included.",
            ["agent"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for agent in components.agents:
            agent.latency.observer = latency.labels(agent=agent.agent_id).observe

    def routes(self) -> list[Route]:
        return [Route("/metrics", self.endpoint)]

    async def endpoint(self, request: Request) -> Response:
        # Prometheus asks for OpenMetrics when it can; anything else gets the text format.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(self.registry), headers={"content-type": content_type})
