"""The commands besides replay and keys: serve, train, points, convert, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from ..errors import SettingsError, TrainingError
from ..settings import Settings

if TYPE_CHECKING:
    from ..agents.registry import AgentEntry


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from ..app import build_app, check_role
    from ..http.server import uvicorn_options

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
    from ..training import TRAINERS, plant_agents, simulator_jobs, train_staged
    from ..training.cards import card_lines

    out = Path(args.out) if args.out else settings.models_dir
    plant = bool(args.csv or args.from_store or args.images)
    agents: list[AgentEntry[Any]] = []
    try:
        mapping = _pairs("--map", args.map)
        params = {k: _number(v) for k, v in _pairs("--param", args.param).items()}
        if args.target_alert_rate is not None and not 0 < args.target_alert_rate < 1:
            raise TrainingError(
                f"--target-alert-rate {args.target_alert_rate}: a share between 0 and 1, "
                "e.g. 0.005 for 0.5 % of normal readings"
            )
        plant_flags = ("map", "labels", "skip_invalid", "since", "until", "param", "seed")
        given = [f for f in (*plant_flags, "target_alert_rate") if getattr(args, f)]
        if given and not plant:
            raise TrainingError(
                f"--{given[0].replace('_', '-')} applies to training on plant data "
                "(--csv, --from-store or --images)"
            )
        if args.images and not args.labels:
            raise TrainingError("--images needs --labels FILE (the photos' labels)")
        if plant:
            agents = plant_agents(args.only, photos=bool(args.images))
        elif set(args.only or ()) - set(TRAINERS):
            unknown = sorted(set(args.only) - set(TRAINERS))
            raise TrainingError(f"unknown agent {unknown}; known: {sorted(TRAINERS)}")
    except TrainingError as exc:
        print(f"factory_mas train: {exc}", file=sys.stderr)
        return 2
    packaged = msgspec.structs.replace(settings.models, dir="")
    if plant and out.resolve() == msgspec.structs.replace(settings, models=packaged).models_dir:
        print(
            f"factory_mas train: note: writing a plant's models into the packaged {out}; "
            "a folder of their own (--out DIR, served with FACTORY_MODELS_DIR=DIR) keeps "
            "the shipped models to roll back to",
            file=sys.stderr,
        )
    jobs = _plant_jobs(settings, args, agents, mapping, params) if plant else None
    run = train_staged(
        out,
        jobs if jobs is not None else simulator_jobs(args.only),
        force=args.force,
        # Without --only, an agent this data cannot train is left out, not a failure.
        optional=plant and not args.only,
    )
    for agent, entry in run.entries.items():
        print(f"{agent}: {entry['version']}")
        entry_card = entry.get("card") or {}
        if not entry_card.get("comparisons") and entry_card.get("why"):
            lines = [f"{agent}: nothing learnt to compare: {entry_card['why']}"]
        else:
            lines = card_lines(agent, entry_card)
        for line in lines:
            print(f"  {line}")
    for agent, reason in run.skipped.items():
        print(f"{agent}: not trained: {reason}")
    if run.failure:
        print(f"factory_mas train: nothing installed in {out}: {run.failure}", file=sys.stderr)
        return 1
    print(f"installed {', '.join(run.entries)} into {out}")
    return 0


def _plant_jobs(
    settings: Settings,
    args: argparse.Namespace,
    agents: list[AgentEntry[Any]],
    mapping: dict[str, str],
    params: dict[str, Any],
) -> dict[str, Callable[[Path], dict[str, Any]]]:
    """The plant's data read once, then a job per agent on it."""
    from ..training import plant_jobs
    from ..training.plant import PlantOptions
    from ..training.sources import from_store, read_csv, read_labels_file

    def note(text: str) -> None:
        print(f"note: {text}")

    defaults = PlantOptions()
    options = PlantOptions(
        seed=defaults.seed if args.seed is None else args.seed,
        target_alert_rate=(
            defaults.target_alert_rate if args.target_alert_rate is None else args.target_alert_rate
        ),
    )
    if args.images:
        images, labels_csv = Path(args.images), Path(args.labels)
        return plant_jobs(
            agents, lambda trainer, stage: trainer(images, labels_csv, stage, options, **params)
        )
    labels = read_labels_file(Path(args.labels)) if args.labels else None
    if args.csv:
        data = read_csv(Path(args.csv), mapping, args.skip_invalid, labels or (), note)
    else:
        data = from_store(settings, args.since, args.until, labels, note)
    print(f"training on {data.source}")
    return plant_jobs(agents, lambda trainer, stage: trainer(data, stage, options, **params))


def _pairs(option: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise TrainingError(f"{option} {item!r}: expected NAME=VALUE")
        pairs[key] = value
    return pairs


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def cmd_points(settings: Settings, args: argparse.Namespace) -> int:
    from ..bridges.scada.points import as_csv, as_table, build_points, rows

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

        from ..training.common import to_tflite
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
    from .. import bench

    # The apps the bench runs in this process would log every start, stop and alarm
    # flood between the tables; their warnings and errors still show.
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    names = {section.name for section in bench.SECTIONS if getattr(args, section.name)}
    results = bench.run(settings, bench.chosen(names), quick=args.quick)
    if args.json != "-":
        bench.write_json(results, Path(args.json))
        print(f"\nwritten to {args.json}")
    return 0
