"""WebSocket fan-out on a real uvicorn with the server's own protocols: a client that
stops reading is dropped within server.send_timeout_s, one that reads stays."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from factory_mas.http.server import uvicorn_options
from factory_mas.http.ws import WsClient, broadcast, frame, stream
from factory_mas.settings import Settings
from tests.support.net import free_port
from tests.support.waiting import until

# Real uvicorn and WebSocket clients on a loopback port.
pytestmark = pytest.mark.integration

FRAME = frame("big", "x" * 256_000)


@asynccontextmanager
async def fan_out(settings: Settings) -> AsyncIterator[tuple[uvicorn.Server, set[WsClient]]]:
    """A stream route on uvicorn, broadcasting large frames as fast as clients take them."""
    clients: set[WsClient] = set()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        await stream(ws, clients, WsClient(8), frame("hello", None))

    async def producer() -> None:
        while True:
            broadcast(clients, FRAME)
            await asyncio.sleep(0.01)  # the broadcast's pace; nothing waits on it

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    port = free_port()
    options = {**uvicorn_options(settings), "log_level": "warning"}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    serving = asyncio.create_task(server.serve())
    producing = asyncio.create_task(producer())
    try:
        await until(lambda: server.started or serving.done(), "uvicorn to start")
        assert server.started, "uvicorn did not start"
        yield server, clients
    finally:
        producing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producing
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


def handshake(port: int) -> socket.socket:
    """A raw socket that opens a WebSocket on /ws and then never reads a byte more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: factory\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)  # byte by byte: nothing after the handshake is read
    assert answer.startswith(b"HTTP/1.1 101"), answer
    return sock


async def test_a_client_that_stops_reading_is_dropped_and_a_reader_stays(
    settings: Settings,
) -> None:
    settings = msgspec.structs.replace(
        settings, server=msgspec.structs.replace(settings.server, send_timeout_s=2.0)
    )
    async with fan_out(settings) as (server, clients):
        port = server.config.port
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as reader:
            received = 0

            async def read() -> None:
                nonlocal received
                async for _message in reader:
                    received += 1

            reading = asyncio.create_task(read())
            stuck = await asyncio.to_thread(handshake, port)
            try:
                await until(lambda: len(clients) == 2, "both clients streaming")
                # Its buffers fill, then after send_timeout_s the server lets it go:
                # the stream ends and so does the connection (uvicorn's count).
                await until(lambda: len(clients) == 1, "the stuck client dropped", 120)
                await until(
                    lambda: len(server.server_state.connections) == 1,
                    "its connection closed",
                    30,
                )
                # The reader is the one left, and still getting frames.
                before = received
                await until(lambda: received > before + 5, "frames for the reader", 60)
            finally:
                stuck.close()
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
