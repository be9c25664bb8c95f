"""`bench --process`: the real `python -m factory_mas` as a user starts it. How long until
/health answers, how much memory the process holds under a long stream of HTTP ingest and
whether that stays bounded, which heavy libraries it maps, and whether SIGTERM ends it
cleanly. Everything is seen from outside: HTTP, /proc and the exit code.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from ..agents.registry import AGENTS
from ..errors import FactoryError
from ..settings import ENV_NAMES, SETTINGS_FILE_ENV, Settings, as_toml_tree, load_settings
from ..sim.synthetic import FactorySimulator
from .http import Tally, post_ingest
from .machine import free_port, machine_facts
from .targets import target, verdict

STARTUP_TARGET_S = 3.0
RSS_TARGET_MB = 500.0
# Growth above this, in MB per 100k records over the second half of the run, is "growing":
# with 50 machines every per-machine table and ring buffer is full long before then.
FLAT_SLOPE_MB = 1.0
PAYLOAD_RECORDS = 500
PAYLOADS = 20  # distinct bodies cycled; 10,000 records, 200 simulated minutes of 50 machines
CONNECTIONS = 3
POLL_S = 0.01
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
# Scoring that makes no progress for this long has stopped: report what it reached.
STALL_S = 30.0
AGENTS_TIMEOUT_S = 60.0
TELEMETRY_SLUGS = tuple(e.slug for e in AGENTS if e.reads_telemetry)
BENCH_LOG_LEVEL = "info"
# Shared-object paths that mean the library is in the process; `_pywrap_tensorflow` alone
# would also match LiteRT's own interpreter wrapper, hence the folder names.
_TENSORFLOW_MAPS = re.compile(r"/tensorflow/|libtensorflow")
_SKLEARN_MAPS = re.compile(r"/sklearn/")


# -- the server's settings -----------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a TOML basic string, except that TOML wants DEL escaped too.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise FactoryError(f"bench --process: cannot write {value!r} as TOML")


def settings_toml(settings: Settings) -> str:
    """The whole of `settings` as a TOML file, one inline table per section (no TOML
    writer is installed, and inline tables need no section bookkeeping)."""
    tree = as_toml_tree(settings)
    return "".join(
        f"{json.dumps(name)} = {_toml_value(section)}\n" for name, section in tree.items()
    )


@dataclass
class Ports:
    http: int
    opcua: int
    modbus: int
    dnp3: int


def bench_settings(settings: Settings, data_dir: Path, ports: Ports) -> Settings:
    """The user's settings with the load made ours: replay and MQTT off, no keys, rate
    limits out of reach, a private data dir, loopback only, and SCADA (when on) on free
    ports."""
    replace = msgspec.structs.replace
    return replace(
        settings,
        # Info, the default: the start-up phases are read from its lines.
        server=replace(
            settings.server, host="127.0.0.1", port=ports.http, log_level=BENCH_LOG_LEVEL
        ),
        data=replace(settings.data, dir=str(data_dir)),
        replay=replace(settings.replay, enabled=False),
        mqtt=replace(settings.mqtt, broker=""),
        auth=replace(settings.auth, enabled=False),
        limits=replace(settings.limits, requests_per_s=1_000_000.0, burst=10_000_000),
        scada=replace(
            settings.scada,
            host="127.0.0.1",
            opcua_port=ports.opcua,
            modbus_port=ports.modbus,
            dnp3_port=ports.dnp3,
        ),
    )


def write_settings(settings: Settings, path: Path) -> None:
    path.write_text(settings_toml(settings), encoding="utf-8")
    # A settings file the server reads differently would measure some other server.
    if load_settings(path, env={}) != settings:
        raise FactoryError(f"bench --process: {path} does not read back as the settings written")


def child_env(settings_file: Path, port: int) -> dict[str, str]:
    """This environment without any settings override, so the file is the whole truth."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env[SETTINGS_FILE_ENV] = str(settings_file)
    env["PORT"] = str(port)
    return env


def scada_description(settings: Settings) -> str:
    s = settings.scada
    if not s.enabled:
        return "off (as in the settings)"
    on = [
        f"{name} {port}"
        for name, wanted, port in (
            ("OPC UA", s.opcua_enabled, s.opcua_port),
            ("Modbus", s.modbus_enabled, s.modbus_port),
            ("DNP3", s.dnp3_enabled, s.dnp3_port),
        )
        if wanted
    ]
    return f"on, {s.host}: {', '.join(on) or 'every protocol off'}"


# -- the process ---------------------------------------------------------------------------


def _kib_field(text: str, name: str) -> float:
    match = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
    return int(match[1]) / 1024 if match else math.nan


# Lines the server logs at info on its way up and down, in order: they split start-up into
# phases without touching the server.
STARTED = "started"  # uvicorn: python, imports and build_app are done
AGENT_LOADED = "agents"  # the last agent's "running model": models loaded
APP_READY = "app_ready"  # "factory_mas <version> ready": the lifespan is done
LISTENING = "listening"  # uvicorn bound its socket
SHUTDOWN_DONE = "shutdown_done"  # uvicorn: the lifespan's shutdown has run to its end
SCADA_UP = "scada_up"  # the SCADA servers listen, which may come after /health answers
_STARTUP_MARKERS = {
    STARTED: re.compile(r"Started server process"),
    AGENT_LOADED: re.compile(r"factory_mas\.agents\.base: \S+: running model"),
    APP_READY: re.compile(r"factory_mas\.app: factory_mas \S+ ready$"),
    LISTENING: re.compile(r"Uvicorn running on"),
}
_LATER_MARKERS = {
    SHUTDOWN_DONE: re.compile(r"Application shutdown complete"),
    SCADA_UP: re.compile(r"scada: servers started"),
}


class TimedLog:
    """Reads the server's output on a thread: writes it to a file with the seconds since
    spawn in front, and keeps the start-up lines and when each marker was (last) seen."""

    def __init__(self, stream: Any, path: Path, spawned_at: float) -> None:
        import threading

        self.path = path
        self.spawned_at = spawned_at
        self.startup_lines: list[tuple[float, str]] = []
        self.seen: dict[str, float] = {}
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        with self.path.open("w", encoding="utf-8") as out:
            for raw in stream:
                t = time.perf_counter() - self.spawned_at
                line = raw.decode(errors="replace").rstrip()
                out.write(f"+{t:8.3f}s {line}\n")
                out.flush()
                markers = dict(_LATER_MARKERS)
                if LISTENING not in self.seen:
                    self.startup_lines.append((t, line))
                    markers.update(_STARTUP_MARKERS)
                self.seen.update({k: t for k, marker in markers.items() if marker.search(line)})

    def join(self, timeout_s: float = 5.0) -> None:
        self._thread.join(timeout_s)

    def tail(self, chars: int = 4000) -> str:
        return self.path.read_text(errors="replace")[-chars:] if self.path.exists() else ""

    def phases(self, ready_s: float) -> dict[str, Any]:
        """Where start-up went, from the marker lines; the longest silences name the line
        that ended them (the step that was busy is usually the one that then logs)."""
        seen = self.seen
        points = [
            ("python, imports, build_app", seen.get(STARTED)),
            ("store, services, agents' models", seen.get(AGENT_LOADED)),
            ("rest of the lifespan (SCADA, ...)", seen.get(APP_READY)),
            ("uvicorn binds, first 200", ready_s),
        ]
        phases, last = [], 0.0
        for name, at in points:
            if at is None:
                continue
            phases.append({"phase": name, "s": at - last, "until_s": at})
            last = at
        lines = self.startup_lines
        longest = sorted(itertools.pairwise(lines), key=lambda ab: ab[0][0] - ab[1][0])[:3]
        gaps = [{"s": b[0] - a[0], "at_s": a[0], "before": b[1][:120]} for a, b in longest]
        return {"phases": phases, "longest_silences": gaps, "log_lines": len(lines)}


@dataclass
class ServerProcess:
    """`python -m factory_mas` in its own folder, its output in a log file there."""

    settings: Settings
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0
    url: str = ""
    log: TimedLog | None = None

    def start(self) -> dict[str, Any]:
        """Spawn it and poll /health: seconds from spawn to the first 200, and phases."""
        self.folder.mkdir(parents=True, exist_ok=True)
        settings_file = self.folder / "settings.toml"
        write_settings(self.settings, settings_file)
        port = self.settings.server.port
        self.url = f"http://127.0.0.1:{port}"
        self.spawned_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "factory_mas"],
            env=child_env(settings_file, port),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.log = TimedLog(self.proc.stdout, self.folder / "server.log", self.spawned_at)
        ready_s = self._ready_after(port)
        return {"ready_s": ready_s, **self.log.phases(ready_s)}

    def scada_up_s(self) -> float | None:
        """Seconds from spawn to the SCADA servers' listening, if they logged it yet."""
        return self.log.seen.get(SCADA_UP) if self.log is not None else None

    def _ready_after(self, port: int) -> float:
        assert self.proc is not None
        deadline = self.spawned_at + READY_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise FactoryError(
                    f"bench --process: the server exited with {self.proc.returncode} before "
                    f"it was ready:\n{self.log_tail()}"
                )
            if _health_is_200(port):
                return time.perf_counter() - self.spawned_at
            time.sleep(POLL_S)
        raise FactoryError(
            f"bench --process: /health not 200 after {READY_TIMEOUT_S:.0f} s:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def memory(self) -> dict[str, float]:
        """Resident and peak resident MB, straight from the kernel."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return {"rss_mb": _kib_field(text, "VmRSS"), "hwm_mb": _kib_field(text, "VmHWM")}

    def mapped(self) -> dict[str, Any]:
        """Which heavy libraries have shared objects mapped in the process."""
        paths = {
            line.split(maxsplit=5)[5]
            for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6
        }
        tensorflow = sorted(p for p in paths if _TENSORFLOW_MAPS.search(p))
        sklearn = sorted(p for p in paths if _SKLEARN_MAPS.search(p) and ".so" in p)
        return {
            "tensorflow_loaded": bool(tensorflow),
            "tensorflow_files": tensorflow[:5],
            "sklearn_loaded": bool(sklearn),
            "sklearn_shared_objects": len(sklearn),
            "threads": len(os.listdir(f"/proc/{self.pid}/task")),
        }

    def stop(self) -> dict[str, Any]:
        """SIGTERM, as a service manager stops it; SIGKILL if it hangs."""
        assert self.proc is not None and self.log is not None
        began = time.perf_counter()
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait()
        stop_s = time.perf_counter() - began
        self.log.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        code = self.proc.returncode
        graceful = SHUTDOWN_DONE in self.log.seen
        return {
            "exit_code": code,
            "stop_s": stop_s,
            "killed": killed,
            "shutdown_complete_logged": graceful,
            "traceback_in_log": "Traceback" in self.log.tail(10_000_000),
            # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done,
            # so a clean stop ends in -SIGTERM (shells show 143), not 0; the log line
            # tells it from dying on the signal.
            "clean": code in (0, -signal.SIGTERM) and graceful and not killed,
        }

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.tail(chars) if self.log is not None else ""


def _health_is_200(port: int) -> bool:
    # A fresh connection per poll, as a load balancer's health check makes.
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# -- start-up ------------------------------------------------------------------------------


def _python(args: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise FactoryError(
            f"bench --process: python {' '.join(args)} exited with {done.returncode}:\n"
            f"{done.stderr[-4000:]}"
        )
    return done


def _wall(args: list[str]) -> float:
    began = time.perf_counter()
    _python(args)
    return time.perf_counter() - began


def import_times(repeats: int) -> dict[str, Any]:
    """How much of start-up is importing: a bare interpreter, `import factory_mas.app`,
    and `-X importtime`'s own time summed by top-level package."""
    bare = min(_wall(["-c", "pass"]) for _ in range(repeats))
    app = min(_wall(["-c", "import factory_mas.app"]) for _ in range(repeats))
    done = _python(["-X", "importtime", "-c", "import factory_mas.app"])
    by_package: Counter[str] = Counter()
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].strip().split(":")[-1].strip().isdigit():
            continue
        self_us = int(parts[0].split(":")[-1])
        by_package[parts[2].strip().split(".")[0]] += self_us
    top = [{"package": name, "ms": us / 1000} for name, us in by_package.most_common(8)]
    return {
        "python_bare_s": bare,
        "import_app_s": app,
        "importtime_total_ms": sum(by_package.values()) / 1000,
        "importtime_top": top,
        "sklearn_imported": "sklearn" in by_package,
        "tensorflow_imported": "tensorflow" in by_package,
    }


# -- the load ------------------------------------------------------------------------------


def ingest_payloads(count: int = PAYLOADS, per: int = PAYLOAD_RECORDS) -> list[list[dict]]:
    rows = FactorySimulator(seed=11, machines=50).run(count * per // 50).records()
    return [rows[i : i + per] for i in range(0, count * per, per)]


@dataclass
class Feed(Tally):
    """What the load generator saw: every request's outcome, and the time spent posting."""

    post_s: float = 0.0


async def post_records(
    client: Any, bodies: list[list[dict]], encoded: list[bytes], start: int, count: int, out: Feed
) -> None:
    """POST `count` records over CONNECTIONS concurrent requests, going on through the
    cycle of payloads (`encoded` is `bodies` as JSON) from record `start`."""
    queued = 0

    async def worker() -> None:
        nonlocal queued
        while queued < count and not out.errors:
            i = (start + queued) // PAYLOAD_RECORDS % len(bodies)
            n = min(PAYLOAD_RECORDS, count - queued)
            body = encoded[i] if n == PAYLOAD_RECORDS else msgspec.json.encode(bodies[i][:n])
            queued += n
            await post_ingest(client, body, n, out)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    out.post_s += time.perf_counter() - began


@dataclass
class Agents:
    """The telemetry agents' prediction counters, as GET /api/<slug>/status shows them."""

    client: Any
    slugs: list[str]

    async def stats(self) -> dict[str, dict[str, Any]]:
        stats = {}
        for slug in self.slugs:
            response = await self.client.get(f"/api/{slug}/status")
            response.raise_for_status()
            stats[slug] = response.json()
        return stats

    async def scored(self) -> dict[str, int]:
        stats = await self.stats()
        return {s: int(stats[s]["counters"].get("predictions", 0)) for s in self.slugs}

    async def running(self) -> None:
        """Wait until every agent runs its model: /health answers before that when models
        load in the background, and an agent that failed would never score."""
        deadline = time.perf_counter() + AGENTS_TIMEOUT_S
        while True:
            stats = await self.stats()
            failed = {s: v.get("error") for s, v in stats.items() if v["status"] == "failed"}
            if failed:
                raise FactoryError(f"bench --process: agents failed to start: {failed}")
            if all(v["status"] == "running" for v in stats.values()):
                return
            if time.perf_counter() > deadline:
                states = {s: v["status"] for s, v in stats.items()}
                raise FactoryError(f"bench --process: agents not running: {states}")
            await asyncio.sleep(0.05)

    async def wait(self, target: dict[str, int]) -> tuple[dict[str, int], bool]:
        """Poll until each agent has scored its `target`, or until none has made progress
        for STALL_S; what they reached, and whether that was all of it."""
        last, moved_at = None, time.perf_counter()
        while True:
            scored = await self.scored()
            if all(scored[s] >= target[s] for s in self.slugs):
                return scored, True
            if scored != last:
                last, moved_at = scored, time.perf_counter()
            elif time.perf_counter() - moved_at > STALL_S:
                return scored, False
            await asyncio.sleep(0.1)


def slope_mb_per_100k(samples: list[dict[str, Any]]) -> float:
    """Least-squares RSS growth per 100k records: the trend, not two noisy end points."""
    if len(samples) < 2:
        return math.nan
    xs = [s["records"] / 100_000 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return math.nan
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def sample_step(records: int) -> int:
    """A tenth of the run, in whole payloads."""
    return max(1, math.ceil(records / 10 / PAYLOAD_RECORDS)) * PAYLOAD_RECORDS


async def _stream(server: ServerProcess, records: int, slugs: list[str]) -> dict[str, Any]:
    """Post the records a tenth at a time; after each tenth, read the memory at once (with
    the agents' backlog in it), then again once they have scored everything, so that the
    points the trend is drawn through all hold the same work: none."""
    import httpx

    bodies = ingest_payloads()
    encoded = [msgspec.json.encode(b) for b in bodies]
    fed, samples, drained = Feed(), [], True
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client,
        httpx.AsyncClient(base_url=server.url, timeout=30) as probe,
    ):
        agents = Agents(probe, slugs)
        await agents.running()
        agents_running_s = time.perf_counter() - server.spawned_at
        before = scored = await agents.scored()
        began = time.perf_counter()
        while drained and fed.records_posted < records and not fed.errors:
            step = min(sample_step(records), records - fed.records_posted)
            await post_records(client, bodies, encoded, fed.records_posted, step, fed)
            loaded = server.memory()
            behind = fed.records_accepted - min(
                (n - before[s] for s, n in (await agents.scored()).items()),
                default=fed.records_accepted,
            )
            target = {s: before[s] + fed.records_accepted for s in slugs}
            scored, drained = await agents.wait(target)
            samples.append(
                {
                    "records": fed.records_accepted,
                    "seconds": time.perf_counter() - began,
                    "backlog": behind,
                    "rss_loaded_mb": loaded["rss_mb"],
                    **server.memory(),
                }
            )
        seconds = time.perf_counter() - began
        status = (await probe.get("/status")).json()
    return {
        "agents_running_s": agents_running_s,
        "fed": fed,
        "samples": samples,
        "seconds": seconds,
        "scored": {s: scored[s] - before[s] for s in slugs},
        "drained": drained,
        "server_accepted": int(status["ingest"]["accepted"].get("http", 0)),
    }


def memory_run(server: ServerProcess, records: int, slugs: list[str]) -> dict[str, Any]:
    """Stream the records, wait until every telemetry agent has scored them, and say how
    the process's memory went."""
    after_start = server.memory()
    run = asyncio.run(_stream(server, records, slugs))
    scada_up_s = server.scada_up_s()
    fed, samples = run["fed"], run["samples"]
    after = server.memory()
    second_half = [s for s in samples if s["records"] >= records / 2]
    slope = slope_mb_per_100k(second_half)
    return {
        "agents_running_s": run["agents_running_s"],
        "scada_up_s": scada_up_s,
        "after_start": after_start,
        "samples": samples,
        "sample_every": sample_step(records),
        "after": after,
        "peak_mb": max(after["hwm_mb"], *(s["hwm_mb"] for s in samples)),
        "second_half_slope_mb_per_100k": slope,
        "second_half_growth_mb": (
            second_half[-1]["rss_mb"] - second_half[0]["rss_mb"] if second_half else math.nan
        ),
        "trend": (
            "unknown" if math.isnan(slope) else "growing" if slope > FLAT_SLOPE_MB else "flat"
        ),
        **server.mapped(),
        "load": {
            "records": records,
            "connections": CONNECTIONS,
            "records_per_request": PAYLOAD_RECORDS,
            "requests": fed.requests,
            "posting_s": fed.post_s,
            "accepted_per_s": fed.records_accepted / fed.post_s if fed.post_s else math.nan,
            "total_s": run["seconds"],
            "scored_per_s": fed.records_accepted / run["seconds"] if run["seconds"] else math.nan,
        },
        "consistency": {
            "records_posted": fed.records_posted,
            "records_accepted": fed.records_accepted,
            "server_accepted": run["server_accepted"],
            "scored": run["scored"],
            "all_scored": run["drained"],
            "status_codes": dict(sorted(fed.statuses.items())),
            "non_2xx": fed.non_2xx,
            "transport_errors": fed.errors,
            "first_error": fed.first_error,
        },
    }


# -- the bench -----------------------------------------------------------------------------


def _ports() -> Ports:
    return Ports(free_port(), free_port(), free_port(), free_port())


def run_process_bench(
    settings: Settings, quick: bool, records: int | None = None
) -> dict[str, Any]:
    records = records if records is not None else 100_000 if quick else 1_000_000
    slugs = [s for s in TELEMETRY_SLUGS if getattr(settings.agents, s).enabled]
    imports = import_times(1 if quick else 3)
    starts: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="factory_mas-bench-process-") as root:
        for n in range(1 if quick else 3):
            # A fresh data dir each time, so every start does the same work: a first start.
            folder = Path(root) / f"start-{n + 1}"
            server = ServerProcess(bench_settings(settings, folder / "data", _ports()), folder)
            start: dict[str, Any] = {}
            try:
                start = server.start()
                if n == (0 if quick else 2):
                    memory = memory_run(server, records, slugs)
            finally:
                if server.proc is not None:
                    starts.append({**start, "stop": server.stop()})
        data_mb = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file()) / 2**20
    ready = [s["ready_s"] for s in starts]
    median_run = sorted(starts, key=lambda s: s["ready_s"])[len(starts) // 2]
    return {
        "machine": machine_facts(),
        "quick": quick,
        "server": {
            "command": f"{Path(sys.executable).name} -m factory_mas",
            "scada": scada_description(server.settings),
            "replay": "off",
            "mqtt": "off",
            "auth": "off",
            "log_level": BENCH_LOG_LEVEL,
            "agents": slugs,
            "data_written_mb": data_mb,
        },
        "startup": {
            "runs": ready,
            "min_s": min(ready),
            "median_s": statistics.median(ready),
            "median_run": {k: median_run[k] for k in ("phases", "longest_silences")},
            "imports": imports,
            "stops": [s["stop"] for s in starts],
        },
        "memory": memory,
        "consistency": _consistency(memory.pop("consistency"), starts),
        "targets": _targets(statistics.median(ready), memory),
    }


def _consistency(fed: dict[str, Any], starts: list[dict[str, Any]]) -> dict[str, Any]:
    accepted = fed["records_accepted"]
    stops = [s["stop"] for s in starts]
    return {
        **fed,
        "ready_reached": all("ready_s" in s for s in starts),
        "posted_equals_accepted": fed["records_posted"] == accepted,
        "accepted_equals_scored": all(n == accepted for n in fed["scored"].values()),
        "exit_codes": [s["exit_code"] for s in stops],
        "killed": any(s["killed"] for s in stops),
        "clean_exit": all(s["clean"] for s in stops),
    }


def _targets(ready_median_s: float, memory: dict[str, Any]) -> dict[str, Any]:
    return {
        "startup_s": target(ready_median_s, STARTUP_TARGET_S, at_least=False),
        "peak_rss_mb": target(memory["peak_mb"], RSS_TARGET_MB, at_least=False),
        "rss_slope_mb_per_100k": target(
            memory["second_half_slope_mb_per_100k"], FLAT_SLOPE_MB, at_least=False
        ),
        # 0 or 1: a library either is mapped into the process or is not.
        "tensorflow_loaded": target(float(memory["tensorflow_loaded"]), 0.0, at_least=False),
    }


def process_report(results: dict[str, Any]) -> str:
    m, srv, st = results["machine"], results["server"], results["startup"]
    mem, c, t = results["memory"], results["consistency"], results["targets"]
    imp, load = st["imports"], mem["load"]
    runs = ", ".join(f"{s:.2f}" for s in st["runs"])
    stop_s = ", ".join(f"{s['stop_s']:.1f}" for s in st["stops"])
    top = ", ".join(f"{p['package']} {p['ms']:.0f}" for p in imp["importtime_top"][:6])
    lines = [
        f"process bench: {srv['command']}, {m['cores']} cores, Python "
        f"{m['python']}{' (quick)' if results['quick'] else ''}",
        f"replay {srv['replay']}, MQTT {srv['mqtt']}, auth {srv['auth']}, SCADA {srv['scada']}",
        "",
        f"start-up, spawn to first /health 200 (s): {runs}; min {st['min_s']:.2f}, "
        f"median {st['median_s']:.2f}",
        f"  the memory run's start: every telemetry agent running its model at "
        f"{mem['agents_running_s']:.2f} s; SCADA servers listening "
        + (f"at {mem['scada_up_s']:.2f} s" if mem["scada_up_s"] is not None else "(not logged)"),
        f"  python -c pass {imp['python_bare_s']:.2f} s; import factory_mas.app "
        f"{imp['import_app_s']:.2f} s",
        f"  -X importtime by package (ms): {top}",
        "  phases of the median start (from its log lines):",
        *(
            f"    {p['phase']:<36}{p['s']:>6.2f} s  (at {p['until_s']:.2f} s)"
            for p in st["median_run"]["phases"]
        ),
        "  longest silences in its start-up log:",
        *(
            f"    {g['s']:.2f} s at {g['at_s']:.2f} s, then: {g['before'][:70]}"
            for g in st["median_run"]["longest_silences"]
        ),
        "",
        f"memory under HTTP ingest: {load['records']:,} records, arrays of "
        f"{load['records_per_request']}, {load['connections']} connections",
        f"  posting: {load['accepted_per_s']:,.0f} records/s accepted; end to end, all "
        f"scored: {load['scored_per_s']:,.0f} records/s ({load['total_s']:.0f} s)",
        "  memory after each tenth: at once (with the agents' backlog), and once scored",
        f"{'':2}{'records':>11}{'backlog':>9}{'RSS MB':>8}{'scored: RSS':>13}{'peak MB':>9}",
        f"{'':2}{'start':>11}{'':>9}{'':>8}{mem['after_start']['rss_mb']:>13.0f}"
        f"{mem['after_start']['hwm_mb']:>9.0f}",
        *(
            f"{'':2}{s['records']:>11,}{s['backlog']:>9,}{s['rss_loaded_mb']:>8.0f}"
            f"{s['rss_mb']:>13.0f}{s['hwm_mb']:>9.0f}"
            for s in mem["samples"]
        ),
        f"  second half: {mem['second_half_slope_mb_per_100k']:+.1f} MB per 100k records "
        f"({mem['second_half_growth_mb']:+.0f} MB): {mem['trend']}"
        + (
            " (a short run: warm-up steps weigh in; the full run's 1M records decide)"
            if load["records"] < 500_000
            else ""
        ),
        f"  mapped: tensorflow {'yes' if mem['tensorflow_loaded'] else 'no'}, scikit-learn "
        f"{'yes' if mem['sklearn_loaded'] else 'no'}; {mem['threads']} threads",
        "",
        f"consistency: posted {c['records_posted']:,}, accepted {c['records_accepted']:,} "
        f"(server counted {c['server_accepted']:,}), scored "
        + ", ".join(f"{k} {v:,}" for k, v in c["scored"].items())
        + ("" if c["all_scored"] else f" (NOT all: no progress for {STALL_S:.0f} s)"),
        f"  non-2xx {c['non_2xx']}, transport errors {c['transport_errors']}",
        f"  SIGTERM: exit codes {c['exit_codes']} after {stop_s} s; "
        + ("clean" if c["clean_exit"] else "NOT clean")
        + " (uvicorn re-raises the signal after a graceful shutdown: -15 is clean when "
        "'Application shutdown complete' was logged)"
        + ("; SIGKILLed after hanging" if c["killed"] else ""),
        "",
        f"target ready <= {t['startup_s']['target']:.0f} s (median): "
        f"{t['startup_s']['value']:.2f} s, {verdict(t['startup_s'])}",
        f"target peak RSS <= {t['peak_rss_mb']['target']:.0f} MB: "
        f"{t['peak_rss_mb']['value']:.0f} MB, {verdict(t['peak_rss_mb'])}",
        f"target RSS flat (<= {t['rss_slope_mb_per_100k']['target']:.0f} MB per 100k records "
        f"over the second half): {verdict(t['rss_slope_mb_per_100k'])}",
        f"target TensorFlow not loaded: {verdict(t['tensorflow_loaded'])}",
    ]
    return "\n".join(lines)
