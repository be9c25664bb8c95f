"""The settings sections besides the agents' (`[server]`, `[mqtt]`, `[scada]`, ...) and
`Settings`, the tree of them all."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, field

from .. import topics
from ..levels import Level
from .agents import AgentsSettings
from .base import PositiveFloat, PositiveInt, Section, check_url
from .playbooks import Playbook, default_playbooks


class ServerSettings(Section):
    host: str = "0.0.0.0"
    port: Annotated[int, Meta(ge=1, le=65535)] = 8000
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # "json": one object per line (ts, level, logger, message, request_id) for collectors
    # such as Loki or Elasticsearch; "text" reads better in a terminal.
    log_format: Literal["text", "json"] = "text"
    # Strict by default: browsers on other origins get no CORS headers unless listed here.
    cors_origins: list[str] = field(default_factory=list)
    # uvicorn's grace for open connections on SIGTERM; the rest of the 5 s budget is ours.
    graceful_shutdown_s: Annotated[float, Meta(ge=0, le=30)] = 3.0
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 10_000_000
    # A line per HTTP request: dashboards polling every second make it most of the log,
    # and it costs every request. Refused requests (401, 403, 429) are logged either way.
    access_log: bool = False
    # Peers that are our proxies (IPs or networks; "*" = any peer): the client's address
    # (for rate limits and logs) is the right-most X-Forwarded-For entry not listed here,
    # with "*" the right-most. The entries left of it are the client's to invent. Env
    # FORWARDED_ALLOW_IPS, the name uvicorn uses.
    forwarded_allow_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    # A connection must complete its request headers this long after it opened (or after
    # its last answer): a client trickling headers (slowloris) holds a connection no longer.
    header_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    # Open connections (HTTP and WebSocket) at most, and always under the process's
    # open-file limit: past it a new connection evicts the one waiting longest for its
    # headers, so that held-open connections cannot lock /health out.
    max_connections: Annotated[int, Meta(ge=16)] = 4096
    # A client that takes nothing we send for this long (its buffers full) is dropped: a
    # WebSocket reader that stopped reading would otherwise hold its buffers forever.
    send_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0

    def __post_init__(self) -> None:
        for entry in self.forwarded_allow_ips:
            if entry != "*" and not _is_network(entry):
                raise ValueError(
                    f"forwarded_allow_ips: {entry!r} is not an IP address, a network "
                    "(10.0.0.0/8) or *"
                )


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


Role = Literal["all", "ingest", "control"]
ROLES: tuple[Role, ...] = ("all", "ingest", "control")


class InstanceSettings(Section):
    # What this process runs. "all": everything (one process, the default). "ingest":
    # telemetry in (MQTT shared subscription, HTTP), the agents, predictions and alerts out
    # through the broker; as many as the load needs. "control": alarms, plans, texts, shift
    # summaries, SCADA and the dashboard, fed by the ingest instances through the broker;
    # one per database. `serve --role` overrides it.
    role: Role = "all"
    # Names this process's ingest journal, MQTT outbox and agent checkpoints in a shared
    # database: keep it stable across restarts, or what the old name had not finished is
    # left behind. Empty: <hostname>-<port>.
    id: str = ""

    def __post_init__(self) -> None:
        if self.id and not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", self.id):
            raise ValueError(
                f"id {self.id!r}: 1 to 100 letters, digits, '_', '.' or '-' "
                "(it names database rows and the MQTT client)"
            )


class DataSettings(Section):
    # Every piece of runtime state (database, checkpoints, keys) lives below this folder.
    dir: str = "./data"
    # A PostgreSQL database to keep the state in instead (env DATABASE_URL), for instances
    # that share it: postgres://user:password@host:5432/name. Empty: factory.db in `dir`.
    database_url: str = ""

    def __post_init__(self) -> None:
        scheme, sep, _ = self.database_url.partition("://")
        if self.database_url and (not sep or scheme not in _DATABASE_SCHEMES):
            # The URL holds a password: the message names its scheme at most.
            got = f"a URL starting with {scheme[:20]!r}" if sep else "a value with no scheme"
            raise ValueError(
                "database_url (DATABASE_URL) must start with postgres://, postgresql:// "
                f"or sqlite:///, got {got}"
            )


_DATABASE_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg", "sqlite")


class ModelsSettings(Section):
    # Empty means the artifacts/ folder that ships beside the package.
    dir: str = ""


class HubSettings(Section):
    # Per subscriber, in hub messages; one message may carry a whole batch of records.
    queue_size: PositiveInt = 256


class InferenceSettings(Section):
    threads: Annotated[int, Meta(ge=1, le=64)] = 2
    max_batch: Annotated[int, Meta(ge=1, le=100_000)] = 1024
    # How long a lone record waits for company before it is scored alone.
    max_wait_ms: Annotated[float, Meta(ge=0, le=1000)] = 2.0


class ReplaySettings(Section):
    enabled: bool = True
    # Records per second over all machines; 0 means as fast as the pipeline takes them.
    rate: Annotated[float, Meta(ge=0)] = 50.0
    seed: int = 7
    machines: Annotated[int, Meta(ge=1, le=10_000)] = 50
    # Plant time per round of one record per machine: at 50 records/s, 15 s of plant time
    # pass each second, so a demo shows a few genuine faults per 10 minutes (about 4.5 on
    # average, measured by `bench --alarms`), as a plant at ISA-18.2's manageable rate.
    step_minutes: PositiveFloat = 0.25
    # A CSV file (the Kaggle dataset's header names) replayed instead of synthetic data.
    csv: str = ""
    loop: bool = True
    # Simulated cameras sending frames of workers to the PPE agent; 0 = none.
    cameras: Annotated[int, Meta(ge=0, le=100)] = 2
    camera_fps: Annotated[float, Meta(gt=0, le=100)] = 1.0


class MqttSettings(Section):
    # The broker to bridge the hub to (env MQTT_BROKER, MQTT_PORT); empty runs without one.
    broker: str = ""
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    username: str = ""  # env MQTT_USERNAME
    password: str = ""  # env MQTT_PASSWORD
    # Stable across restarts, so the broker keeps our session; empty: factory_mas-<host>-<port>.
    client_id: str = ""
    tls: bool = False
    tls_ca_file: str = ""  # empty with tls = the system's trusted CAs
    tls_cert_file: str = ""  # client certificate, for brokers that ask for one
    tls_key_file: str = ""
    tls_insecure: bool = False  # skip the host name check (test brokers only)
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    # How long the broker keeps our subscriptions and queued QoS 1 messages while we are
    # away: telemetry sent during a restart or an outage is delivered when we return.
    session_expiry_s: Annotated[int, Meta(ge=0, le=4_294_967_295)] = 86400
    # Broker topics taken into the hub, and hub topics given to the broker (MQTT filters).
    subscribe: list[str] = field(
        default_factory=lambda: [
            topics.TELEMETRY,
            topics.TELEMETRY_PER_MACHINE,
            topics.PPE_FRAMES_FILTER,
            topics.CONFIG_REQUESTS_FILTER,
        ]
    )
    publish: list[str] = field(
        default_factory=lambda: [
            topics.PREDICTIONS_FILTER,
            topics.ALERTS_FILTER,
            topics.DECISIONS,
            topics.ALARMS,
            topics.SHIFT_SUMMARY,
            topics.CONFIG_RESULTS_FILTER,
            topics.REJECTED,
        ]
    )
    # Several instances with the same group split the telemetry ($share/<group>/...).
    shared_group: str = ""
    max_payload_bytes: Annotated[int, Meta(ge=1024, le=268_435_455)] = 1_000_000
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 30.0
    # Predictions waiting for the broker in memory; beyond it the oldest go (counted).
    # Alerts, alarms, decisions and the rest wait in the store and are never dropped.
    memory_queue: Annotated[int, Meta(ge=1, le=10_000_000)] = 10_000
    # aiomqtt's own limits: its default of 1000 silently loses QoS 1 messages under load.
    max_queued_messages: Annotated[int, Meta(ge=1000, le=10_000_000)] = 100_000
    max_inflight_messages: Annotated[int, Meta(ge=1, le=65535)] = 1000

    def __post_init__(self) -> None:
        if self.shared_group and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.shared_group):
            raise ValueError(
                f"shared_group {self.shared_group!r}: use letters, digits, '_', '.', '-'"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for name in ("subscribe", "publish"):
            for f in getattr(self, name):
                if not _MQTT_FILTER.fullmatch(f) or "#" in f[:-1]:
                    raise ValueError(f"{name}: {f!r} is not an MQTT topic filter")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")


_MQTT_FILTER = re.compile(r"(?:[^/+#]+|\+)(?:/(?:[^/+#]*|\+))*(?:/#)?|#")


class ScadaSettings(Section):
    # Control systems read live values and write settings back over three protocols,
    # all laid out by one point table (`python -m factory_mas points`).
    enabled: bool = True
    host: str = "0.0.0.0"
    opcua_enabled: bool = True
    opcua_port: Annotated[int, Meta(ge=1, le=65535)] = 4840
    # "None" for plain connections, or "Basic256Sha256" (sign and encrypt) with a
    # certificate generated under <data dir>/scada on first start.
    opcua_security: Literal["None", "Basic256Sha256"] = "None"
    modbus_enabled: bool = True
    modbus_port: Annotated[int, Meta(ge=1, le=65535)] = 502
    modbus_device_id: Annotated[int, Meta(ge=0, le=247)] = 1
    # Unit ids answered besides modbus_device_id. The Modbus/TCP implementation guide has
    # a client reach a device on its own IP with unit id 255 (0 also accepted), so HMIs
    # and scanners that know no device id use those; empty = modbus_device_id only.
    modbus_extra_unit_ids: list[Annotated[int, Meta(ge=0, le=255)]] = field(
        default_factory=lambda: [0, 255]
    )
    # Values as 32-bit IEEE floats over two registers instead of scaled 16-bit integers.
    modbus_float32: bool = False
    dnp3_enabled: bool = True
    dnp3_port: Annotated[int, Meta(ge=1, le=65535)] = 20000
    dnp3_outstation_address: Annotated[int, Meta(ge=0, le=65519)] = 10
    dnp3_master_address: Annotated[int, Meta(ge=0, le=65519)] = 1
    # Machines that get their own points (level, failure probability, RUL, power, ...).
    machines: list[Annotated[int, Meta(ge=1, le=1_000_000)]] = field(
        default_factory=lambda: [1, 2, 3, 4, 5]
    )
    update_interval_s: Annotated[float, Meta(ge=0.05, le=10)] = 0.5
    # Writes from control systems (settings, enable, acknowledge). Off out of the box:
    # every protocol is read-only until a plant opens writes deliberately. When on, an
    # OPC UA write needs a user logged in with an API key of the role the HTTP API asks
    # for the same change (Anonymous stays read-only), and Modbus or DNP3 writes come
    # only from `write_clients`, acting with `write_clients_role`.
    writes_enabled: bool = False
    # Client addresses (IPs or networks, e.g. 10.0.0.0/8) allowed to talk Modbus or DNP3;
    # empty = any. OPC UA has its own security policy.
    allowed_clients: list[str] = field(default_factory=list)
    # Modbus and DNP3 carry no user, so a write is trusted by its address: only these
    # clients (IPs or networks) may write; empty = no Modbus or DNP3 writes at all.
    write_clients: list[str] = field(default_factory=list)
    # What those clients may do: "operator" acknowledges alarms; "admin" also changes
    # settings and starts or stops agents, as over HTTP.
    write_clients_role: Literal["operator", "admin"] = "operator"

    def __post_init__(self) -> None:
        import ipaddress

        for name in ("allowed_clients", "write_clients"):
            for entry in getattr(self, name):
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(f"{name}: {entry!r} is not an IP address or network") from None


class BacklogSettings(Section):
    # Shift changes, local time in `timezone`; each shift runs to the next one.
    shift_starts: list[Annotated[str, Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]] = field(
        default_factory=lambda: ["06:00", "14:00", "22:00"]
    )
    timezone: str = "UTC"
    # Gemini writes the narrative (env GEMINI_API_KEY); without a key, or when it fails,
    # an offline summary is written from the same facts.
    gemini_api_key: str = ""
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str = ""  # empty = Google's API; tests point it at a stand-in
    gemini_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 30.0
    gemini_retries: Annotated[int, Meta(ge=0, le=10)] = 2
    gemini_max_output_tokens: Annotated[int, Meta(ge=64, le=65536)] = 2048
    # POST /api/backlog/generate at most once per this many seconds.
    generate_min_interval_s: Annotated[float, Meta(ge=0)] = 60.0
    # Shifts that ended while factory_mas was down are summarised when it returns, up
    # to this far back.
    catch_up_days: Annotated[float, Meta(ge=0, le=365)] = 7.0

    def __post_init__(self) -> None:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"timezone {self.timezone!r} is not a known time zone (e.g. Europe/Berlin)"
            ) from None
        if not self.shift_starts:
            raise ValueError('shift_starts needs at least one time, e.g. ["06:00"]')
        if len(set(self.shift_starts)) != len(self.shift_starts):
            raise ValueError(f"shift_starts has a time twice: {self.shift_starts}")
        check_url(self.gemini_base_url, "gemini_base_url")


class AuthSettings(Section):
    # API keys with roles viewer < operator < admin (`python -m factory_mas keys`). With
    # no key at all, the first start makes an admin key, prints it once, keeps its hash.
    enabled: bool = True
    # Read routes (GET, and WebSocket streams) open to anyone: a wall-mounted dashboard.
    public_read: bool = False


class LimitsSettings(Section):
    # Token buckets per API key and per client address: this many requests a second,
    # bursts up to `burst`; beyond it, 429 with Retry-After.
    requests_per_s: PositiveFloat = 50.0
    burst: PositiveInt = 200
    # JSON bodies: nesting deeper than this or more items than this are refused (400).
    json_max_depth: Annotated[int, Meta(ge=2, le=1000)] = 32
    json_max_items: Annotated[int, Meta(ge=10, le=10_000_000)] = 100_000
    # Machines the process keeps state for (agents, alarm gates, SCADA points, checkpoints);
    # records of further machines are refused. Measured: 165,000 machine ids took the
    # process from 366 to 961 MB and the checkpoints to 13.5 MB.
    max_machines: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000


class HistorySettings(Section):
    # Predictions kept in the store beyond the agents' in-memory rings, like a process
    # historian: every change of level, and otherwise one per machine (or camera) and
    # agent every sample_s seconds. 0 keeps every prediction: at the replay's 50 records/s
    # that is 250 rows/s, some 8 GB a day.
    sample_s: Annotated[float, Meta(ge=0)] = 60.0
    # Stored predictions are deleted this long after they were written (not by record_ts).
    retention_days: PositiveFloat = 30.0
    flush_interval_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    # Hub messages waiting to be written; when full the oldest is dropped (and counted).
    queue_size: PositiveInt = 4096
    # The telemetry historian: accepted raw records kept in the store (GET /api/telemetry,
    # `export`, `train --from-store`), at about 0.4 KB a row.
    telemetry_enabled: bool = True
    # Deleted this long after they arrived, not by their own timestamp: a replayed CSV
    # from last year must not be deleted on arrival.
    telemetry_retention_days: PositiveFloat = 30.0
    # Bounded disk: beyond this many rows the oldest are deleted.
    telemetry_max_rows: PositiveInt = 5_000_000


class OrchestratorSettings(Section):
    # Alarm flood (ISA-18.2 uses 10 new alarms per operator in 10 minutes): more than
    # flood_threshold new alarms within flood_window_s starts one; it ends when fewer than
    # flood_end_below remain in the window. The gap stops it flickering on and off.
    flood_threshold: PositiveInt = 10
    flood_window_s: PositiveFloat = 600.0
    flood_end_below: PositiveInt = 5
    # During a flood, alarms below this level are shown as groups, one per source and type.
    flood_group_below: Level = "CRITICAL"
    # Shelving hides an alarm for a while; it returns on its own after at most one shift.
    default_shelve_s: PositiveFloat = 3600.0
    max_shelve_s: PositiveFloat = 28800.0
    # How many recent alerts and decisions system-state lists.
    recent_size: Annotated[int, Meta(ge=1, le=10_000)] = 100
    # A chattering alarm activates chatter_count times within chatter_window_s (record
    # time). It is marked and counted; with chatter_policy "shelve" the system shelves it
    # for chatter_shelve_s (audited, by "system") unless it has reached
    # chatter_shelve_below, which always stays in front of the operator. "mark" only marks.
    chatter_count: Annotated[int, Meta(ge=2, le=1000)] = 3
    chatter_window_s: PositiveFloat = 60.0
    chatter_policy: Literal["shelve", "mark"] = "shelve"
    chatter_shelve_s: PositiveFloat = 1800.0
    chatter_shelve_below: Level = "CRITICAL"
    # Common cause: when group_min_alarms alarms of one source and type have activated
    # within group_window_s (a network attack on every machine, a plant-wide power dip),
    # the next ones are annunciated as one group alarm (no machine) instead of one each.
    # They are still listed and audited, and the group clears when they all have. 0: off.
    group_min_alarms: Annotated[int, Meta(ge=0, le=10_000)] = 2
    group_window_s: PositiveFloat = 60.0
    # Designed suppression: "source/type" -> the alarms ("source/type") that already say
    # it. An activation of the first while one of the others is active on the same machine
    # or camera is raised silently, annunciated and planned for by that alarm. An
    # electrical fault's surge is the safety alarm's business, not a second energy alarm.
    suppress_by: dict[str, list[str]] = field(
        default_factory=lambda: {"energy_agent/POWER_ANOMALY": ["safety_agent/ELECTRICAL_HAZARD"]}
    )

    def __post_init__(self) -> None:
        if self.flood_end_below > self.flood_threshold:
            raise ValueError(
                f"flood_end_below ({self.flood_end_below}) must not exceed flood_threshold "
                f"({self.flood_threshold})"
            )
        for name in [k for k, v in self.suppress_by.items() for k in (k, *v)]:
            if not re.fullmatch(r"[^/\s]+/[^/\s]+", name):
                raise ValueError(
                    f"suppress_by: {name!r} is not source/type (energy_agent/POWER_ANOMALY)"
                )
        if self.chatter_shelve_s > self.max_shelve_s:
            raise ValueError(
                f"chatter_shelve_s ({self.chatter_shelve_s}) must not exceed max_shelve_s "
                f"({self.max_shelve_s})"
            )
        if self.default_shelve_s > self.max_shelve_s:
            raise ValueError(
                f"default_shelve_s ({self.default_shelve_s}) must not exceed max_shelve_s "
                f"({self.max_shelve_s})"
            )


class PlannerSettings(Section):
    # An external planner to ask first (env PLANNER_URL); the built-in one answers when it
    # is unset, slow or wrong.
    url: str = ""
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 2.0
    # Alarms on one machine within this window make one combined plan.
    correlation_window_s: PositiveFloat = 600.0
    # Alarm type -> what to do. Types without a playbook get `fallback`.
    playbooks: dict[str, Playbook] = field(default_factory=default_playbooks)
    fallback: Playbook = field(
        default_factory=lambda: Playbook(
            action="log", priority=5, steps=["Record the alarm and review it in the shift summary"]
        )
    )

    def __post_init__(self) -> None:
        check_url(self.url, "url (PLANNER_URL)")


class NotifySettings(Section):
    # Twilio credentials (env TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, TWILIO_FROM_NUMBER,
    # TWILIO_TO_NUMBER). Without them the outbox still records what would have been sent.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    twilio_to_number: str = ""
    # Empty means Twilio's own API; tests point it at a local stand-in.
    twilio_base_url: str = ""
    # Decisions at or above this level are texted.
    min_level: Level = "CRITICAL"
    # The same alarm is texted at most once within this time.
    cooldown_s: Annotated[float, Meta(ge=0)] = 900.0
    # At most this many texts per rolling hour; what is held back goes out as one digest.
    rate_limit_per_hour: Annotated[int, Meta(ge=1, le=10_000)] = 10
    # Failed sends are retried after retry_base_s, doubling up to retry_max_s, at most
    # max_attempts times in all.
    retry_base_s: PositiveFloat = 5.0
    retry_max_s: PositiveFloat = 900.0
    max_attempts: Annotated[int, Meta(ge=1, le=100)] = 8
    send_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 10.0

    def __post_init__(self) -> None:
        check_url(self.twilio_base_url, "twilio_base_url")
        named = {
            "TWILIO_ACCOUNT_SID": self.twilio_account_sid,
            "TWILIO_AUTH_TOKEN": self.twilio_auth_token,
            "TWILIO_FROM_NUMBER": self.twilio_from_number,
            "TWILIO_TO_NUMBER": self.twilio_to_number,
        }
        missing = [name for name, value in named.items() if not value]
        # Half a set of credentials is a typo, not a choice: say so now, not at 3 am.
        if missing and len(missing) < len(named):
            raise ValueError(
                "the Twilio settings go together; set all four or none, missing: "
                + ", ".join(missing)
            )
        for name in ("TWILIO_FROM_NUMBER", "TWILIO_TO_NUMBER"):
            number = named[name]
            if number and not re.fullmatch(r"\+[1-9]\d{6,14}", number):
                # The number itself stays out of the message: it is personal data.
                raise ValueError(f"{name} must be an E.164 number like +15551234567")

    @property
    def configured(self) -> bool:
        return all(
            (
                self.twilio_account_sid,
                self.twilio_auth_token,
                self.twilio_from_number,
                self.twilio_to_number,
            )
        )


class Settings(Section):
    server: ServerSettings = field(default_factory=ServerSettings)
    instance: InstanceSettings = field(default_factory=InstanceSettings)
    data: DataSettings = field(default_factory=DataSettings)
    models: ModelsSettings = field(default_factory=ModelsSettings)
    hub: HubSettings = field(default_factory=HubSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    agents: AgentsSettings = field(default_factory=AgentsSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    scada: ScadaSettings = field(default_factory=ScadaSettings)
    backlog: BacklogSettings = field(default_factory=BacklogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    orchestrator: OrchestratorSettings = field(default_factory=OrchestratorSettings)
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir)

    @property
    def instance_id(self) -> str:
        """`instance.id`, else <hostname>-<port>: stable as long as both are."""
        if self.instance.id:
            return self.instance.id
        host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "localhost"
        return f"{host[:90]}-{self.server.port}"

    @property
    def models_dir(self) -> Path:
        if self.models.dir:
            return Path(self.models.dir)
        return Path(__file__).resolve().parents[2] / "artifacts"
