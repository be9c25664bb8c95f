"""A real HTTP server on a free loopback port, in a thread: the base of the stand-ins for
paid services (Twilio, Gemini) that the real client libraries reach by their base URL."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LocalHttpServer:
    """`with Subclass(...) as fake:` serves `_handler()` on `fake.base_url` until the end."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _stopping(self) -> None:
        """Called first on exit: wake handlers that are waiting on purpose."""

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
