"""The commands besides replay and keys: serve, train, points, convert, bench."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import msgspec

from ..errors import SettingsError
from ..settings import Settings


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
    from ..training import TRAINERS, train_all

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
