"""Command line: `python -m factory_mas [serve|train|replay|keys|...]` (serve is the default)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from . import __version__
from .errors import FactoryError, SettingsError
from .logs import formatter
from .settings import ROLES, ReplaySettings, Settings, load_settings

# Where `replay --url` finds its API key when --key is not given.
API_KEY_ENV = "FACTORY_API_KEY"

log = logging.getLogger("factory_mas")


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # asyncua logs about a thousand INFO lines while it builds the OPC UA address space,
    # on every start; its warnings and errors still show.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.root.level))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from .app import build_app, check_role
    from .http.server import uvicorn_options

    # Folded into the settings, so everything derived from them (the default instance id
    # and MQTT client id name the port) agrees with what is served.
    server = msgspec.structs.replace(
        settings.server,
        host=args.host or settings.server.host,
        port=args.port or settings.server.port,
    )
    instance = msgspec.structs.replace(settings.instance, role=args.role or settings.instance.role)
    settings = msgspec.structs.replace(settings, server=server, instance=instance)
    try:
        check_role(settings)
    except SettingsError as exc:
        print(f"factory_mas: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        # Serving HTTP need not wait seconds for OPC UA's address space; /health tells.
        build_app(settings, scada_in_background=True),
        host=server.host,
        port=server.port,
        **uvicorn_options(settings),
    )
    return 0


def cmd_train(settings: Settings, args: argparse.Namespace) -> int:
    from .training import TRAINERS, train_all

    unknown = set(args.only or ()) - set(TRAINERS)
    if unknown:
        print(
            f"factory_mas train: unknown agent {sorted(unknown)}; known: {sorted(TRAINERS)}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out) if args.out else settings.models_dir
    for agent, entry in train_all(out, args.only).items():
        metrics = ", ".join(f"{k}={v}" for k, v in entry["metrics"].items())
        print(f"{agent}: {entry['version']} -> {out}  [{metrics}]")
    return 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from .ingest.replay import Replay

    mqtt_only = [
        name
        for name, value in (
            ("--batch", args.batch),
            ("--qos", args.qos),
            ("--per-machine-topics", args.per_machine_topics or None),
        )
        if value is not None
    ]
    if args.broker is not None and (args.url or args.stdout):
        print(
            "factory_mas replay: --broker goes with --mqtt, not --url or --stdout", file=sys.stderr
        )
        return 2
    mqtt = args.mqtt or args.broker is not None
    if args.key is not None and (mqtt or args.stdout):
        print(
            "factory_mas replay: --key goes with --url (HTTP), not --mqtt or --stdout",
            file=sys.stderr,
        )
        return 2
    if mqtt_only and not mqtt:
        print(f"factory_mas replay: {', '.join(mqtt_only)} need --mqtt", file=sys.stderr)
        return 2

    overrides = {
        k: v
        for k, v in {
            "rate": args.rate,
            "csv": args.csv,
            "machines": args.machines,
            "seed": args.seed,
        }.items()
        if v is not None
    }
    replay_settings = msgspec.structs.replace(settings.replay, **overrides)
    keep = None
    if args.only is not None:
        from .ingest.publish import only_machines, parse_machine_ids

        try:
            machine_ids = parse_machine_ids(args.only)
        except SettingsError as exc:
            print(f"factory_mas replay: --only: {exc}", file=sys.stderr)
            return 2
        beyond = sorted(i for i in machine_ids if i > replay_settings.machines)
        if beyond and not replay_settings.csv:
            print(
                f"factory_mas replay: --only: machine {beyond[0]} is not simulated; "
                f"the simulator runs machines 1-{replay_settings.machines} (--machines)",
                file=sys.stderr,
            )
            return 2
        keep = only_machines(machine_ids)
    if mqtt:
        return _replay_mqtt(settings, replay_settings, args, keep)
    encoder = msgspec.json.Encoder()

    async def main() -> None:
        if args.stdout:

            async def sink(rows: list[dict[str, Any]], _indices: list[int] | None) -> None:
                sys.stdout.buffer.write(b"".join(encoder.encode(r) + b"\n" for r in rows))
                sys.stdout.flush()

            try:
                await Replay(replay_settings, sink, limit=args.count, keep=keep).run()
            except BrokenPipeError:
                # The reader went away (`| head`): stop quietly, and keep Python's final
                # flush of stdout from complaining about the closed pipe.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return
        url = args.url or f"http://127.0.0.1:{settings.server.port}/api/ingest"
        key = args.key or os.environ.get(API_KEY_ENV, "")
        headers = {"content-type": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        async with httpx.AsyncClient(timeout=30) as client:

            async def post(rows: list[dict[str, Any]], _indices: list[int] | None) -> None:
                try:
                    response = await client.post(
                        url,
                        content=encoder.encode(rows),
                        headers=headers,
                    )
                except httpx.HTTPError as exc:
                    raise FactoryError(f"cannot reach {url}: {exc}") from exc
                if response.status_code in (401, 403):
                    given = "the key given" if key else f"no key (--key or {API_KEY_ENV})"
                    raise FactoryError(
                        f"{url} answered {response.status_code} with {given}: ingest needs "
                        f"an API key with the operator role ({response.text[:200]})"
                    )
                if response.status_code >= 400 and response.status_code != 422:
                    raise FactoryError(
                        f"{url} answered {response.status_code}: {response.text[:200]}"
                    )

            replay = Replay(replay_settings, post, limit=args.count, keep=keep)
            task = asyncio.create_task(replay.run())
            while not task.done():
                await asyncio.wait({task}, timeout=2)
                rate = replay.stats()["rate_actual"]
                print(
                    f"\rreplay: {replay.sent} records sent to {url} ({rate}/s)",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            print(file=sys.stderr)
            task.result()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def _replay_mqtt(
    settings: Settings,
    replay_settings: ReplaySettings,
    args: argparse.Namespace,
    keep: Callable[[dict[str, Any]], bool] | None,
) -> int:
    from .ingest.publish import (
        MqttPublisher,
        ReplaySink,
        parse_broker,
        progress_line,
    )
    from .ingest.replay import Replay
    from .topics import TELEMETRY

    mqtt = settings.mqtt
    try:
        if args.broker is not None:
            host, port = parse_broker(args.broker, mqtt.port)
        elif mqtt.broker:
            host, port = mqtt.broker, mqtt.port
        else:
            raise SettingsError("no broker: pass --broker HOST[:PORT] or set MQTT_BROKER")
        if args.batch is not None and args.batch < 1:
            raise SettingsError(f"--batch {args.batch}: at least 1 record per message")
    except SettingsError as exc:
        print(f"factory_mas replay: {exc}", file=sys.stderr)
        return 2
    mqtt = msgspec.structs.replace(mqtt, broker=host, port=port)
    per_machine = args.per_machine_topics
    topic = f"{TELEMETRY}/<machine_id>" if per_machine else TELEMETRY
    state: dict[str, Any] = {"publisher": None, "started": time.monotonic(), "width": 0}

    def show() -> None:
        publisher = state["publisher"]
        if publisher is None:
            return
        line = progress_line(publisher, state["started"], topic)
        # Pad over the end of a longer previous line (the broker-lost note).
        print(f"\r{line:<{state['width']}}", end="", file=sys.stderr, flush=True)
        state["width"] = len(line)

    async def main() -> None:
        async with MqttPublisher(mqtt, qos=1 if args.qos is None else args.qos) as publisher:
            state["publisher"], state["started"] = publisher, time.monotonic()
            sink = ReplaySink(publisher, batch=args.batch or 1, per_machine_topics=per_machine)
            replay = Replay(replay_settings, sink, limit=args.count, keep=keep)

            async def replay_all() -> None:
                await replay.run()
                await publisher.drain()  # --count means records the broker has, not sent

            task = asyncio.create_task(replay_all())
            while not task.done():
                await asyncio.wait({task}, timeout=1)
                show()
            task.result()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        show()
        publisher = state["publisher"]
        held = publisher.held_records if publisher is not None else 0
        print(file=sys.stderr)
        if held:
            print(f"factory_mas replay: interrupted, {held} records not confirmed", file=sys.stderr)
        return 130
    except FactoryError:
        if state["publisher"] is not None:
            print(file=sys.stderr)
        raise
    print(file=sys.stderr)
    return 0


def cmd_points(settings: Settings, args: argparse.Namespace) -> int:
    from .bridges.scada.points import as_csv, as_table, build_points, rows

    points = build_points(settings)
    if args.format == "csv":
        sys.stdout.write(as_csv(points))
    elif args.format == "json":
        sys.stdout.write(msgspec.json.encode({"points": rows(points)}).decode() + "\n")
    else:
        print(as_table(points))
        print(
            f"\n{len(points)} points. OPC UA namespace http://6g-mas-factory.com on port "
            f"{settings.scada.opcua_port}; Modbus TCP port {settings.scada.modbus_port}, device "
            f"id {settings.scada.modbus_device_id}, "
            + ("float32 (2 registers)" if settings.scada.modbus_float32 else "value x scale")
            + f"; DNP3 port {settings.scada.dnp3_port}, outstation "
            f"{settings.scada.dnp3_outstation_address}. --csv for a spreadsheet."
        )
    return 0


def cmd_convert(_settings: Settings, args: argparse.Namespace) -> int:
    source, target = Path(args.keras), Path(args.tflite)
    try:
        import keras

        from .training.common import to_tflite
    except ImportError:
        print("factory_mas convert: needs TensorFlow: pip install -e '.[train]'", file=sys.stderr)
        return 2
    try:
        model = keras.saving.load_model(source)
    except (OSError, ValueError) as exc:
        print(f"factory_mas convert: cannot load {source}: {exc}", file=sys.stderr)
        return 1
    target.write_bytes(to_tflite(model))
    print(f"{source} -> {target}: input {model.input_shape}, output {model.output_shape}")
    return 0


def cmd_bench(settings: Settings, args: argparse.Namespace) -> int:
    from . import bench

    # The apps the bench runs in this process would log every start, stop and alarm
    # flood between the tables; their warnings and errors still show.
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    names = {section.name for section in bench.SECTIONS if getattr(args, section.name)}
    results = bench.run(settings, bench.chosen(names), quick=args.quick)
    if args.json != "-":
        bench.write_json(results, Path(args.json))
        print(f"\nwritten to {args.json}")
    return 0


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    from .auth import keys
    from .store import Store
    from .times import iso

    try:
        who = f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (some containers)
        who = "cli"

    async def run() -> int:
        async with Store.from_settings(settings) as store:
            if args.keys_command == "add":
                key_id, key = await store.write(keys.add, args.name, args.role, who, "cli")
                print(f"key {key_id} {args.name!r} ({args.role}); shown once, store it now:")
                print(key)
            elif args.keys_command == "list":
                rows = await store.read(keys.list_keys, not args.active)
                if args.json:
                    print(msgspec.json.encode(rows).decode())
                    return 0
                header = ("id", "name", "role", "prefix", "created", "last used", "revoked")
                table = [
                    (
                        str(r["id"]),
                        r["name"],
                        r["role"],
                        r["prefix"] + "...",
                        _when(iso(r["created_at"])),
                        _when(iso(r["last_used_at"])) or "never",
                        _when(iso(r["revoked_at"])) or "-",
                    )
                    for r in rows
                ]
                widths = [max(len(row[i]) for row in (header, *table)) for i in range(7)]
                for row in (header, *table):
                    cells = (cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                    print("  ".join(cells).rstrip())
            else:
                row = await store.write(keys.revoke, args.key, who, "cli")
                print(
                    f"key {row['id']} {row['name']!r} ({row['role']}, {row['prefix']}...) "
                    f"revoked at {_when(iso(row['revoked_at']))}; a running server stops "
                    "taking it within 30 s"
                )
        return 0

    return asyncio.run(run())


def _when(text: str | None) -> str:
    return "" if text is None else text[:19].replace("T", " ") + "Z"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory_mas", description="Smart-factory multi-agent backend")
    p.add_argument("--version", action="version", version=__version__)
    p.add_argument(
        "--settings", help="settings file (default: $FACTORY_SETTINGS or ./settings.toml)"
    )
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run everything on one port (the default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--role",
        choices=ROLES,
        help="all (default: everything in this process), ingest (telemetry and agents; "
        "several may run) or control (alarms, SCADA, dashboard; one); ingest and control "
        "need MQTT_BROKER and share DATABASE_URL. Default: instance.role",
    )
    train = sub.add_parser("train", help="rebuild the model artifacts (seeded, repeatable)")
    train.add_argument("--out", help="folder to write (default: the artifacts folder in use)")
    train.add_argument("--only", nargs="+", metavar="AGENT_ID", help="train just these agents")
    replay = sub.add_parser(
        "replay", help="stream telemetry to a running server, an MQTT broker or stdout"
    )
    target = replay.add_mutually_exclusive_group()
    target.add_argument(
        "--url", help="POST batches here (default: http://127.0.0.1:PORT/api/ingest)"
    )
    target.add_argument("--stdout", action="store_true", help="print one JSON record per line")
    replay.add_argument(
        "--key",
        help=f"--url: the API key to send (operator role); default ${API_KEY_ENV}. "
        "The environment keeps it out of the process list",
    )
    target.add_argument(
        "--mqtt",
        action="store_true",
        help="publish to an MQTT broker: --broker, or MQTT_BROKER / [mqtt] in settings",
    )
    replay.add_argument(
        "--broker",
        metavar="HOST[:PORT]",
        help="the broker for --mqtt (implies it); the port defaults to MQTT_PORT or 1883",
    )
    replay.add_argument(
        "--batch",
        type=int,
        metavar="N",
        help="--mqtt: records per message; 1 (default) sends JSON objects, more JSON arrays",
    )
    replay.add_argument(
        "--per-machine-topics",
        action="store_true",
        help="--mqtt: publish on sensors/factory/data/<machine_id>",
    )
    replay.add_argument(
        "--qos", type=int, choices=(0, 1), help="--mqtt: 1 (default) loses nothing; 0 is faster"
    )
    replay.add_argument("--only", metavar="IDS", help="only these machine ids, e.g. 1-10,15")
    replay.add_argument("--rate", type=float, help="records per second, 0 = as fast as possible")
    replay.add_argument("--csv", help="replay this CSV (Kaggle header names) instead of simulating")
    replay.add_argument("--machines", type=int, help="number of simulated machines")
    replay.add_argument("--seed", type=int, help="simulator seed")
    replay.add_argument("--count", type=int, help="stop after this many records")
    points = sub.add_parser("points", help="print the SCADA point table (OPC UA, Modbus, DNP3)")
    shape = points.add_mutually_exclusive_group()
    shape.add_argument("--csv", dest="format", action="store_const", const="csv")
    shape.add_argument("--json", dest="format", action="store_const", const="json")
    convert = sub.add_parser("convert", help="turn a Keras model into a .tflite LiteRT serves")
    convert.add_argument("keras", help="a .keras or .h5 file")
    convert.add_argument("tflite", help="where to write the .tflite")
    bench = sub.add_parser(
        "bench",
        help="measure this machine: the whole pipeline, HTTP, start-up and memory",
        description="With no section named, runs process, pipeline and http. Targets are "
        "ratios or floors measured beside their baselines in the same run.",
    )
    from .bench import SECTIONS

    for section in SECTIONS:
        default = " (default)" if section.default else ""
        bench.add_argument(f"--{section.name}", action="store_true", help=section.help + default)
    bench.add_argument("--quick", action="store_true", help="short runs, about a minute each")
    bench.add_argument(
        "--json",
        default="docs/bench.json",
        help="where to write every figure, with the machine's cores and Python (default "
        "%(default)s; - for nowhere)",
    )
    keys = sub.add_parser(
        "keys", help="API keys: add, list, revoke (roles viewer < operator < admin)"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    add = keys_sub.add_parser("add", help="make a key; it is printed once, only its hash is kept")
    add.add_argument("name", help="who or what uses it (recorded as the actor of its changes)")
    add.add_argument("--role", choices=("viewer", "operator", "admin"), default="viewer")
    listing = keys_sub.add_parser("list", help="every key: id, name, role, prefix, use, revoked")
    listing.add_argument("--active", action="store_true", help="leave revoked keys out")
    listing.add_argument("--json", action="store_true", help="as JSON")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix (fmk_...)")
    revoke.add_argument("key", metavar="ID_OR_PREFIX")
    return p


COMMANDS = {
    "serve": cmd_serve,
    "train": cmd_train,
    "replay": cmd_replay,
    "bench": cmd_bench,
    "convert": cmd_convert,
    "points": cmd_points,
    "keys": cmd_keys,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command is None:
        args = parser().parse_args([*(argv or sys.argv[1:]), "serve"])
    try:
        settings = load_settings(args.settings)
    except SettingsError as exc:
        print(f"factory_mas: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings.server.log_level, settings.server.log_format)
    try:
        return COMMANDS[args.command](settings, args)
    except FactoryError as exc:
        print(f"factory_mas: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
