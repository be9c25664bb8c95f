"""The server's own defences, against a real `python -m factory_mas` (uvicorn with the
protocols of factory_mas.server): request headers that never complete (slowloris) and
floods of held-open connections must not lock /health out."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

# A real `python -m factory_mas` on a loopback port.
pytestmark = pytest.mark.integration

# Generous: how long a socket waits for the server to close it.
CLOSE_WAIT_S = 60.0


@contextmanager
def stalled(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that send the start of a request and never finish its headers."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=CLOSE_WAIT_S)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: factory\r\nX-Still-Typing: ")
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """Waits (up to the socket's timeout) for the server to close it: EOF or a reset."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) != b""  # an answer would be a surprise, but not a close
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.settimeout(CLOSE_WAIT_S)


def test_unfinished_headers_are_cut_off_and_health_keeps_answering(server_factory) -> None:
    server = server_factory({"FACTORY_SERVER_HEADER_TIMEOUT_S": "2"})
    with stalled(server.port, 100) as socks:
        assert server.get("/health").status_code == 200
        # A client trickling header lines gets no more time than one that sends nothing.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as trickler:
            trickler.sendall(b"GET /health HTTP/1.1\r\nHost: factory\r\n")
            cut_off = False
            for i in range(int(CLOSE_WAIT_S / 0.5)):
                try:
                    trickler.sendall(f"X-Line-{i}: a\r\n".encode())
                except (BrokenPipeError, ConnectionResetError):
                    cut_off = True
                    break
                time.sleep(0.5)  # the pace of the trickle, not what the test waits for
            assert cut_off or closed_by_server(trickler), "a trickling client was kept"
        assert all(closed_by_server(sock) for sock in socks)
        # Served as before once they are gone: a request in one go, and keep-alive.
        with httpx.Client(base_url=server.url, timeout=10) as client:
            assert [client.get("/health").status_code for _ in range(3)] == [200] * 3


def test_a_flood_of_held_connections_evicts_the_oldest_not_health(server_factory) -> None:
    # A header timeout far beyond the test: only the connection cap closes anything.
    server = server_factory(
        {"FACTORY_SERVER_HEADER_TIMEOUT_S": "300", "FACTORY_SERVER_MAX_CONNECTIONS": "50"}
    )
    with stalled(server.port, 200) as socks:
        # The oldest made room for the newer ones. (A few connections of the readiness
        # check may still have been open: the border is not exact.)
        assert all(closed_by_server(sock) for sock in socks[:140])
        for _ in range(3):
            assert server.get("/health").status_code == 200
        # Each /health evicted the oldest still waiting: the newest stay.
        newest = [still_open(sock) for sock in socks[140:]]
        assert newest == sorted(newest) and sum(newest) >= 40, newest
    assert "connections open, the limit" in server.output()
