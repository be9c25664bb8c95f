"""WebSocket fan-out shared by every component that streams: one bounded queue per client.

A slow reader only loses its own oldest messages and never holds up the producer or the
other clients; `dropped` says how many it lost. A reader that takes nothing at all is
dropped by the server (`server.send_timeout_s`, see server.py): only the connection can
tell that its buffers stay full, and only it can let go of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

_json = msgspec.json.Encoder()


def frame(kind: str, data: Any) -> bytes:
    """The JSON every stream sends: {"type": kind, "data": ...}."""
    return _json.encode({"type": kind, "data": data})


class WsClient:
    def __init__(self, size: int, subject: Any = None) -> None:
        self.subject = subject  # what this reader asked for; the producer interprets it
        self.queue: deque[bytes] = deque(maxlen=size)
        self.ready = asyncio.Event()
        self.dropped = 0

    def push(self, data: bytes) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
        self.queue.append(data)
        self.ready.set()


def broadcast(clients: Iterable[WsClient], data: bytes) -> None:
    for client in clients:
        client.push(data)


async def stream(ws: WebSocket, clients: set[WsClient], client: WsClient, hello: bytes) -> None:
    """Serve an accepted WebSocket until it closes: `hello` first, then what is pushed."""
    clients.add(client)
    sender = asyncio.create_task(_send(ws, client))
    try:
        client.push(hello)
        while True:
            # Listening is how a closed connection is noticed; clients need not talk.
            await ws.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        clients.discard(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


async def _send(ws: WebSocket, client: WsClient) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        while True:
            await client.ready.wait()
            client.ready.clear()
            while client.queue:
                await ws.send_text(client.queue.popleft().decode())
