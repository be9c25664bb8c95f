"""`replay`: stream telemetry to a running server (HTTP), an MQTT broker or stdout."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ..errors import FactoryError, SettingsError
from ..settings import ReplaySettings, Settings

# Where `replay --url` finds its API key when --key is not given.
API_KEY_ENV = "FACTORY_API_KEY"


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    import httpx

    from ..ingest.replay import Replay

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
        from ..ingest.publish import only_machines, parse_machine_ids

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
    from ..ingest.publish import (
        MqttPublisher,
        ReplaySink,
        parse_broker,
        progress_line,
    )
    from ..ingest.replay import Replay
    from ..topics import TELEMETRY

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
