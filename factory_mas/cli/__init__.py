"""Command line: `python -m factory_mas [serve|train|replay|keys|...]` (serve is the default).

The parser and the dispatch are here; the commands are in `commands`, `replay` and `keys`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import FactoryError, SettingsError
from ..labels.model import LABEL_KINDS
from ..logs import formatter
from ..settings import ROLES, load_settings
from .commands import cmd_bench, cmd_convert, cmd_points, cmd_serve, cmd_train
from .export import add_parser as add_export_parser
from .export import cmd_export, instant
from .keys import cmd_keys
from .labels import cmd_labels
from .replay import API_KEY_ENV, cmd_replay


def _setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # asyncua logs about a thousand INFO lines while it builds the OPC UA address space,
    # on every start; its warnings and errors still show.
    logging.getLogger("asyncua").setLevel(max(logging.WARNING, logging.root.level))


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
    train = sub.add_parser(
        "train", help="rebuild the models: from the simulator, or from a plant's own data"
    )
    data = train.add_mutually_exclusive_group()
    data.add_argument("--csv", metavar="FILE", help="train on this telemetry CSV")
    data.add_argument(
        "--from-store", action="store_true", help="train on the telemetry store's history"
    )
    data.add_argument("--images", metavar="DIR", help="train ppe on these photos (with --labels)")
    train.add_argument("--labels", metavar="FILE", help="labels CSV (photos' labels for --images)")
    train.add_argument(
        "--since", type=instant, help="--from-store: from this time (ISO 8601 or Unix s)"
    )
    train.add_argument(
        "--until", type=instant, help="--from-store: up to this time (ISO 8601 or Unix s)"
    )
    train.add_argument(
        "--map",
        nargs="+",
        default=[],
        metavar="COLUMN=field",
        help="read CSV column COLUMN as telemetry field (e.g. Temp=temperature_c)",
    )
    train.add_argument("--only", nargs="+", metavar="AGENT_ID", help="train just these agents")
    train.add_argument("--out", help="folder to write (default: the models folder in use)")
    train.add_argument(
        "--force", action="store_true", help="install models that do not beat their baselines"
    )
    train.add_argument(
        "--skip-invalid", action="store_true", help="train on the valid CSV rows, skip the rest"
    )
    train.add_argument(
        "--target-alert-rate",
        type=float,
        metavar="R",
        help="share of normal readings allowed to raise an anomaly alert (default 0.005)",
    )
    train.add_argument("--seed", type=int, help="random seed of a plant run (default 1234)")
    train.add_argument(
        "--param",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="a plant trainer's own setting, e.g. epochs=2 (see docs/models.md)",
    )
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
    add_export_parser(sub)
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
    from ..bench import SECTIONS

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
    _labels_parser(sub)
    return p


def _labels_parser(sub: argparse._SubParsersAction) -> None:
    labels = sub.add_parser(
        "labels", help="maintenance, failures, incidents and alarm verdicts: import, export"
    )
    labels_sub = labels.add_subparsers(dest="labels_command", required=True)
    load = labels_sub.add_parser("import", help="store the labels of a CSV (docs/api.md, Labels)")
    load.add_argument("file", metavar="FILE.csv")
    load.add_argument(
        "--skip-invalid", action="store_true", help="store the good lines, skip the bad ones"
    )
    export = labels_sub.add_parser("export", help="write stored labels as CSV")
    export.add_argument("--kind", choices=LABEL_KINDS)
    export.add_argument("--machine-id", type=int)
    export.add_argument("--since", type=instant, help="from this start (ISO 8601 or Unix s)")
    export.add_argument("--until", type=instant, help="before this start (ISO 8601 or Unix s)")
    export.add_argument("--out", metavar="FILE", help="write here (default: standard output)")


COMMANDS = {
    "serve": cmd_serve,
    "train": cmd_train,
    "replay": cmd_replay,
    "bench": cmd_bench,
    "convert": cmd_convert,
    "points": cmd_points,
    "keys": cmd_keys,
    "export": cmd_export,
    "labels": cmd_labels,
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
